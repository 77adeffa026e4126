"""The whole pipeline in a fresh workspace, as a user runs it: `demonlab run` (DVC stages as Prefect tasks, MLflow
parent + child runs named for what they are, a console of one line per stage, the detail in the run's log), killed
mid-stage and re-run, then nothing to do, then a `dvc exp run -S` variant."""

from __future__ import annotations

import json
import re
import signal
import sys
import time
from pathlib import Path

import mlflow
import pandas as pd
import pytest
import yaml
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterTags, LogFilter, LogFilterFlowRunId
from prefect.settings import PREFECT_API_URL, temporary_settings
from workspace import ONE_MODEL, SMALLEST, SMALLEST_EXPERIMENT, own_cache, project_workspace, run

from components.runtime.servers import background
from components.tracking.reconcile import RECONCILED_TAG
from components.tracking.runs import workspace_key

pytestmark = pytest.mark.slow  # the whole pipeline, run twice

DEMONLAB = str(Path(sys.executable).with_name("demonlab"))
DVC = [sys.executable, "-m", "dvc"]
# every kind of stage at its smallest, one model on one task group holding every category (`all`)
GRAPH = {**ONE_MODEL, "evaluate": {**ONE_MODEL["evaluate"], "groups": {"demon": "all"}}}


def stage_runs(env: dict) -> list:
    mlflow.set_tracking_uri(env["MLFLOW_TRACKING_URI"])
    return mlflow.search_runs(experiment_names=["demonlab"], output_format="list")


def run_log(console: str, ws: Path) -> Path:
    """The log file `demonlab run` names first: what DVC, Prefect, MLflow and the stages printed."""
    return ws / re.search(r"^log: (\S+)", console, re.MULTILINE)[1]


def kill_when(console: Path, ws: Path, text: str, process, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while "log: " not in console.read_text() or text not in run_log(console.read_text(), ws).read_text():
        assert process.poll() is None, f"the pipeline ended before {text!r}:\n{console.read_text()[-3000:]}"
        assert time.monotonic() < deadline, f"no {text!r} after {timeout} s"
        time.sleep(0.5)


def test_pipeline_survives_a_kill_tracks_everything_and_knows_what_is_stale(
    tmp_path: Path, prefect_api: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    ws, env = project_workspace(tmp_path, prefect_api, SMALLEST, GRAPH, SMALLEST_EXPERIMENT)
    env = {**env, **own_cache(tmp_path)}

    # 1. killed while training: everything before it is done, the training stage is half-way, and nothing could
    # record its end: the pipeline's and the stage's runs are left RUNNING
    log = tmp_path / "first.log"
    with background([DEMONLAB, "run"], log, env=env, cwd=ws) as first:
        kill_when(log, ws, "Running stage 'train@", first)
        while not [r for r in stage_runs(env) if r.data.tags.get("dvc.stage") == "train@synthetic"]:
            assert first.poll() is None, log.read_text()[-3000:]
            time.sleep(0.5)
        first.send_signal(signal.SIGKILL)  # every process it started dies with it (tests/test_signals.py)
        first.wait()
    finished_before_kill = {r.data.tags["dvc.stage"] for r in stage_runs(env) if r.info.status == "FINISHED"}
    assert {"acquire", "normalize", "captions", "align", "synth"} <= finished_before_kill
    left_running = {r.info.run_id for r in stage_runs(env) if r.info.status == "RUNNING"}
    assert len(left_running) == 2  # the pipeline and train@synthetic

    # 2. re-run: finishes, redoing none of the finished stages, nothing lost or duplicated
    second = run([DEMONLAB, "run"], ws, env)
    report = ws / "data/report/compare.md"
    assert f"report: {report}" in second.stdout
    assert "vpgc-synthetic (parity x100): overall " in second.stdout and " ± " in second.stdout  # n and interval
    # a readable console: one line per stage, the summary, the reconciled records; the detail is in the log
    lines = second.stdout.splitlines()
    stages = 13  # acquire normalize baseline 2xscore mini_train captions align synth train evaluate merge report
    assert len(lines) <= stages + 20, second.stdout
    assert sum(bool(re.match(rf"\s*\d+/{stages} \S+ +(ran|unchanged) +[\d.]+s$", line)) for line in lines) == stages
    for chatter in ("dvc push", "git add", "INFO", "Running stage"):
        assert chatter not in second.stdout + second.stderr
    detail = run_log(second.stdout, ws).read_text()
    assert "Running stage 'report'" in detail and "Finished in state Completed" in detail
    runs = stage_runs(env)
    # ... which the re-run found and ended: nothing is left running in MLflow or Prefect
    assert [r.info.run_name for r in runs if r.info.status == "RUNNING"] == []
    for killed in (r for r in runs if r.info.run_id in left_running):
        assert killed.info.status == "KILLED"
        assert killed.data.tags[RECONCILED_TAG].startswith("found by pipeline flow run ")
    monkeypatch.setenv("DEMONLAB_WORKSPACE", str(ws))
    ours = FlowRunFilter(tags=FlowRunFilterTags(all_=[workspace_key()]))
    with temporary_settings({PREFECT_API_URL: prefect_api}), get_client(sync_client=True) as prefect:
        states = [flow_run.state for flow_run in prefect.read_flow_runs(flow_run_filter=ours)]
    assert all(state.is_final() for state in states)
    crashed = [state.message for state in states if state.is_crashed()]
    assert len(crashed) == 2 and all("found by pipeline flow run " in message for message in crashed)
    # a stage may make several runs (score: one per baseline); the killed pipeline's children are the only ones of
    # the stages it finished
    killed_parent = next(
        r.info.run_id for r in runs if r.info.run_id in left_running and r.data.tags["demonlab.stage"] == "pipeline"
    )
    redone = {
        r.data.tags["dvc.stage"]
        for r in runs
        if r.data.tags.get("dvc.stage") in finished_before_kill and r.data.tags["mlflow.parentRunId"] != killed_parent
    }
    assert not redone, f"{redone} ran again after the kill"
    finished = {r.data.tags["dvc.stage"] for r in runs if r.info.status == "FINISHED" and "dvc.stage" in r.data.tags}
    stages = set(run([*DVC, "stage", "list", "--name-only"], ws, env).stdout.split())
    assert finished == stages  # every stage finished
    assert len(stages) == 5 + 1 + 3 + 1 + 1 + 1 + 1  # data, mini_train, captions/align/synth, train, eval, merge, rep.

    # the ablation's report, and the same numbers in DVC metrics and in the stage's MLflow run
    compare = json.loads((ws / "data/report/compare.json").read_text())
    assert set(compare["scores"]["parity"]["categories"]) == {"vpgc-synthetic"}
    samples = pd.read_parquet(ws / "data/normalized/samples.parquet")
    merged = json.loads((ws / "data/eval/models/vpgc-synthetic/images/results.json").read_text())
    assert merged["counts"]["samples"] == samples["task"].nunique() == 29  # limit 1 per task, all 29 tasks
    metrics = json.loads((ws / "metrics/evaluate-vpgc-synthetic-images.json").read_text())
    by_stage = {r.data.tags.get("dvc.stage"): r for r in runs if r.info.status == "FINISHED"}
    logged = by_stage["merge@vpgc-synthetic-images"].data.metrics
    for category, value in metrics["parity"]["categories"].items():
        assert logged[f"parity.categories.{category}"] == pytest.approx(value)

    # one parent per pipeline run; each stage run is a child carrying the DVC hashes of what it read and wrote
    parents = [r for r in runs if r.data.tags["demonlab.stage"] == "pipeline"]
    assert len(parents) == 2
    train_run = by_stage["train@synthetic"]
    assert train_run.data.tags["mlflow.parentRunId"] == parents[0].info.run_id  # the second pipeline run (newest first)
    lock = yaml.safe_load((ws / "dvc.lock").read_text())["stages"]
    synth_hash = next(o["md5"] for o in lock["synth"]["outs"] if o["path"] == "data/synth")
    assert train_run.data.tags["dvc.in.data/synth"] == synth_hash
    assert train_run.data.tags["dvc.out.data/checkpoints/vpgc-synthetic"].endswith(".dir")
    model = mlflow.MlflowClient().get_model_version_by_alias("demonlab-tiny", "vpgc")
    assert model.run_id == train_run.info.run_id  # the registered model is the synthetic variant's

    # every run named for what it is, in MLflow and Prefect; the summary links the comparison of the evaluated models
    names = {
        "train@synthetic": "train vpgc-synthetic",
        "evaluate@vpgc-synthetic-images-demon": "evaluate vpgc-synthetic images demon",
        "merge@vpgc-synthetic-images": "merge vpgc-synthetic images",
        "score@parity": "score parity",
    }
    assert {stage: by_stage[stage].info.run_name for stage in names} == names
    assert all(re.fullmatch(r"pipeline tiny [0-9a-f]{7}", parent.info.run_name) for parent in parents)
    with temporary_settings({PREFECT_API_URL: prefect_api}), get_client(sync_client=True) as prefect:
        flow_runs = prefect.read_flow_runs(flow_run_filter=ours)
        merges = [f.id for f in flow_runs if f.name == names["merge@vpgc-synthetic-images"] and f.state.is_completed()]
        merge_logs = prefect.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=merges)))
    assert set(names.values()) | {parents[0].info.run_name} <= {flow_run.name for flow_run in flow_runs}
    # a stage's logs reach Prefect's UI to the last line (sent before the process exits, not left to `atexit`)
    assert merges and any(log.message.startswith("Finished in state Completed") for log in merge_logs)
    # (what the linked view shows: tests/test_mlflow_compare.py)
    assert f"/#/experiments/{train_run.info.experiment_id}/runs?viewStateShareKey=demonlab-" in second.stdout

    # 3. nothing changed: nothing runs
    again = run([*DVC, "repro"], ws, env)
    assert "Running stage" not in again.stdout

    # 4. a variant: only the stages that depend on the changed parameter run, and it shows up in DVC and MLflow
    variant = run([*DVC, "exp", "run", "-S", "baseline.seed=1", "-n", "seed-1"], ws, env)
    ran = {line.split("'")[1] for line in variant.stdout.splitlines() if line.startswith("Running stage")}
    assert ran == {"baseline", "score@parity", "score@strict", "report"}  # the report shows the baselines as floors
    assert "seed-1" in run([*DVC, "exp", "show", "--csv"], ws, env).stdout
    tagged = {r.data.tags.get("dvc.stage") for r in stage_runs(env) if r.data.tags.get("dvc.exp_name") == "seed-1"}
    assert tagged == ran
