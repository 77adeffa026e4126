"""Stages `align` and `train@<variant>`: one training stage inside a Prefect flow and its MLflow run.

    python -m flows.train align                       the VPG on captions -> <train.out>/backbone
    python -m flows.train vpgc --variant synthetic    VPG-C on a data mix -> <train.out>/vpgc-<variant>

params.yaml keys read: `experiment` (experiments/<name>.yaml), `synth.captions` (align's data), `synth.out` (vpgc's
data), `train.out`, `train.max_steps` (null = the experiment's steps), `train.variants.<variant>` (overrides of the
experiment's `train.vpgc`, e.g. the captions-only mix of the ablation), `train.register_as` + `train.registered_variant`
(that variant's model is registered as `models:/<name>@vpgc`). Stage vpgc starts from `<train.out>/backbone` when the
experiment has a `train.align` section (the embedded default), else from the config's released weights.
Metrics: `metrics/train-<folder>.json`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from prefect import flow

from components.errors import UserError
from components.experiment import load_experiment
from components.params import variant_overrides
from components.tracking.runs import write_metrics
from components.training.recipe import system_metrics, train
from flows.entry import stage_main
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
    overrides: dict | None = None,
    metrics: str | None = None,
    variant: str | None = None,
) -> dict:
    """Train `stage` of `experiment` on `data` into `out` (resuming from its newest step folder by default);
    `variant`: the key of train.variants it trains, recorded in the checkpoint."""
    params = {"experiment": experiment, "stage": stage, "data": data, "out": out, "init": init,
              "max_steps": max_steps, "register_as": register_as, "resume": resume, "variant": variant,
              "overrides": overrides or {}}  # fmt: skip
    with system_metrics(), tracked_stage(f"train-{stage}", params, experiment=Path(experiment).stem):
        result = train(
            Path(experiment), stage, Path(data), Path(out), init=Path(init) if init else None,
            max_steps=max_steps, resume=resume, register_as=register_as, overrides=overrides, variant=variant,
        )  # fmt: skip
        if metrics:  # throughput is the MLflow run's (`train_samples_per_s`): DVC metrics are outputs, reproducible
            write_metrics(
                Path(metrics),
                {"heldout_loss_before": result.heldout_loss_before, "heldout_loss_after": result.heldout_loss_after,
                 "heldout_loss_swapped": result.heldout_loss_swapped, "steps": result.steps,
                 "samples_seen": result.samples_seen},
            )  # fmt: skip
    return result.to_dict()


def main() -> None:
    parser = argparse.ArgumentParser(description="Run a training stage with the settings of params.yaml.")
    parser.add_argument("stage", choices=["align", "vpgc"])
    parser.add_argument("--variant", default=None, help="vpgc: a key of train.variants (the ablation's data mixes)")
    args = parser.parse_args()
    p = load_params()
    experiment = f"experiments/{p['experiment']}.yaml"
    settings = p["train"]
    out = Path(settings["out"])
    if args.stage == "align":
        data, target, overrides, register_as = p["synth"]["captions"], out / "backbone", None, None
    else:
        variants = settings.get("variants") or {}
        if args.variant not in variants:
            raise UserError(f"params.yaml: train.variants has no {args.variant!r}; known: {sorted(variants)}")
        data, target = p["synth"]["out"], out / f"vpgc-{args.variant}"
        overrides = variant_overrides(variants[args.variant])
        # only the main variant is registered: the alias must name the model the paper trains
        register_as = settings.get("register_as") if args.variant == settings.get("registered_variant") else None
    has_align = bool(load_experiment(experiment, overrides).get("train", {}).get("align"))
    train_stage(
        experiment,
        args.stage,
        data=data,
        out=str(target),
        init=str(out / "backbone") if args.stage == "vpgc" and has_align else None,
        max_steps=settings.get("max_steps"),
        register_as=register_as,
        overrides=overrides,
        metrics=f"metrics/train-{target.name}.json",
        variant=args.variant,
    )


if __name__ == "__main__":
    stage_main(main)
