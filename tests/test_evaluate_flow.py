"""The evaluate stage as DVC will run it: `python -m flows.evaluate` reading params.yaml in a project copy, a real
Prefect server, MLflow runs whose metrics equal the DVC metrics files; then `merge` and `compare`."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import mlflow
import pytest
import yaml
from evaluate_helpers import mini_normalized, tiny_experiment
from prefect.settings import PREFECT_API_URL, temporary_settings
from workspace import own_cache, project_workspace, run

from flows import evaluate as evaluate_flow


@pytest.mark.slow  # a stage process, each importing torch, Prefect and MLflow (~30 s)
def test_evaluate_stage_reads_params_tracks_and_merges(tmp_path, prefect_api, monkeypatch):
    ws, env = project_workspace(
        tmp_path,
        prefect_api,
        {
            "experiment": "tiny-test",
            "evaluate": {
                "out": "data/eval",
                "limit": 1,
                "batch_size": 2,
                "groups": {"multimodal-dialogue": ["Multimodal Dialogue"]},
                "models": {"tiny": {"model": "experiments/tiny-test.yaml", "vpgc": "on"}},
                "views": ["images", "blind"],
            },
        },
    )
    params = yaml.safe_load((ws / "params.yaml").read_text())
    params["evaluate"]["models"] = {"tiny": {"model": "experiments/tiny-test.yaml", "vpgc": "on"}}  # replaced
    # nothing trains here: tiny-test.yaml has no `train.vpgc` for the variants to change
    params["train"]["variants"], params["train"]["registered_variant"] = {}, None
    params["evaluate"]["contrasts"] = None  # the shipped ones name the shipped models
    (ws / "params.yaml").write_text(yaml.safe_dump(params))
    shutil.copy(tiny_experiment(tmp_path), ws / "experiments" / "tiny-test.yaml")
    mini_normalized(tmp_path / "mini", per_task=2)
    shutil.copytree(tmp_path / "mini", ws / "data", dirs_exist_ok=True)
    env = {**env, **own_cache(tmp_path)}
    run([sys.executable, "-m", "flows.evaluate", "group", "tiny", "images", "multimodal-dialogue"], ws, env)
    bundle = ws / "data/eval/groups/tiny/images/multimodal-dialogue"
    results = json.loads((bundle / "results.json").read_text())
    assert results["counts"]["samples"] == 2 and set(results["counts"]["tasks"]) == {"ALFRED", "MMCoQA"}  # limit 1
    assert results["generation"]["batch_size"] == 2 and results["generation"]["max_new_tokens"] == 6
    assert results["model"]["config"]["vpgc_enabled"] is True and results["data"]["path"] == "data/normalized"
    metrics = json.loads((ws / "metrics/evaluate/tiny-images-multimodal-dialogue.json").read_text())
    assert set(metrics["parity"]["categories"]) == {"Multimodal Dialogue"} and metrics["samples"] == 2

    mlflow.set_tracking_uri(env["MLFLOW_TRACKING_URI"])
    runs = {
        r.data.tags["demonlab.stage"]: r
        for r in mlflow.search_runs(experiment_names=["demonlab"], output_format="list")
    }
    logged = runs["evaluate"].data
    assert logged.metrics["parity.categories.Multimodal Dialogue"] == pytest.approx(
        metrics["parity"]["categories"]["Multimodal Dialogue"]
    )
    assert logged.metrics["strict.tasks.ALFRED"] == pytest.approx(metrics["strict"]["tasks"]["ALFRED"])
    assert logged.tags["prefect.flow_run_id"] and logged.tags["demonlab.model_fingerprint"]
    assert logged.params["group"] == "multimodal-dialogue"
    # how the run went is the MLflow run's only: the bundle and the DVC metrics are the same for the same inputs
    assert logged.metrics["generated"] == 2 and logged.metrics["timing.wall_s"] > 0 and "cached" not in metrics
    assert "timing" not in results and "created" not in results

    # merge and compare in this process (the same __main__, without another interpreter start-up)
    for key in ("MLFLOW_TRACKING_URI", "DEMONLAB_CACHE"):
        monkeypatch.setenv(key, env[key])
    monkeypatch.chdir(ws)
    with temporary_settings({PREFECT_API_URL: prefect_api}):  # Prefect read its settings when it was imported
        argvs = (["group", "tiny", "blind", "multimodal-dialogue"], ["merge", "tiny", "images"],
                 ["merge", "tiny", "blind"], ["compare"])  # fmt: skip
        for argv in argvs:
            monkeypatch.setattr(sys, "argv", ["flows.evaluate", *argv])
            evaluate_flow.main()
    merged = json.loads((ws / "data/eval/models/tiny/images/results.json").read_text())
    assert merged["scores"] == results["scores"]
    assert merged["merged_from"] == [str(Path("data/eval/groups/tiny/images/multimodal-dialogue"))]
    assert json.loads((ws / "metrics/evaluate-tiny-images.json").read_text()) == metrics
    blind = json.loads((ws / "data/eval/models/tiny/blind/results.json").read_text())
    assert blind["model"]["blind"] is True and blind["model"]["fingerprint"] != merged["model"]["fingerprint"]
    compare = json.loads((ws / "data/report/compare.json").read_text())
    assert list(compare["bundles"]) == ["tiny", "tiny-blind"]  # each model beside its blind control
    stages = {
        r.data.tags["demonlab.stage"] for r in mlflow.search_runs(experiment_names=["demonlab"], output_format="list")
    }
    assert stages == {"evaluate", "evaluate-merge", "evaluate-compare"}
