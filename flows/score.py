"""Stages `baseline` and `score`: chance-level predictions, and scoring a predictions folder with one scorer."""

from __future__ import annotations

import argparse
from pathlib import Path

import mlflow
from prefect import flow

from components.demon.normalize import load_samples
from components.evaluation.baselines import write_chance_predictions
from components.evaluation.runner import score_directory
from components.tracking.runs import write_metrics
from flows.entry import stage_main
from flows.params import load_params
from flows.tracking import tracked_stage


@flow(name="chance-baseline")
def chance_baseline(data: str, out: str, seed: int = 0) -> dict[str, int]:
    with tracked_stage("baseline", {"data": data, "out": out, "seed": seed}):
        samples, _root = load_samples(Path(data))
        counts = write_chance_predictions(samples, Path(out), seed=seed)
        mlflow.log_metric("predictions", sum(counts.values()))
    return counts


@flow(name="score-predictions")
def score_predictions(data: str, preds: str, out: str, scorer: str = "parity", metrics: str | None = None) -> dict:
    """Score `preds` (`<Task>/pred.json`) against `data`; category and task scores go to DVC metrics + MLflow."""
    params = {"data": data, "preds": preds, "out": out, "scorer": scorer}
    with tracked_stage(f"score-{scorer}", params) as run:
        summary = score_directory(Path(data), Path(preds), scorer, Path(out))
        mlflow.log_artifact(str(Path(out) / "summary.json"), run_id=run.info.run_id)
        if metrics:
            write_metrics(
                Path(metrics),
                {
                    "categories": {c: row["score_x100"] for c, row in summary["categories"].items()},
                    "tasks": {t: 100 * row["score"] for t, row in summary["tasks"].items()},
                    "errors": len(summary["errors"]),
                },
            )
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description="Run a scoring stage with the settings of params.yaml.")
    parser.add_argument("stage", choices=["baseline", "score"])
    parser.add_argument("--scorer", choices=["parity", "strict"], default="parity")
    args = parser.parse_args()
    p = load_params()
    normalized, chance = p["data"]["normalized"], p["baseline"]["predictions"]
    if args.stage == "baseline":
        chance_baseline(normalized, chance, seed=p["baseline"]["seed"])
    else:
        out = f"{p['score']['out']}/chance/{args.scorer}"
        score_predictions(normalized, chance, out, args.scorer, metrics=f"metrics/score-chance-{args.scorer}.json")


if __name__ == "__main__":
    stage_main(main)
