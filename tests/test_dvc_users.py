"""Plain DVC users (`dvc repro`, `dvc exp run`) get what `demonlab run` gives: a stage started by a `python` outside
the project's environment stops with one line saying what to do, and an offline stage logs no failed telemetry call.
"""

from __future__ import annotations

import json
import os
import sys
import venv
from pathlib import Path

import pytest
from workspace import project_workspace, run

from components.runtime.quiet import QUIET

DVC = [sys.executable, "-m", "dvc"]
HINT = "`source .venv/bin/activate`"
pytestmark = pytest.mark.slow  # pipeline stages under plain DVC


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """A fresh clone and a user's shell: none of the quiet settings, no Prefect server (a stage starts Prefect's
    temporary one, as it does for anyone who runs `dvc repro` without `demonlab run`)."""
    tmp = tmp_path_factory.mktemp("dvc-users")
    ws, env = project_workspace(tmp, prefect_api="", params={"data": {"mini": {"per_task": 1}}})
    for name in (*QUIET, "PREFECT_API_URL"):
        env.pop(name, None)
    return ws, {**env, "PREFECT_HOME": str(tmp / "prefect")}


def test_a_stage_run_by_a_python_without_the_dependencies_says_what_to_do(tmp_path: Path, workspace) -> None:
    ws, env = workspace
    bare = tmp_path / "bare"
    venv.create(bare, with_pip=False)  # this Python with the standard library only, as a shell without .venv has it
    direct = run([str(bare / "bin" / "python"), "-m", "flows.acquire"], ws, env, check=False)
    assert direct.returncode == 2
    assert direct.stdout == "" and direct.stderr.count("\n") == 1 and HINT in direct.stderr, direct.stderr

    # `.venv/bin/dvc repro` from a shell where the environment is not active: the stage's `python` is the bare one
    shell = {**env, "PATH": f"{bare / 'bin'}{os.pathsep}{env['PATH']}"}
    through_dvc = run([*DVC, "repro", "acquire"], ws, shell, check=False)
    assert through_dvc.returncode != 0 and HINT in through_dvc.stderr
    assert "Traceback" not in through_dvc.stdout + through_dvc.stderr


def test_stage_processes_quiet_the_tools_unless_the_user_says_otherwise(workspace) -> None:
    ws, env = workspace
    code = "import json, os, flows, components.runtime.quiet as q; "
    code += "print(json.dumps({n: os.environ[n] for n in q.QUIET}))"
    show = [sys.executable, "-c", code]  # what a stage process has once `flows` is imported
    assert json.loads(run(show, ws, env).stdout) == QUIET
    loud = {"PREFECT_SERVER_ANALYTICS_ENABLED": "true"}
    assert json.loads(run(show, ws, {**env, **loud}).stdout) == {**QUIET, **loud}


def test_an_offline_dvc_repro_logs_no_failed_telemetry_call(workspace) -> None:
    ws, env = workspace
    # Offline for certain, whatever this machine reaches: https goes to a closed port (Prefect's own server is http)
    offline = {**env, **{name: "http://127.0.0.1:9" for name in ("HTTPS_PROXY", "https_proxy")}}
    offline.update({name: "127.0.0.1,localhost" for name in ("NO_PROXY", "no_proxy")})
    done = run([*DVC, "repro", "acquire"], ws, offline)
    log = done.stdout + done.stderr
    assert "| ERROR" not in log and "Traceback" not in log, log[-3000:]
    assert "Completed()" in log  # the stage ran as a Prefect flow run
