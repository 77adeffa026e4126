"""What a killed run left `Running` is set right, and only that (issue 20): MLflow runs of this workspace whose
process on this host has exited become KILLED, their Prefect flow runs and unfinished task runs Crashed, each saying
who found them; live runs, other workspaces' and other hosts' are left alone. And `demonlab server --port P` serves
a Prefect UI that talks to its own API, whatever PREFECT_API_URL says (headless Chromium, as test_mlflow_ui)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from uuid import uuid4

import mlflow
import pytest
from prefect import flow, task
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import GlobalConcurrencyLimitUpdate
from prefect.settings import PREFECT_API_URL, temporary_settings
from prefect.states import Completed, Pending, Running

from components.runtime.servers import free_port, server
from components.tracking.reconcile import RECONCILED_TAG
from components.tracking.runs import PROCESS_TAG, WORKSPACE_TAG, configure, workspace_key
from flows.tracking import LEASE_TAG, reconcile
from flows.tracking import PROCESS_TAG as PREFECT_PROCESS_TAG

HOST = socket.gethostname()
pytestmark = pytest.mark.slow  # a Prefect server
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def exited_pid() -> int:
    """The pid of a process that has exited."""
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


@pytest.fixture
def ws(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, prefect_api: str) -> Path:
    monkeypatch.setenv("DEMONLAB_WORKSPACE", str(tmp_path))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    with temporary_settings({PREFECT_API_URL: prefect_api}):
        yield tmp_path


@flow(name="reconcile-probe")
def probe() -> None:
    """Never run: flow runs in a chosen state are made for it through the API."""


@task(name="reconcile-probe-task")
def probe_task() -> None:
    """Never run, as `probe`."""


def test_only_dead_runs_of_this_workspace_are_ended(ws: Path) -> None:
    dead = exited_pid()
    experiment = configure()
    client = mlflow.MlflowClient()
    where = {
        "killed": {WORKSPACE_TAG: str(ws), PROCESS_TAG: f"{HOST}:{dead}"},
        "alive": {WORKSPACE_TAG: str(ws), PROCESS_TAG: f"{HOST}:{os.getpid()}"},
        "other host": {WORKSPACE_TAG: str(ws), PROCESS_TAG: f"elsewhere.example:{dead}"},
        "other workspace": {WORKSPACE_TAG: "/somewhere/else", PROCESS_TAG: f"{HOST}:{dead}"},
    }
    runs = {name: client.create_run(experiment, tags=tags, run_name=name).info.run_id for name, tags in where.items()}

    key = workspace_key()
    with get_client(sync_client=True) as prefect:
        flow_runs = {}
        for name, pid in (("killed", dead), ("alive", os.getpid())):
            flow_run = prefect.create_flow_run(probe, tags=[key, f"{PREFECT_PROCESS_TAG}{HOST}:{pid}"], state=Pending())
            prefect.set_flow_run_state(flow_run.id, Running(), force=True)
            task_run = prefect.create_task_run(probe_task, flow_run.id, dynamic_key="0", state=Running())
            flow_runs[name] = (flow_run.id, task_run.id)

        lines = reconcile("the test")

        killed_flow, killed_task = flow_runs["killed"]
        state = prefect.read_flow_run(killed_flow).state
        assert state.type.value == "CRASHED" and "found by the test" in state.message
        assert prefect.read_task_run(killed_task).state.type.value == "CRASHED"
        alive_flow, alive_task = flow_runs["alive"]
        assert prefect.read_flow_run(alive_flow).state.type.value == "RUNNING"
        assert prefect.read_task_run(alive_task).state.type.value == "RUNNING"

    status = {name: client.get_run(run_id) for name, run_id in runs.items()}
    assert {name: run.info.status for name, run in status.items()} == {
        "killed": "KILLED",
        "alive": "RUNNING",
        "other host": "RUNNING",
        "other workspace": "RUNNING",
    }
    note = status["killed"].data.tags[RECONCILED_TAG]
    assert note.startswith("found by the test at ") and f"{HOST}:{dead} had exited" in note
    assert len(lines) == 2 and "1 task run(s) -> Crashed" in lines[1]
    assert reconcile("the test again") == []  # nothing twice


def test_a_slot_no_live_pipeline_holds_is_freed(ws: Path) -> None:
    key = workspace_key()
    with get_client(sync_client=True) as prefect:
        prefect.upsert_global_concurrency_limit_by_name(key, limit=1)
        # what a server restarted after a pipeline was killed holding the slot has: no lease, one slot taken
        prefect.update_global_concurrency_limit(key, GlobalConcurrencyLimitUpdate(active_slots=1))
        holding = [key, f"{PREFECT_PROCESS_TAG}{HOST}:{os.getpid()}", f"{LEASE_TAG}{uuid4()}"]
        holder = prefect.create_flow_run(probe, tags=holding, state=Pending())
        prefect.set_flow_run_state(holder.id, Running(), force=True)
        assert reconcile("the test") == []  # a live pipeline holds it
        prefect.set_flow_run_state(holder.id, Completed(), force=True)
        assert reconcile("the test") == [f"Prefect concurrency limit {key}: 1 slot(s) held by no live run -> freed"]
        assert prefect.read_global_concurrency_limit_by_name(key).active_slots == 0


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (apt-get install chromium)")
def test_prefect_ui_on_any_port_talks_to_its_own_api(tmp_path: Path, prefect_api: str) -> None:
    port = free_port()
    # a PREFECT_API_URL for another server, as a user's shell may have: the UI must not follow it
    env = {**os.environ, "PREFECT_API_URL": prefect_api, "PREFECT_HOME": str(tmp_path / "prefect")}
    command = [str(Path(sys.executable).with_name("demonlab")), "server", "--port", str(port)]
    log = tmp_path / "server.log"
    with server(command, f"http://127.0.0.1:{port}/api/health", log, env=env, timeout=120):
        assert f"Prefect UI and API on http://127.0.0.1:{port}" in log.read_text()
        with temporary_settings({PREFECT_API_URL: f"http://127.0.0.1:{port}/api"}):
            probe()
        browser = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                   "--virtual-time-budget=20000", "--dump-dom", f"http://127.0.0.1:{port}/runs"]  # fmt: skip
        dom = subprocess.run(browser, capture_output=True, text=True, timeout=120, check=True).stdout
    assert "Can't connect to Server API" not in dom
    assert "reconcile-probe" in dom, dom[-3000:]
