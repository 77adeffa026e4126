"""The shipped pipeline in a fresh workspace, as a user runs it, at its smallest: params.yaml's graph (the backbone,
VPG-C trained on captions, on synthetic data, and the in-distribution upper bound, each in both views). `demonlab run`
(DVC stages as Prefect tasks, MLflow parent + child runs named for what they are, a console of one line per stage, the
detail in the run's log) is killed mid-stage and re-run; the comparison it links opens in Chromium; then nothing is
left to do, and a `dvc exp run -S` variant reruns only what depends on it. One run of the graph serves every test here
(the tests read it in file order; the last one adds a variant)."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import mlflow
import pandas as pd
import pytest
import yaml
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterTags, LogFilter, LogFilterFlowRunId
from prefect.settings import PREFECT_API_URL, temporary_settings
from workspace import SMALLEST, SMALLEST_EXPERIMENT, own_cache, project_workspace, run

from components.runtime.servers import background, free_port, server
from components.tracking.evaluated import describe_mix
from components.tracking.reconcile import RECONCILED_TAG
from components.tracking.runs import workspace_key

pytestmark = pytest.mark.slow  # the shipped pipeline (29 stages), killed and run again, then the MLflow UI in a browser

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DEMONLAB = str(Path(sys.executable).with_name("demonlab"))
DVC = [sys.executable, "-m", "dvc"]
STAGES = 29  # data 5, mini_train, captions/align/synth, train 3, evaluate 8 (4 models x 2 views), merge 8, report


@dataclass
class Shipped:
    """The workspace after a killed run and its re-run."""

    ws: Path
    env: dict
    finished_before_kill: set[str]  # stages whose MLflow runs had finished
    left_running: set[str]  # MLflow run ids the kill left RUNNING
    console: str  # the re-run's stdout


def stage_runs(env: dict) -> list:
    """Every MLflow run of the workspace, newest first."""
    mlflow.set_tracking_uri(env["MLFLOW_TRACKING_URI"])
    return mlflow.search_runs(experiment_names=["demonlab"], output_format="list")


def finished_by_stage(env: dict) -> dict[str, mlflow.entities.Run]:
    """DVC stage -> its newest finished run."""
    runs = [r for r in stage_runs(env) if r.info.status == "FINISHED"]
    return {stage: r for r in reversed(runs) if (stage := r.data.tags.get("dvc.stage"))}


def run_log(console: str, ws: Path) -> Path:
    """The log file `demonlab run` names first: what DVC, Prefect, MLflow and the stages printed."""
    return ws / re.search(r"^log: (\S+)", console, re.MULTILINE)[1]


def kill_when(console: Path, ws: Path, text: str, process, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while "log: " not in console.read_text() or text not in run_log(console.read_text(), ws).read_text():
        assert process.poll() is None, f"the pipeline ended before {text!r}:\n{console.read_text()[-3000:]}"
        assert time.monotonic() < deadline, f"no {text!r} after {timeout} s"
        time.sleep(0.5)


@pytest.fixture(scope="module")
def shipped(tmp_path_factory: pytest.TempPathFactory, prefect_api: str) -> Shipped:
    """The shipped graph killed while training, then run again to the end."""
    tmp_path = tmp_path_factory.mktemp("shipped")
    ws, env = project_workspace(tmp_path, prefect_api, SMALLEST, experiment=SMALLEST_EXPERIMENT)
    env = {**env, **own_cache(tmp_path)}
    # killed while training: everything before it is done, the training stage is half-way, and nothing could record
    # its end: the pipeline's and the stage's runs are left RUNNING
    log = tmp_path / "first.log"
    with background([DEMONLAB, "run"], log, env=env, cwd=ws) as first:
        kill_when(log, ws, "Running stage 'train@", first)
        while not [r for r in stage_runs(env) if r.data.tags.get("dvc.stage", "").startswith("train@")]:
            assert first.poll() is None, log.read_text()[-3000:]
            time.sleep(0.5)
        first.send_signal(signal.SIGKILL)  # every process it started dies with it (tests/test_signals.py)
        first.wait()
    runs = stage_runs(env)
    finished = {r.data.tags["dvc.stage"] for r in runs if r.info.status == "FINISHED"}
    running = {r.info.run_id for r in runs if r.info.status == "RUNNING"}
    second = run([DEMONLAB, "run"], ws, env)
    return Shipped(ws, env, finished, running, second.stdout)


def test_a_killed_run_resumes_tracks_everything_and_names_it(shipped: Shipped, prefect_api: str, monkeypatch) -> None:
    ws, env = shipped.ws, shipped.env
    assert {"acquire", "normalize", "captions", "align", "synth"} <= shipped.finished_before_kill
    assert len(shipped.left_running) == 2  # the pipeline and the training stage

    # the re-run finishes, redoing none of the finished stages, nothing lost or duplicated
    report = ws / "data/report/compare.md"
    assert f"report: {report}" in shipped.console
    assert "vpgc-synthetic (parity x100): overall " in shipped.console and " ± " in shipped.console  # n and interval
    # a readable console: one line per stage, the summary, the reconciled records; the detail is in the log
    lines = shipped.console.splitlines()
    evaluated = yaml.safe_load((ws / "params.yaml").read_text())["evaluate"]
    # the summary: a score per model and view, a line per contrast
    summary = 2 * len(evaluated["models"]) + len(evaluated["contrasts"])
    assert len(lines) <= STAGES + summary + 20, shipped.console
    assert sum(bool(re.match(rf"\s*\d+/{STAGES} \S+ +(ran|unchanged) +[\d.]+s$", line)) for line in lines) == STAGES
    for chatter in ("dvc push", "git add", "INFO", "Running stage"):
        assert chatter not in shipped.console
    detail = run_log(shipped.console, ws).read_text()
    assert "Running stage 'report'" in detail and "Finished in state Completed" in detail
    runs = stage_runs(env)
    # ... which the re-run found and ended: nothing is left running in MLflow or Prefect
    assert [r.info.run_name for r in runs if r.info.status == "RUNNING"] == []
    for killed in (r for r in runs if r.info.run_id in shipped.left_running):
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
    left = [r for r in runs if r.info.run_id in shipped.left_running]
    killed_parent = next(r.info.run_id for r in left if r.data.tags["demonlab.stage"] == "pipeline")
    redone = {
        r.data.tags["dvc.stage"]
        for r in runs
        if r.data.tags.get("dvc.stage") in shipped.finished_before_kill
        and r.data.tags["mlflow.parentRunId"] != killed_parent
    }
    assert not redone, f"{redone} ran again after the kill"
    by_stage = finished_by_stage(env)
    stages = set(run([*DVC, "stage", "list", "--name-only"], ws, env).stdout.split())
    assert set(by_stage) == stages and len(stages) == STAGES  # every stage finished

    # the report, and the same numbers in DVC metrics and in the stage's MLflow run
    compare = json.loads((ws / "data/report/compare.json").read_text())
    assert set(compare["scores"]["parity"]["categories"]) == set(compare["bundles"]) and len(compare["bundles"]) == 8
    samples = pd.read_parquet(ws / "data/normalized/samples.parquet")
    merged = json.loads((ws / "data/eval/models/vpgc-synthetic/images/results.json").read_text())
    relation = samples[samples["category"] == "Visual Relation Inference"]
    assert merged["counts"]["samples"] == relation["task"].nunique()  # limit 1 per task, the shipped group
    metrics = json.loads((ws / "metrics/evaluate-vpgc-synthetic-images.json").read_text())
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

    # every run named for what it is, in MLflow and Prefect
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


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (apt-get install chromium)")
def test_the_comparison_shows_what_made_the_difference(shipped: Shipped, tmp_path: Path, monkeypatch) -> None:
    """Each merge run carries what defines its model (from the checkpoint's own training record) and links its
    training run and logged model; the logged models hold the scores; the parent run holds the report, which answers
    the declared contrasts; the printed URL opens, in Chromium, on the params that differ and the headline score;
    MLflow's Models view lists the trained checkpoints, each with its scores."""
    from playwright.sync_api import expect, sync_playwright

    ws, env = shipped.ws, shipped.env
    params = yaml.safe_load((ws / "params.yaml").read_text())
    by_stage = finished_by_stage(env)
    pipelines = [r for r in stage_runs(env) if r.data.tags["demonlab.stage"] == "pipeline"]
    parent = next(r for r in pipelines if r.info.status == "FINISHED")
    experiment = parent.info.experiment_id

    # what defines each model, from its checkpoint's record, against what params.yaml and the experiment say
    tiny = yaml.safe_load((ws / "experiments/tiny.yaml").read_text())["train"]
    trained = {"backbone": ("align", "align", tiny["align"])} | {
        f"vpgc-{variant}": (f"train@{variant}", variant, {**tiny["vpgc"], **changes})
        for variant, changes in params["train"]["variants"].items()
    }
    assert set(trained) == set(params["evaluate"]["models"])  # the graph this test stands for
    logged = {m.name: m for m in mlflow.search_logged_models(experiment_ids=[experiment], output_format="list")}
    assert set(logged) == set(trained)  # every trained checkpoint
    for name, (stage, variant, settings) in trained.items():
        train_run = by_stage[stage]
        model = logged[name]
        assert model.source_run_id == train_run.info.run_id
        for view in ("images", "blind"):
            merge = by_stage[f"merge@{name}-{view}"]
            expected = {
                "model.name": name, "model.kind": "backbone" if name == "backbone" else "vpgc", "view": view,
                "train.experiment": "tiny", "train.variant": variant, "train.mix": describe_mix(settings["mix"]),
                "train.steps": "2", "train.lr": str(settings["lr"]), "train.seed": str(tiny["seed"]),
                "eval.samples_per_task": "1", "eval.scorer": "parity (headline), strict",
            }  # fmt: skip
            assert {key: merge.data.params.get(key) for key in expected} == expected, name
            assert merge.data.params["eval.decoding"].startswith("greedy, ")
            evaluate = by_stage[f"evaluate@{name}-{view}-demon"]
            assert {key: evaluate.data.params.get(key) for key in expected} == expected, name
            links = {"demonlab.training_run_id": train_run.info.run_id, "demonlab.model_id": model.model_id}
            assert {key: merge.data.tags.get(key) for key in links} == links
            # the scores are the model's too, one evaluation per view
            scores = {m.key: m.value for m in model.metrics if m.dataset_name == f"DEMON {view}"}
            assert scores["parity.overall"] == pytest.approx(merge.data.metrics["parity.overall"])
            # the interval where one is defined (not at 1 sample a task, this test's size), as on the merge run
            interval = {key for key in ("parity.overall_ci.low", "parity.overall_ci.high") if key in merge.data.metrics}
            assert {"strict.overall", *interval} <= set(scores)
    assert by_stage["merge@vpgc-synthetic-images"].data.tags["demonlab.registered_model"] == "demonlab-tiny/1"
    assert "demonlab.registered_model" not in by_stage["merge@vpgc-captions-images"].data.tags

    # the report answers the declared contrasts, Holm-adjusted as one family (both scorers)
    family = json.loads((ws / "data/report/compare.json").read_text())["contrasts"]
    assert family["family"] == "declared" and len(family["records"]) == 2 * len(params["evaluate"]["contrasts"])

    # the parent run holds the report and says what it found
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(parent.info.run_id, "report")}
    assert artifacts == {"report/compare.md", "report/compare.json", "report/compare.png"}
    description = parent.data.tags["mlflow.note.content"]
    assert "\n" not in description and "best overall (parity x100): " in description

    # the printed link opens MLflow on the params that differ and the headline score with its interval
    console = shipped.console
    path = re.search(r"^compare the models: demonlab ui, then http://127\.0\.0\.1:5000(\S+)$", console, re.M)[1]
    assert f"/#/experiments/{experiment}/runs?viewStateShareKey=demonlab-" in path
    assert re.search(r"^the report, with its figure: .*/runs/[0-9a-f]{32}/artifacts/report$", console, re.M)
    port = free_port()
    monkeypatch.chdir(ws)  # `demonlab ui` serves the workspace's store
    with (
        server([DEMONLAB, "ui", "--port", str(port)], f"http://127.0.0.1:{port}/health", tmp_path / "ui.log", env, 120),
        sync_playwright() as playwright,
    ):
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"]
        )
        page = browser.new_page(viewport={"width": 1800, "height": 1250})
        page.goto(f"http://127.0.0.1:{port}{path}")
        expect(page.get_by_text(f"{2 * len(trained)} matching runs")).to_be_visible(timeout=60_000)
        # the saved view's difference table: only the params that differ, the training variant and the view among
        # them, each run's value beside it
        differs = page.get_by_text("What differs", exact=False).first
        expect(differs).to_be_visible(timeout=60_000)
        for shown in ("train.variant", "view", "model.name", "captions", "synthetic", "blind"):
            expect(page.get_by_text(shown, exact=True).first).to_be_visible(timeout=30_000)
        page.screenshot(path=tmp_path / "compare.png")
        # the Models view lists every trained checkpoint; a model's page holds its scores per view
        page.goto(f"http://127.0.0.1:{port}/#/experiments/{experiment}/models")
        for name in logged:
            expect(page.get_by_text(name, exact=True).first).to_be_visible(timeout=60_000)
        page.goto(f"http://127.0.0.1:{port}/#/experiments/{experiment}/models/{logged['vpgc-synthetic'].model_id}")
        expect(page.get_by_text("parity.overall", exact=True).first).to_be_visible(timeout=60_000)
        expect(page.get_by_text("DEMON blind", exact=False).first).to_be_visible(timeout=30_000)
        browser.close()
    if folder := os.environ.get("DEMONLAB_SCREENSHOTS"):  # docs/img: the page docs/orchestration.md shows
        shutil.copy(tmp_path / "compare.png", Path(__file__).resolve().parents[1] / folder / "mlflow-compare.png")


def test_nothing_changed_runs_nothing_and_a_variant_reruns_only_its_dependants(shipped: Shipped) -> None:
    ws, env = shipped.ws, shipped.env
    again = run([*DVC, "repro"], ws, env)
    assert "Running stage" not in again.stdout

    # only the stages that depend on the changed parameter run, and it shows up in DVC and MLflow
    variant = run([*DVC, "exp", "run", "-S", "baseline.seed=1", "-n", "seed-1"], ws, env)
    ran = {line.split("'")[1] for line in variant.stdout.splitlines() if line.startswith("Running stage")}
    assert ran == {"baseline", "score@parity", "score@strict", "report"}  # the report shows the baselines as floors
    assert "seed-1" in run([*DVC, "exp", "show", "--csv"], ws, env).stdout
    tagged = {r.data.tags.get("dvc.stage") for r in stage_runs(env) if r.data.tags.get("dvc.exp_name") == "seed-1"}
    assert tagged == ran
