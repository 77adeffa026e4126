"""Stages `train-align` and `train-vpgc`: one training stage inside a Prefect flow and its MLflow run.

    python -m flows.train align|vpgc     (what dvc.yaml runs; reads params.yaml)

params.yaml keys read: `experiment` (experiments/<name>.yaml), `synth.out` (the training data folder),
`train.align_out`, `train.vpgc_out` (output folders), `train.max_steps` (null = the experiment's steps),
`train.register_as` (MLflow model name; the stage is the alias: `models:/<name>@vpgc`). Stage vpgc starts from
`train.align_out` when the experiment has a `train.align` section (the embedded default), else from the config's
released weights. Metrics: `metrics/train-<stage>.json`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from prefect import flow

from components.experiment import load_experiment
from components.tracking.runs import write_metrics
from components.training.recipe import system_metrics, train
from flows.params import load_params
from flows.tracking import tracked_stage


@flow(name="train-stage")
def train_stage(
    experiment: str,
    stage: str,
    data: str,
    out: str,
    init: str | None = None,
    max_steps: int | None = None,
    register_as: str | None = None,
    resume: bool = True,
    metrics: str | None = None,
) -> dict:
    """Train `stage` of `experiment` on `data` into `out` (resuming from its newest step folder by default)."""
    params = {"experiment": experiment, "stage": stage, "data": data, "out": out, "init": init,
              "max_steps": max_steps, "register_as": register_as, "resume": resume}  # fmt: skip
    with system_metrics(), tracked_stage(f"train-{stage}", params, experiment=Path(experiment).stem):
        result = train(
            Path(experiment), stage, Path(data), Path(out), init=Path(init) if init else None,
            max_steps=max_steps, resume=resume, register_as=register_as,
        )  # fmt: skip
        if metrics:
            write_metrics(
                Path(metrics),
                {"heldout_loss_before": result.heldout_loss_before, "heldout_loss_after": result.heldout_loss_after,
                 "steps": result.steps, "samples_per_s": result.samples_per_s},
            )  # fmt: skip
    return result.to_dict()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Run a training stage with the settings of params.yaml.")
    parser.add_argument("stage", choices=["align", "vpgc"])
    args = parser.parse_args()
    p = load_params()
    experiment = f"experiments/{p['experiment']}.yaml"
    settings = p["train"]
    has_align = bool(load_experiment(experiment).get("train", {}).get("align"))
    train_stage(
        experiment,
        args.stage,
        data=p["synth"]["out"],
        out=settings[f"{args.stage}_out"],
        init=settings["align_out"] if args.stage == "vpgc" and has_align else None,
        max_steps=settings.get("max_steps"),
        register_as=settings.get("register_as"),
        metrics=f"metrics/train-{args.stage}.json",
    )
