"""Stages `captions` and `synth`: synthetic data (components/synth) inside a Prefect flow and its MLflow run.

    python -m flows.synth --captions    captions only, the alignment stage's data -> `synth.captions`
    python -m flows.synth               discriminative pairs + captions -> `synth.out`

params.yaml keys read: `experiment` (experiments/<name>.yaml: its `model:` and `synth:` sections), `synth.captions`,
`synth.out`, `synth.seed`, `synth.workers`, `synth.limit` (null = the experiment's `synth.count`), and
`synth.vpg_checkpoint` (a trained checkpoint folder whose VPG gives the attention maps; null = the experiment's
model). Metrics (per edit type tried/kept/rejected, inputs used/skipped): `metrics/synth.json` or
`metrics/captions.json`; report.json and the contact sheet are MLflow artifacts of the stage run; its seconds per
step (`seconds.<step>`, `seconds.wall`) and `chunks_resumed` are metrics of that run only (not DVC's).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import mlflow
from prefect import flow

from components.params import CAPTIONS_OVERRIDES
from components.synth.pipeline import generate_from_experiment
from components.tracking.runs import write_metrics
from flows.entry import stage_main
from flows.params import load_params
from flows.tracking import tracked_stage

METRICS = Path("metrics/synth.json")


@flow(name="synthesize-pairs", retries=1)
def synthesize_pairs(
    experiment: str,
    out: str,
    seed: int | None = None,
    workers: int = 1,
    limit: int | None = None,
    vpg_checkpoint: str | None = None,
    overrides: dict | None = None,
    metrics: str | None = str(METRICS),
) -> dict:
    """Generate into `out` (a killed run resumes: the retry picks up the finished chunks)."""
    params = {
        "experiment": experiment,
        "out": out,
        "seed": seed,
        "workers": workers,
        "limit": limit,
        "vpg_checkpoint": vpg_checkpoint,
        "overrides": overrides or {},
    }
    with tracked_stage("synth", params, experiment=Path(experiment).stem) as run:
        report = generate_from_experiment(
            Path(experiment),
            Path(out),
            overrides=overrides,
            limit=limit,
            seed=seed,
            workers=workers,
            vpg_checkpoint=Path(vpg_checkpoint) if vpg_checkpoint else None,
            progress=False,
        )
        for name in ("report.json", "contact_sheet.png"):
            mlflow.log_artifact(str(Path(out) / name), run_id=run.info.run_id)
        if metrics:
            write_metrics(
                Path(metrics),
                {
                    "edits": {t: {k: v[k] for k in ("tried", "kept", "rejected")} for t, v in report["edits"].items()},
                    "inputs": {k: report["inputs"][k] for k in ("total", "used", "skipped")},
                    "totals": report["totals"],
                },
            )
        # how the run went: MLflow only, as DVC metrics are outputs and must be the same for the same inputs
        run_only = {f"seconds.{step}": value for step, value in report["seconds"].items()}
        mlflow.log_metrics({**run_only, "chunks_resumed": report["chunks_resumed"]})
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description="Run the synth stage with the settings of params.yaml.")
    parser.add_argument("--captions", action="store_true", help="captions only (alignment data) into synth.captions")
    args = parser.parse_args()
    p = load_params()
    settings = p["synth"]
    synthesize_pairs(
        f"experiments/{p['experiment']}.yaml",
        settings["captions"] if args.captions else settings["out"],
        seed=settings.get("seed"),
        workers=settings.get("workers") or 1,
        limit=settings.get("limit"),
        # the pairs are chosen where the *aligned* VPG does not look, as in the paper (its VPG is pretrained)
        vpg_checkpoint=None if args.captions else settings.get("vpg_checkpoint"),
        overrides=CAPTIONS_OVERRIDES if args.captions else None,
        metrics=f"metrics/{'captions' if args.captions else 'synth'}.json",
    )


if __name__ == "__main__":
    stage_main(main)
