"""A stopped or killed `demonlab` command leaves nothing running (issue 23): `demonlab run` signalled during its
first stage stops the stage, DVC, the pipeline flow and the Prefect server it started, and records the runs as
stopped in MLflow and Prefect, and ignores a second signal while it stops; SIGKILL, which cannot be caught, takes
every process down with it. The same for `demonlab server`, `ui`, `doctor` and `worker` (`demo`: tests/test_demo.py).
Each command runs in a session of its own, so what is left of it is found by session id."""

from __future__ import annotations

import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import psutil
import pytest
from workspace import project_workspace

from components.runtime.servers import background, free_port, wait_http

pytestmark = pytest.mark.slow  # servers and pipelines, stopped by signals

DEMONLAB = str(Path(sys.executable).with_name("demonlab"))


def session_left(session: int) -> list[str]:
    """Command lines of the live processes of `session`."""
    left = []
    for process in psutil.process_iter(["cmdline", "status"]):
        try:
            if os.getsid(process.pid) == session and process.info["status"] != psutil.STATUS_ZOMBIE:
                left.append(" ".join(process.info["cmdline"] or []))
        except (ProcessLookupError, psutil.NoSuchProcess):
            continue
    return left


def gone(process: psutil.Process) -> bool:
    try:
        return process.status() == psutil.STATUS_ZOMBIE  # exited; this machine's init may be slow to reap it
    except psutil.NoSuchProcess:
        return True


def listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def wait_for(log: Path, pattern: str, process, timeout: float = 300) -> re.Match:
    deadline = time.monotonic() + timeout
    while not (match := re.search(pattern, log.read_text())):
        assert process.poll() is None, f"ended before {pattern!r}:\n{log.read_text()[-3000:]}"
        assert time.monotonic() < deadline, f"no {pattern!r} after {timeout} s:\n{log.read_text()[-3000:]}"
        time.sleep(0.2)
    return match


def assert_all_gone(process, log: Path, port: int | None = None, timeout: float = 30) -> None:
    """Within `timeout` s the command has exited, nothing of its session runs and nothing listens on `port`."""
    deadline = time.monotonic() + timeout
    while (session_left(process.pid) or port and listening(port)) and time.monotonic() < deadline:
        process.poll()
        time.sleep(0.5)
    assert process.poll() is not None, f"still running:\n{log.read_text()[-3000:]}"
    assert session_left(process.pid) == [], f"left running: {session_left(process.pid)}\n{log.read_text()[-3000:]}"
    assert not (port and listening(port)), f"something still listens on {port}"


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGKILL], ids=lambda s: s.name)
def test_a_stopped_or_killed_run_leaves_nothing_running(tmp_path: Path, sig: signal.Signals) -> None:
    # acquire renders ~5 s of mini-DEMON, so the signal lands mid-stage (at 2 samples a task it took 0.4 s, and the
    # stage could finish before the signal reached it)
    ws, env = project_workspace(tmp_path, "unused", {"data": {"mini": {"per_task": 100}}})
    env.pop("PREFECT_API_URL")  # the run starts its own server: what a user gets, and what must not leak
    log = tmp_path / "run.log"
    with background([DEMONLAB, "run"], log, env=env, cwd=ws) as run:
        port = int(wait_for(log, r"Prefect UI on http://127\.0\.0\.1:(\d+)", run)[1])
        wait_for(ws / wait_for(log, r"log: (\S+)", run)[1], r"Running stage 'acquire'", run)  # the run's own log
        # mid-stage: the stage's flow run has begun and its MLflow run is open
        mlflow.set_tracking_uri(env["MLFLOW_TRACKING_URI"])
        deadline = time.monotonic() + 120
        acquire = "tags.`demonlab.stage` = 'acquire'"
        while not mlflow.search_runs(experiment_names=["demonlab"], filter_string=acquire, output_format="list"):
            assert run.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.2)
        started = time.monotonic()
        run.send_signal(sig)
        if sig != signal.SIGKILL:  # a second signal, of the other kind, while it stops: ignored
            time.sleep(0.5)
            run.send_signal(signal.SIGINT if sig == signal.SIGTERM else signal.SIGTERM)
        assert_all_gone(run, log, port)
        stopped_in = time.monotonic() - started
    if sig == signal.SIGKILL:
        return  # nothing could record anything: the next run reconciles (test_pipeline)
    assert run.returncode == 128 + sig, log.read_text()[-3000:]
    assert f"stopped by {sig.name}" in log.read_text()
    assert stopped_in < 20, f"took {stopped_in:.0f} s to stop"
    runs = mlflow.search_runs(experiment_names=["demonlab"], output_format="list")
    assert {r.data.tags["demonlab.stage"]: r.info.status for r in runs} == {"pipeline": "KILLED", "acquire": "KILLED"}
    # Prefect: the stage's flow run Crashed, in the database of the server the run started (and stopped). The pipeline
    # flow's own run is left Running (docs/orchestration.md): the next run's reconciliation ends it
    with sqlite3.connect(f"file:{ws / '.prefect' / 'prefect.db'}?mode=ro", uri=True) as db:
        flow_runs = dict(db.execute("SELECT name, state_type FROM flow_run WHERE name NOT LIKE 'pipeline %'"))
    assert flow_runs == {"acquire": "CRASHED"}


@pytest.mark.parametrize(
    ("command", "sig"),
    [("server", signal.SIGHUP), ("ui", signal.SIGTERM), ("doctor", signal.SIGINT)],
    ids=["server-SIGHUP", "ui-SIGTERM", "doctor-SIGINT"],
)
def test_a_stopped_service_leaves_nothing_running(tmp_path: Path, command: str, sig: signal.Signals) -> None:
    """`server` and `ui` once they serve; `doctor` once the Prefect server it starts for its check is up."""
    port = free_port()
    log = tmp_path / f"{command}.log"
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")  # doctor's workspace
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}",
        "DEMONLAB_WORKSPACE": str(tmp_path),
    }
    env.pop("PREFECT_API_URL", None)
    argv = [DEMONLAB, command] + (["--port", str(port)] if command != "doctor" else [])
    with background(argv, log, env=env, cwd=tmp_path) as service:
        if command == "doctor":
            port = int(wait_for(log, r"Prefect UI on http://127\.0\.0\.1:(\d+)", service)[1])
        else:
            wait_http(f"http://127.0.0.1:{port}/{'api/' if command == 'server' else ''}health", service, 120, log)
        service.send_signal(sig)
        assert_all_gone(service, log, port)
    assert service.returncode == 128 + sig, log.read_text()[-3000:]


def test_a_killed_worker_leaves_nothing_running(tmp_path: Path, prefect_api: str) -> None:
    ws, env = project_workspace(tmp_path, prefect_api)
    log = tmp_path / "worker.log"
    with background([DEMONLAB, "worker"], log, env=env, cwd=ws) as worker:
        wait_for(log, r"worker on pool", worker)
        time.sleep(2)  # `prefect worker start` is up
        assert len(session_left(worker.pid)) >= 2
        worker.send_signal(signal.SIGKILL)
        assert_all_gone(worker, log)


def test_without_the_kernels_help_a_watchdog_ends_a_process_whose_parent_died() -> None:
    """Elsewhere than Linux no parent-death signal exists: `die_with_parent` watches the parent's pid instead."""
    code = "import time; from components.runtime import lifetime; lifetime._libc = None; lifetime.die_with_parent(); "
    code += "print('armed', flush=True); time.sleep(60)"
    middle = f"import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', {code!r}]); time.sleep(60)"
    with subprocess.Popen([sys.executable, "-c", middle], stdout=subprocess.PIPE, text=True) as parent:
        assert parent.stdout.readline() == "armed\n"
        (orphan,) = psutil.Process(parent.pid).children()
        parent.kill()
        deadline = time.monotonic() + 5
        while not gone(orphan) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert gone(orphan)
