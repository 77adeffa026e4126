"""The comparison `demonlab run` links, on the shipped graph at its smallest: params.yaml's models (the backbone,
VPG-C trained on captions, on synthetic data, and the in-distribution upper bound) in both views. Each merge run
carries what defines its model (from the checkpoint's own training record) and links its training run and logged
model; the logged models hold the scores; the parent run holds the report, which answers the declared contrasts; the
printed URL opens, in Chromium, on the params that differ and the headline score; MLflow's Models view lists the
trained checkpoints, each with its scores."""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
from pathlib import Path

import mlflow
import pytest
import yaml
from workspace import SMALLEST, SMALLEST_EXPERIMENT, own_cache, project_workspace, run

from components.runtime.servers import free_port, server
from components.tracking.evaluated import describe_mix

pytestmark = pytest.mark.slow  # the shipped pipeline (29 stages), then the MLflow UI in a browser

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DEMONLAB = str(Path(sys.executable).with_name("demonlab"))


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (apt-get install chromium)")
def test_the_comparison_shows_what_made_the_difference(
    tmp_path: Path, prefect_api: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from playwright.sync_api import expect, sync_playwright

    ws, env = project_workspace(tmp_path, prefect_api, SMALLEST, experiment=SMALLEST_EXPERIMENT)  # the shipped graph
    params = yaml.safe_load((ws / "params.yaml").read_text())
    env = {**env, **own_cache(tmp_path)}
    done = run([DEMONLAB, "run"], ws, env)

    mlflow.set_tracking_uri(env["MLFLOW_TRACKING_URI"])
    runs = mlflow.search_runs(experiment_names=["demonlab"], output_format="list")
    by_stage = {r.data.tags.get("dvc.stage"): r for r in runs}
    parent = next(r for r in runs if r.data.tags["demonlab.stage"] == "pipeline")
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
    path = re.search(r"^compare the models: demonlab ui, then http://127\.0\.0\.1:5000(\S+)$", done.stdout, re.M)[1]
    assert re.search(r"^the report, with its figure: .*/runs/[0-9a-f]{32}/artifacts/report$", done.stdout, re.M)
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
