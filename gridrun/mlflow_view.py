"""The experiment's runs table as a user compares trials: a saved view in MLflow's UI, opened by the printed link.

MLflow 3 keeps no per-experiment default for the runs table's columns: its default view is built into the UI
(attribute columns only: source, models, dataset) and any other choice lives in the browser's local storage. What
the server does keep is a *saved view*: an experiment tag ``mlflow.sharedViewState.<key>`` holding the table's
state (the one the UI's "Save as new view" / share button writes), listed in the UI's views menu and opened by the
URL parameter ``viewStateShareKey=<key>``. gridrun writes one per launch: that launch's trials (the children of
its parent run), best objective first, with the columns a user compares (the objective, the task metric, the
forgetting metric, the searched params); the summary's UI link opens it. Hand-written: MLflow's Python client has
no API for views.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import Any

__all__ = ["VIEW_TAG_PREFIX", "ui_url", "view_key", "view_state", "view_tag"]

#: The experiment-tag prefix MLflow's UI reads saved views from (``SHARE_STATE_PREFIX`` in its frontend).
VIEW_TAG_PREFIX = "mlflow.sharedViewState."
#: MLflow's limit on an experiment tag's value; param columns past it are left out of the view.
_MAX_TAG_VALUE = 5000
#: The UI's own default columns (its ``getDefaultSelectedColumns``), kept so the view only adds to them.
_DEFAULT_COLUMNS = ("attributes.`Source`", "attributes.`Models`", "attributes.`Dataset`")


def _column(kind: str, name: str) -> str:
    """A runs-table column as the UI names it (``makeCanonicalSortKey``): ``metrics.`objective```."""
    return f"{kind}.`{name}`"


def view_key(parent_run_id: str) -> str:
    """The saved view's key (URL parameter and tag suffix) of the launch whose parent run is ``parent_run_id``."""
    return f"gridrun-{parent_run_id}"


def view_state(parent_run_id: str, metrics: Sequence[str], params: Sequence[str]) -> dict[str, Any]:
    """The runs table's state: the trials of one launch (the UI keeps no expanded rows in a saved view, so they
    are filtered by their parent), the given metric and param columns after the UI's defaults, best objective
    first."""
    columns = [*_DEFAULT_COLUMNS, *(_column("metrics", m) for m in dict.fromkeys(metrics))]
    columns += [_column("params", p) for p in params]
    return {
        "searchFilter": f"tags.mlflow.parentRunId = '{parent_run_id}'",
        "orderByKey": _column("metrics", "objective"),
        "orderByAsc": False,
        "selectedColumns": columns,
    }


def view_tag(
    parent_run_id: str, name: str, metrics: Sequence[str], params: Sequence[str], now_ms: int | None = None
) -> tuple[str, str]:
    """``(tag key, tag value)`` of the saved view: the envelope MLflow 3's UI lists in its views menu
    (``{name, createdAt, updatedAt, state}``, the state as a JSON string). Param columns that would push the value
    past MLflow's tag limit are dropped from the end."""
    stamp = int(time.time() * 1000) if now_ms is None else now_ms
    kept = list(params)
    while True:
        state = json.dumps(view_state(parent_run_id, metrics, kept), separators=(",", ":"))
        value = json.dumps({"name": name, "createdAt": stamp, "updatedAt": stamp, "state": state})
        if len(value) <= _MAX_TAG_VALUE or not kept:
            return VIEW_TAG_PREFIX + view_key(parent_run_id), value
        kept.pop()


def ui_url(experiment_id: str, parent_run_id: str | None, base: str = "http://127.0.0.1:5000") -> str:
    """The experiment's runs table in MLflow's UI (its model-training layout), on gridrun's saved view when there is
    one (the runs page itself: the experiment's landing page redirects there and drops the view's key)."""
    if not parent_run_id:
        return f"{base}/#/experiments/{experiment_id}?workflowType=machine_learning"
    runs = f"{base}/#/experiments/{experiment_id}/runs?workflowType=machine_learning"
    return f"{runs}&viewStateShareKey={view_key(parent_run_id)}"
