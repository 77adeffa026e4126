"""Prefect deployments and the pipeline flow: `demonlab worker` serves prefect.yaml, `prefect deployment run` runs
the DVC stages as tasks inside one MLflow parent run; a user's mistake fails fast with the stage's own error."""

from __future__ import annotations

import re
import sys
import time
from pathlib import Path

import mlflow
import pytest
from workspace import project_workspace, run

from components.runtime.servers import background

pytestmark = pytest.mark.slow  # a Prefect server, a worker and pipeline runs

DEMONLAB = str(Path(sys.executable).with_name("demonlab"))
PREFECT = str(Path(sys.executable).with_name("prefect"))


@pytest.fixture
def workspace(tmp_path: Path, prefect_api: str) -> tuple[Path, dict]:
    return project_workspace(tmp_path, prefect_api)


def wait_for_deployment(ws: Path, env: dict, name: str, worker, log: Path, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert worker.poll() is None, f"worker exited:\n{log.read_text()[-3000:]}"
        if run([PREFECT, "deployment", "inspect", name], ws, env, check=False).returncode == 0:
            return
        time.sleep(2)
    raise TimeoutError(f"deployment {name} not registered:\n{log.read_text()[-3000:]}")


def test_deployment_run_executes_stages_under_one_parent_run(workspace, tmp_path: Path) -> None:
    ws, env = workspace
    log = tmp_path / "worker.log"
    with background([DEMONLAB, "worker"], log, env=env, cwd=ws) as worker:
        wait_for_deployment(ws, env, "demon-pipeline/embedded", worker, log)
        stages = 'stages=["acquire","normalize"]'
        command = [PREFECT, "deployment", "run", "demon-pipeline/embedded", "--param", stages, "--watch"]
        done = run(command, ws, env, check=False)
        assert done.returncode == 0 and "Completed" in done.stdout, done.stdout[-3000:] + log.read_text()[-3000:]

    assert (ws / "data/normalized/report.json").is_file()
    mlflow.set_tracking_uri(env["MLFLOW_TRACKING_URI"])
    runs = mlflow.search_runs(experiment_names=["demonlab"], output_format="list")
    parent = next(r for r in runs if r.data.tags["demonlab.stage"] == "pipeline")
    children = {
        r.data.tags["demonlab.stage"]: r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id
    }
    assert set(children) == {"acquire", "normalize"}
    normalize = children["normalize"].data.tags
    lock_hash = parent.data.tags["dvc.out.data/raw"]
    assert normalize["dvc.in.data/raw"] == lock_hash and normalize["dvc.out.data/normalized"].endswith(".dir")
    assert parent.data.tags["git.commit"] and parent.data.tags["prefect.flow_run_id"]


def test_a_bad_parameter_or_source_gives_one_clear_error(workspace) -> None:
    ws, env = workspace
    unknown = run([DEMONLAB, "run", "--set", "data.nope=1"], ws, env, check=False)
    assert unknown.returncode == 2 and "no parameter `data.nope`" in unknown.stdout + unknown.stderr

    missing = run([DEMONLAB, "run", "--stages", "acquire", "--set", "data.source=/no/such/demon"], ws, env, check=False)
    output = missing.stdout + missing.stderr
    last = missing.stderr.strip().splitlines()[-1]  # what the user reads last: the stage's own message
    assert missing.returncode == 2
    assert last.startswith("demonlab: error: stage 'acquire' failed: source '/no/such/demon'")
    log = ws / re.search(r"^log: (\S+)", missing.stdout, re.MULTILINE)[1]  # what DVC and the stage printed
    assert last.endswith(f"; full log: {log.relative_to(ws)}")
    assert log.read_text().count("Running stage 'acquire'") == 1  # a user's mistake is not retried
    assert re.search(r"1/1 acquire +failed", output) and "Running stage" not in output  # its line; detail in the log
