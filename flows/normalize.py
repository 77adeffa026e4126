"""Stage `normalize`: raw DEMON -> `samples.parquet` + `quarantine.jsonl` + `report.json`."""

from __future__ import annotations

from pathlib import Path

import mlflow
from prefect import flow

from components.demon.normalize import normalize
from components.tracking.runs import write_metrics
from flows.entry import stage_main
from flows.params import load_params
from flows.tracking import tracked_stage

METRICS = Path("metrics/normalize.json")


@flow(name="normalize-demon", retries=1)
def normalize_demon(raw: str, out: str, split: str = "core", strict: bool = False) -> dict:
    params = {"raw": raw, "out": out, "split": split, "strict": strict}
    with tracked_stage("normalize", params) as run:
        report = normalize(Path(raw), Path(out), split=split)
        mlflow.log_artifact(str(Path(out) / "report.json"), run_id=run.info.run_id)
        write_metrics(METRICS, {"totals": report["totals"]})
        mlflow.log_metric("tasks_resumed", report["tasks_resumed"])  # how the run went: not a DVC metric
    failed = report["totals"]["quarantined"] or report["totals"]["tasks_failed"]
    if strict and failed:
        raise RuntimeError(f"strict normalization: {failed} problem(s); see {out}/quarantine.jsonl and report.json")
    return report


def main() -> None:
    p = load_params()
    normalize_demon(
        p["data"]["raw"], p["data"]["normalized"], split=p["data"]["split"], strict=p["normalize"]["strict"]
    )


if __name__ == "__main__":
    stage_main(main)
