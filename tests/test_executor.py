"""The pipeline executor (`flows.pipeline` with `components.runtime.dvc_stages` and `components.runtime.forkserver`):
stages forked from a warm server behave as `python -m` processes, write the `dvc.lock` that `dvc repro` writes, run side
by side with `--parallel`, and a failed branch stops only what depends on it. A toy project keeps it quick: four stages
of a few lines each, in the real pipeline flow with the real DVC, Prefect and MLflow."""

from __future__ import annotations

import os
import re
import sys
import textwrap
from pathlib import Path

import pytest
import yaml
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import TaskRunFilter, TaskRunFilterName
from prefect.settings import PREFECT_API_URL, temporary_settings
from workspace import project_workspace, run

from components.runtime.forkserver import ForkServer
from flows.pipeline import HOLD_BACKBONES

DEMONLAB = str(Path(sys.executable).with_name("demonlab"))
DVC = [sys.executable, "-m", "dvc"]

# `python -m toy NAME [INPUT...]`: waits `toy.seconds` (left thrice that: it finishes after right, which started
# later, so dvc.lock's order must not follow finishing order), then writes out/NAME.txt from its inputs; exits 2 with a
# user's error while a file `fail-NAME` exists (not a DVC dependency: removing it changes nothing DVC sees)
TOY = """
import sys, time
from pathlib import Path
import yaml

name, inputs = sys.argv[1], sys.argv[2:]
seconds = yaml.safe_load(Path("params.yaml").read_text())["toy"]["seconds"]
time.sleep(seconds * (3 if name == "left" else 1))
if Path(f"fail-{name}").exists():
    print(f"error: {name} was told to fail (fail-{name})", file=sys.stderr)
    sys.exit(2)
Path("out").mkdir(exist_ok=True)
text = name + "".join(Path(f"out/{i}.txt").read_text() for i in inputs)
Path(f"out/{name}.txt").write_text(text)
"""
# two branches from `root`: left -> left_after, right -> right_after
STAGES = {"root": [], "left": ["root"], "right": ["root"], "left_after": ["left"], "right_after": ["right"]}


def toy_project(tmp_path: Path, prefect_api: str, name: str = "ws") -> tuple[Path, dict]:
    ws, env = project_workspace(tmp_path / name, prefect_api)
    (ws / "toy.py").write_text(TOY)
    dvc = {
        stage: {
            "cmd": f"python -m toy {stage} {' '.join(inputs)}".strip(),
            "deps": ["toy.py", *(f"out/{i}.txt" for i in inputs)],
            "params": ["toy.seconds"],
            "outs": [f"out/{stage}.txt"],
        }
        for stage, inputs in STAGES.items()
    }
    (ws / "dvc.yaml").write_text(yaml.safe_dump({"stages": dvc}, sort_keys=False))
    (ws / "params.yaml").write_text(yaml.safe_dump({"toy": {"seconds": 1}}))
    run(["git", "add", "-A"], ws, env)
    run(["git", "commit", "-qm", "toy"], ws, env)
    return ws, {**env, "OMP_NUM_THREADS": "1"}


def console_lines(stdout: str) -> dict[str, str]:
    """Stage -> its outcome, from `demonlab run`'s lines (` 2/5 left   ran   2.1s`)."""
    return dict(re.findall(r"^\s*\d+/\d+ (\S+) +(\w+) +[\d.]+s$", stdout, re.MULTILINE))


def task_windows(prefect_api: str, stages: list[str]) -> dict[str, tuple[float, float]]:
    """Each stage's newest Prefect task run (`dvc-stage-<stage>-<suffix>`): (start, end) in epoch seconds."""
    ours = TaskRunFilter(name=TaskRunFilterName(like_="dvc-stage-"))
    with temporary_settings({PREFECT_API_URL: prefect_api}), get_client(sync_client=True) as client:
        found = client.read_task_runs(task_run_filter=ours, sort="EXPECTED_START_TIME_DESC")
    windows: dict[str, tuple[float, float]] = {}
    for task in found:
        stage = task.name.removeprefix("dvc-stage-").rsplit("-", 1)[0]
        if stage in stages and stage not in windows:
            windows[stage] = (task.start_time.timestamp(), task.end_time.timestamp())
    return windows


@pytest.mark.slow  # pipelines of a toy project
def test_parallel_stages_overlap_and_write_the_lock_dvc_repro_writes(tmp_path: Path, prefect_api: str) -> None:
    ws, env = toy_project(tmp_path, prefect_api)
    done = run([DEMONLAB, "run", "--parallel", "2"], ws, env)
    assert console_lines(done.stdout) == dict.fromkeys(STAGES, "ran"), done.stdout
    # the two branches ran side by side: their time windows overlap
    windows = task_windows(prefect_api, ["left", "right"])
    (left_start, left_end), (right_start, right_end) = windows["left"], windows["right"]
    assert left_start < right_end and right_start < left_end, windows
    assert "nothing to do" in run([DEMONLAB, "run"], ws, env).stdout  # DVC agrees: nothing is stale

    # the same project through plain `dvc repro`, one stage after another: the very same dvc.lock
    reference, reference_env = toy_project(tmp_path, prefect_api, "reference")
    run([*DVC, "repro"], reference, reference_env)
    assert (ws / "dvc.lock").read_text() == (reference / "dvc.lock").read_text()
    assert run([*DVC, "status"], ws, env).stdout.strip() == "Data and pipelines are up to date."


@pytest.mark.slow
def test_a_failed_branch_stops_only_its_dependants_and_the_rerun_does_what_is_left(
    tmp_path: Path, prefect_api: str
) -> None:
    ws, env = toy_project(tmp_path, prefect_api)
    (ws / "fail-right").touch()
    failed = run([DEMONLAB, "run", "--parallel", "2"], ws, env, check=False)
    assert failed.returncode == 2, failed.stdout + failed.stderr  # a user's mistake: not retried, exit 2
    outcomes = console_lines(failed.stdout)
    assert outcomes == {"root": "ran", "left": "ran", "right": "failed", "left_after": "ran", "right_after": "skipped"}
    assert "right was told to fail (fail-right)" in failed.stderr
    assert "Traceback" not in failed.stdout + failed.stderr
    assert sorted(p.name for p in (ws / "out").glob("*.txt")) == ["left.txt", "left_after.txt", "root.txt"]

    (ws / "fail-right").unlink()
    fixed = run([DEMONLAB, "run", "--parallel", "2"], ws, env)
    assert console_lines(fixed.stdout) == {
        "root": "unchanged", "left": "unchanged", "right": "ran", "left_after": "unchanged", "right_after": "ran"
    }  # fmt: skip
    assert (ws / "out" / "right_after.txt").read_text() == "right_afterrightroot"
    again = run([DEMONLAB, "run", "--stages", "right_after"], ws, env)
    assert "nothing to do" in again.stdout and "Prefect UI" not in again.stdout  # no server started for it

    (ws / "out" / "right.txt").unlink()  # lost: DVC has this very run cached, so it comes back without running
    restored = run([DEMONLAB, "run", "--parallel", "2"], ws, env)
    assert console_lines(restored.stdout) == {**dict.fromkeys(STAGES, "unchanged"), "right": "restored"}
    assert "(1 restored, 4 unchanged)" in restored.stdout
    assert (ws / "out" / "right.txt").read_text() == "rightroot"


@pytest.mark.slow  # a server process
def test_the_fork_server_runs_a_module_as_python_m_does(tmp_path: Path) -> None:
    (tmp_path / "probe.py").write_text(
        textwrap.dedent("""
        import atexit, concurrent.futures, os, sys, threading, time
        atexit.register(lambda: print("atexit ran", flush=True))
        pool = concurrent.futures.ThreadPoolExecutor(1)  # its idle worker lives on, as in MLflow's artifact stores
        pool.submit(print, "pool ran", flush=True).result()
        threading.Thread(target=lambda: (time.sleep(0.3), print("thread joined", flush=True))).start()
        print(__name__, sys.argv[1:], os.environ["PROBE"], os.getcwd(), flush=True)
        sys.exit(int(sys.argv[1]))
        """)
    )
    with ForkServer(["json"], cwd=str(tmp_path.parent)) as server:  # the child starts in tmp_path, finds probe there
        results = []
        for status in (0, 3):
            read, write = os.pipe()
            ended = server.start(["-m", "probe", str(status)], {"PROBE": "yes"}, str(tmp_path), write)
            os.close(write)
            code = ended.result(timeout=60)["exit"]  # a child that cannot exit fails here (its output never ends)
            with os.fdopen(read) as output:
                results.append((output.read(), code))
    assert results[0] == (f"pool ran\n__main__ ['0'] yes {tmp_path}\nthread joined\natexit ran\n", 0)
    assert results[1][1] == 3
    assert server.process.returncode == 0


@pytest.mark.slow  # two fork servers
def test_the_fork_server_preloads_only_what_the_selected_stages_run(tmp_path: Path, monkeypatch) -> None:
    from flows.pipeline import executor

    ws, _ = project_workspace(tmp_path, "unused")  # the project's own dvc.yaml
    monkeypatch.setenv("DEMONLAB_WORKSPACE", str(ws))
    monkeypatch.chdir(ws)  # as the pipeline flow runs: DVC names stages relative to the working directory
    with executor(None, ["acquire", "normalize"]) as selected:
        preloaded = selected.server.process.args
    with executor() as everything:
        preloaded_by_all = everything.server.process.args
    assert {"flows.acquire", "flows.normalize"} <= set(preloaded) and "flows.train" not in preloaded
    assert {"flows.acquire", "flows.train", "flows.evaluate"} <= set(preloaded_by_all)
    assert HOLD_BACKBONES in preloaded_by_all and HOLD_BACKBONES not in preloaded  # acquire needs no model


PROBE_BACKBONES = """
import torch
from components.params import experiment_path
from components.vpgc import backbones
from components.vpgc.config import load_config
from components.vpgc.model import VPGCModel

held = {id(module) for module in backbones._HELD.values()}
config = load_config(experiment_path("tiny"))
models = []
for _ in range(2):  # the first takes the server's backbones, the second loads its own
    torch.manual_seed(0)
    models.append(VPGCModel.from_config(config))
square = torch.randn(1024, 1024)
square @ square  # a parallel region in a child of a server that loaded weights: waits for ever if the pool was up
took = [id(model.llm) in held and id(model.vision) in held for model in models]
states = [model.state_dict() for model in models]
same = all(torch.equal(states[0][name], states[1][name]) for name in states[0])  # the seeded VPG's too
print(len(held), *took, same, torch.get_num_threads())
"""


@pytest.mark.slow  # a server process loading the real backbones
def test_stages_forked_from_the_server_take_its_backbones_and_still_use_every_core(tmp_path: Path, monkeypatch) -> None:
    ws, _ = project_workspace(tmp_path, "unused")
    (ws / "probe.py").write_text(PROBE_BACKBONES)
    monkeypatch.setenv("OMP_NUM_THREADS", "2")  # the server's children run two intra-op threads
    with ForkServer([HOLD_BACKBONES], cwd=str(ws)) as server:
        lines = []
        for _ in range(2):  # each child takes the server's copy: the server never gives its own away
            read, write = os.pipe()
            ended = server.start(["-m", "probe"], dict(os.environ), str(ws), write)
            os.close(write)
            assert ended.result(timeout=120)["exit"] == 0
            with os.fdopen(read) as output:
                lines.append(output.read().splitlines()[-1])
    # held: the LLM and the encoder; taken by the first model only; both models the same, weights and seeded VPG
    assert lines == ["2 True False True 2"] * 2


@pytest.mark.parametrize("parallel", ["0", "two"])
def test_a_bad_parallel_count_is_one_clear_line(parallel: str) -> None:
    done = run([DEMONLAB, "run", "--parallel", parallel], Path(__file__).parents[1], dict(os.environ), check=False)
    assert done.returncode == 2 and "--parallel" in done.stderr and "Traceback" not in done.stderr
