"""Stages `baseline` and `score`: the baselines' predictions (the floors every model is read against: chance, and
copying the context), and scoring each baselines' predictions folder with one scorer."""

from __future__ import annotations

import argparse
from pathlib import Path

import mlflow
from prefect import flow

from components.demon.normalize import load_samples
from components.evaluation.baselines import write_baseline_predictions
from components.evaluation.runner import score_directory
from components.tracking.runs import write_metrics
from flows.entry import stage_main
from flows.params import load_params
from flows.tracking import tracked_stage


@flow(name="baselines")
def baselines(data: str, out: str, kinds: list[str], seed: int = 0) -> dict[str, dict[str, int]]:
    """`<out>/<kind>/<Task>/pred.json` for every baseline kind."""
    with tracked_stage("baseline", {"data": data, "out": out, "kinds": kinds, "seed": seed}):
        samples, _root = load_samples(Path(data))
        counts = {kind: write_baseline_predictions(samples, Path(out) / kind, kind, seed=seed) for kind in kinds}
        mlflow.log_metrics({f"predictions.{kind}": sum(n.values()) for kind, n in counts.items()})
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
    normalized, predictions, kinds = p["data"]["normalized"], p["baseline"]["predictions"], p["baseline"]["kinds"]
    if args.stage == "baseline":
        baselines(normalized, predictions, kinds, seed=p["baseline"]["seed"])
        return
    for kind in kinds:
        out = f"{p['score']['out']}/{kind}/{args.scorer}"
        metrics = f"metrics/score-{kind}-{args.scorer}.json"
        score_predictions(normalized, f"{predictions}/{kind}", out, args.scorer, metrics=metrics)


if __name__ == "__main__":
    stage_main(main)
