"""MLflow UI in a real browser: `mlflow server` on 127.0.0.1, a tiny experiment tracked over HTTP, headless
Chromium renders the experiment page and shows the child runs. The screenshot is kept in test-artifacts/."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from gridrun.mlflow_view import VIEW_TAG_PREFIX, ui_url, view_key
from tests.conftest import FORGETTING, ROOT, TINY, copy_store, run_cli

pytestmark = pytest.mark.slow

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ARTIFACTS = ROOT / "test-artifacts"
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_healthy(url: str, proc: subprocess.Popen, deadline_s: float = 90) -> None:
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"mlflow server exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url + "/health", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.5)  # polling a starting server, bounded by the deadline
    raise TimeoutError("mlflow server did not become healthy")


def _rows_best_first(page, objective: dict[str, float], timeout_s: float = 30) -> list[str]:
    """The run names in the table's order once it shows exactly these runs, best objective first (the view's sort
    applies after a first fetch in the default order); the last order seen if it never does in ``timeout_s``."""
    end = time.monotonic() + timeout_s
    while True:
        rows = page.evaluate(  # ag-grid places rows by their row-index attribute, not by document order
            "[...document.querySelectorAll('.ag-pinned-left-cols-container .ag-row')]"
            ".map(e => [Number(e.getAttribute('row-index')), e.innerText])"
        )
        order = [next((n for n in objective if n in text), text) for _, text in sorted(rows)]
        values = [objective.get(n) for n in order]
        if sorted(order) == sorted(objective) and values == sorted(objective.values(), reverse=True):
            return order
        if time.monotonic() > end:
            return order
        page.wait_for_timeout(250)  # polling the rendered table, bounded by the deadline


@pytest.fixture
def mlflow_server(tmp_path: Path, mlflow_template: Path):
    copy_store(mlflow_template, tmp_path, "server.db")
    port = _free_port()
    mlflow = Path(sys.executable).parent / "mlflow"
    proc = subprocess.Popen(
        [
            str(mlflow),
            "server",
            "--backend-store-uri",
            f"sqlite:///{tmp_path}/server.db",
            "--artifacts-destination",
            str(tmp_path / "artifacts"),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(url, proc)
        yield url
    finally:
        import signal

        # SIGKILL: the server holds nothing to flush (its store is this test's), and MLflow 3's server can outlive
        # a SIGTERM to its group (seen here: its uvicorn child gone, the parent left spinning)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)


def test_experiment_page_shows_the_child_runs(
    mlflow_server: str, tmp_path: Path, tiny_model_path: Path, on_cluster: str
) -> None:
    from mlflow.tracking import MlflowClient

    overrides = [*TINY, "search.num_trials=2", "tracking.experiment=ui-check"]
    r = run_cli(
        "launch",
        str(FORGETTING),
        "--tracking-uri",
        mlflow_server,
        *[a for o in overrides for a in ("--set", o)],
        "--set",
        on_cluster,
        cwd=tmp_path,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr[-3000:]

    client = MlflowClient(mlflow_server)
    exp = client.get_experiment_by_name("ui-check")
    children = client.search_runs([exp.experiment_id], "tags.`gridrun.kind` = 'trial'")
    assert len(children) == 2
    names = [c.info.run_name for c in children]
    # over HTTP too, each child's adapter went up as an artifact, and is the run's model output (Models column)
    for c in children:
        assert "adapter/adapter_model.safetensors" in {a.path for a in client.list_artifacts(c.info.run_id, "adapter")}
        outputs = client.get_run(c.info.run_id).outputs.model_outputs
        assert [o.model_id for o in outputs] == [c.data.tags["gridrun.model_id"]]
        assert client.get_logged_model(outputs[0].model_id).source_run_id == c.info.run_id
    # children are named by their searched values; the parent carries the fixed settings and the searched ranges
    assert all(n.startswith("lr=") and " r=" in n and " ratio=" in n for n in names), names
    parent_id = children[0].data.tags["mlflow.parentRunId"]
    parent_params = client.get_run(parent_id).data.params
    assert parent_params["train.batch_size"] == "8" and "train.lr" not in parent_params
    assert parent_params["search.train.lr"].startswith("{'type': 'float'")
    # the runs table a user compares trials in: a saved view on the experiment, opened by the printed link
    view = json.loads(exp.tags[VIEW_TAG_PREFIX + view_key(parent_id)])
    state = json.loads(view["state"])
    compared = ["metrics.`objective`", "metrics.`task/format_success`", "metrics.`forget/delta`"]
    compared += ["params.`data.sample_ratio`", "params.`lora.r`", "params.`train.lr`"]
    assert state["selectedColumns"][-6:] == compared and state["orderByKey"] == "metrics.`objective`"
    link = ui_url(exp.experiment_id, parent_id, base=mlflow_server)
    assert f"then: {ui_url(exp.experiment_id, parent_id)}" in r.stdout

    if CHROMIUM is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed; .ci/run installs Debian's chromium before the tests")
        pytest.skip("Debian's chromium is not installed (apt-get install chromium; .ci/run does it)")

    from playwright.sync_api import sync_playwright

    # workflowType=machine_learning: MLflow 3 otherwise opens an experiment on its GenAI overview
    page_url = f"{mlflow_server}/#/experiments/{exp.experiment_id}?workflowType=machine_learning"
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "mlflow_experiment.png"
    shot.unlink(missing_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS[1:])
        try:
            page = browser.new_page(viewport={"width": 2400, "height": 900})  # wide: ag-grid renders visible columns
            page.goto(page_url)
            parent = client.get_run(children[0].data.tags["mlflow.parentRunId"]).info.run_name
            page.wait_for_selector(f"text={parent}", timeout=60_000)
            page.locator(".ag-pinned-left-cols-container button").first.click()  # expand the parent's children
            for name in names:
                page.wait_for_selector(f"text={name}", timeout=30_000)
            page.screenshot(path=str(shot))
            # the printed link: this launch's trials, best objective first, the compared columns shown
            page.goto(link)
            for name in names:
                page.wait_for_selector(f"text={name}", timeout=60_000)
            page.wait_for_selector("[role=columnheader][col-id='metrics.`objective`']", timeout=30_000)
            shown = page.evaluate(
                "[...document.querySelectorAll('[role=columnheader]')].map(e => e.getAttribute('col-id'))"
            )
            assert set(compared) <= set(shown), shown
            objective = {c.info.run_name: c.data.metrics["objective"] for c in children}
            order = _rows_best_first(page, objective)
            assert [objective[n] for n in order] == sorted(objective.values(), reverse=True), order
            page.screenshot(path=str(ARTIFACTS / "mlflow_view.png"))
        finally:
            browser.close()
    assert shot.is_file() and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
