"""`demonlab train`: run one training stage (align or vpgc) into an output folder, tracked in MLflow."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    train = subparsers.add_parser(
        "train",
        help="train the VPG (stage align) or VPG-C (stage vpgc) on a synthetic-data folder",
        description="Train one stage with the settings of the experiment's `train:` section (docs/training.md). "
        "Writes step checkpoints DIR/step-XXXXXX/ and the final model DIR/final/ (weights.safetensors + "
        "config.yaml), prints the MLflow run id and, with --register-as, the registered model's URI. "
        "Several processes: torchrun --nproc_per_node=N -m components.cli train ...",
    )
    train.add_argument("--config", type=Path, required=True, help="experiments/<name>.yaml")
    train.add_argument("--stage", choices=["align", "vpgc"], required=True)
    train.add_argument("--data", type=Path, required=True, help="a folder in the unified schema (samples.parquet)")
    train.add_argument("--out", type=Path, required=True, help="output folder: step-XXXXXX/, final/, summary.json")
    train.add_argument("--init", type=Path, help="stage vpgc: the align stage's output (or a checkpoint folder)")
    train.add_argument("--max-steps", type=int, help="train this many steps (schedule shortened to fit)")
    train.add_argument("--resume", action="store_true", help="continue from the newest DIR/step-XXXXXX/")
    train.add_argument("--register-as", metavar="NAME", help="log the final model and register it as NAME@<stage>")
    train.add_argument("--device", default="auto", help="auto (CUDA if present), cpu, cuda")
    train.set_defaults(handler=run_train)


def run_train(args: argparse.Namespace) -> int:
    from contextlib import ExitStack

    from components.experiment import load_experiment
    from components.tracking.runs import stage_run
    from components.training.recipe import system_metrics, train

    load_experiment(args.config)  # a broken experiment fails here, before an MLflow run or a model exists

    params = {
        "config": str(args.config), "stage": args.stage, "data": str(args.data), "out": str(args.out),
        "init": str(args.init), "max_steps": args.max_steps, "resume": args.resume,
    }  # fmt: skip
    main = int(os.environ.get("RANK", "0")) == 0  # under torchrun only rank 0 opens the MLflow run
    tags = {"demonlab.experiment": args.config.stem}
    with ExitStack() as stack:
        if main:
            stack.enter_context(system_metrics())
            stack.enter_context(stage_run(f"train-{args.stage}", params, tags))
        result = train(
            args.config, args.stage, args.data, args.out, init=args.init, max_steps=args.max_steps,
            resume=args.resume, device=args.device, register_as=args.register_as,
        )  # fmt: skip
    if main:
        print(json.dumps(result.to_dict(), indent=2))
        print(f"mlflow run: {result.run_id}")
        if result.model_uri:
            print(f"model: {result.model_uri}")
    return 0
