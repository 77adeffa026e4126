"""Runs a killed process left RUNNING in MLflow, set right: they become KILLED.

Every run records where it runs (`demonlab.workspace`, `demonlab.process` = host:pid; `runs.start_run`). A run of
this workspace still RUNNING whose process on this host has exited was killed outright (SIGKILL, a crash, a lost
machine), so nothing recorded its end: it becomes KILLED, tagged `demonlab.reconciled` with who found it, when, and
why. Runs of other hosts are left alone (nothing here can tell whether they live), and so is every run whose process
still runs. The Prefect side (flow and task runs) is `flows.tracking.reconcile`, which calls this.
"""

from __future__ import annotations

import socket
from datetime import UTC, datetime

import mlflow
from mlflow.entities import Run

from components.runtime.lifetime import exited
from components.tracking.runs import PROCESS_TAG, WORKSPACE_TAG, configure, workspace

RECONCILED_TAG = "demonlab.reconciled"


def orphaned(process: str, started: float) -> bool:
    """Whether `process` (`host:pid`), running a record since `started` (epoch seconds), is this host's and exited."""
    host, _, pid = process.rpartition(":")
    return host == socket.gethostname() and pid.isdigit() and exited(int(pid), started)


def finding(found_by: str, process: str) -> str:
    """What a reconciled record says: who found it, when, and why it cannot be running."""
    now = datetime.now(UTC).isoformat(timespec="seconds")
    return f"found by {found_by} at {now}: its process {process} had exited without recording an end"


def reconcile_runs(found_by: str) -> list[Run]:
    """End the MLflow runs of this workspace whose process is gone as KILLED; returns them."""
    client = mlflow.MlflowClient()
    running = client.search_runs([configure()], "attributes.status = 'RUNNING'", max_results=10_000)
    here = str(workspace())
    ended = []
    for run in running:
        tags = run.data.tags
        process = tags.get(PROCESS_TAG, "")
        if tags.get(WORKSPACE_TAG) == here and orphaned(process, run.info.start_time / 1000):
            client.set_tag(run.info.run_id, RECONCILED_TAG, finding(found_by, process))
            client.set_terminated(run.info.run_id, "KILLED")
            ended.append(run)
    return ended
