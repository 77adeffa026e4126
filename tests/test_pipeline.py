"""`dvc repro` of the stages so far, in a fresh workspace: real DVC, a real Prefect server, a real MLflow store."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import mlflow
import pandas as pd
import pytest
import yaml
from workspace import project_workspace, run


@pytest.fixture
def workspace(tmp_path: Path, prefect_api: str) -> tuple[Path, dict]:
    return project_workspace(tmp_path, prefect_api)


def test_dvc_repro_runs_the_stages_tracks_them_and_knows_what_is_stale(workspace):
    ws, env = workspace
    dvc = [sys.executable, "-m", "dvc"]
    first = run([*dvc, "repro"], ws, env)
    assert "Running stage 'acquire'" in first.stdout and "Running stage 'normalize'" in first.stdout

    samples = pd.read_parquet(ws / "data/normalized/samples.parquet")
    report = json.loads((ws / "data/normalized/report.json").read_text())
    assert report["totals"]["input"] == 29 * 2 == report["totals"]["normalized"] + report["totals"]["quarantined"]
    assert len(samples) == report["totals"]["normalized"] and samples["task"].nunique() == 29
    metrics = json.loads((ws / "metrics/normalize.json").read_text())

    # The same numbers in the DVC metrics file and in the stage's MLflow run.
    mlflow.set_tracking_uri(env["MLFLOW_TRACKING_URI"])
    runs = mlflow.search_runs(experiment_names=["demonlab"], output_format="list")
    by_stage = {r.data.tags["demonlab.stage"]: r for r in runs}
    assert set(by_stage) == {"acquire", "normalize", "baseline", "score-parity", "score-strict"}
    normalize_run = by_stage["normalize"]
    assert normalize_run.data.metrics["totals.normalized"] == metrics["totals"]["normalized"]
    assert normalize_run.data.tags["prefect.flow_run_id"]  # each stage is a Prefect flow run
    assert normalize_run.data.params["split"] == "core"

    # The chance baseline is scored by both scorers, every category filled, the same figures in both stores.
    for scorer in ("parity", "strict"):
        scores = json.loads((ws / f"metrics/score-chance-{scorer}.json").read_text())
        assert len(scores["categories"]) == 7 and scores["errors"] == 0
        logged = by_stage[f"score-{scorer}"].data.metrics
        for category, value in scores["categories"].items():
            assert logged[f"categories.{category}"] == pytest.approx(value)
        summary = json.loads((ws / f"data/scores/chance/{scorer}/summary.json").read_text())
        assert set(summary["tasks"]) == set(samples["task"])

    again = run([*dvc, "repro"], ws, env)
    assert "Running stage" not in again.stdout

    params = yaml.safe_load((ws / "params.yaml").read_text())
    params["normalize"]["strict"] = True
    (ws / "params.yaml").write_text(yaml.safe_dump(params))
    changed = run([*dvc, "repro"], ws, env)
    assert "Running stage 'normalize'" in changed.stdout and "Running stage 'acquire'" not in changed.stdout
    assert "Running stage 'baseline'" not in changed.stdout  # normalize's output did not change
