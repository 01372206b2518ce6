"""gridrun's saved runs-table view: the envelope and state MLflow 3's UI reads, within MLflow's tag limit."""

from __future__ import annotations

import json

from gridrun.mlflow_view import VIEW_TAG_PREFIX, ui_url, view_key, view_tag


def test_the_view_holds_the_compared_columns_sorted_by_the_objective() -> None:
    key, value = view_tag("abc123", "gridrun x", ["objective", "task/em", "forget/delta", "objective"], ["lora.r"], 7)
    assert key == VIEW_TAG_PREFIX + view_key("abc123") == "mlflow.sharedViewState.gridrun-abc123"
    envelope = json.loads(value)
    assert {k: envelope[k] for k in ("name", "createdAt", "updatedAt")} == {
        "name": "gridrun x",
        "createdAt": 7,
        "updatedAt": 7,
    }
    state = json.loads(envelope["state"])  # the UI parses the state string itself
    assert state == {
        "searchFilter": "tags.mlflow.parentRunId = 'abc123'",
        "orderByKey": "metrics.`objective`",
        "orderByAsc": False,
        "selectedColumns": [
            "attributes.`Source`",
            "attributes.`Models`",
            "attributes.`Dataset`",
            "metrics.`objective`",  # once, though named twice
            "metrics.`task/em`",
            "metrics.`forget/delta`",
            "params.`lora.r`",
        ],
    }


def test_param_columns_past_the_tag_limit_are_dropped_from_the_end() -> None:
    params = [f"section.param_{i:03d}" for i in range(300)]
    _, value = view_tag("p", "many", ["objective"], params, 1)
    assert len(value) <= 5000
    columns = json.loads(json.loads(value)["state"])["selectedColumns"]
    kept = [c for c in columns if c.startswith("params.")]
    assert 0 < len(kept) < 300 and kept == [f"params.`{p}`" for p in params[: len(kept)]]


def test_the_link_opens_the_view_when_there_is_one() -> None:
    assert (
        ui_url("3", "abc")
        == "http://127.0.0.1:5000/#/experiments/3/runs?workflowType=machine_learning&viewStateShareKey=gridrun-abc"
    )
    assert ui_url("3", None, base="http://h:1") == "http://h:1/#/experiments/3?workflowType=machine_learning"
