"""`demonlab run`: reproduce the pipeline with DVC from the project's environment, then point at its report."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

from components.errors import UserError

# No usage reporting from the tools the stages run (this also keeps offline machines from logging failed calls).
QUIET = {"PREFECT_SERVER_ANALYTICS_ENABLED": "false", "MLFLOW_DISABLE_TELEMETRY": "true", "DVC_NO_ANALYTICS": "1"}


def register(subparsers: argparse._SubParsersAction) -> None:
    run = subparsers.add_parser(
        "run",
        help="reproduce the pipeline (`dvc repro`) on the experiment in params.yaml",
        description="Run `dvc repro` with this environment's tools first on PATH (each stage is a Prefect flow "
        "tracked in MLflow), then print the report. Extra arguments go to `dvc repro` (e.g. a stage name).",
    )
    run.add_argument("dvc_args", nargs=argparse.REMAINDER, help="passed to `dvc repro`")
    run.set_defaults(handler=run_pipeline)


def run_pipeline(args: argparse.Namespace) -> int:
    if not Path("dvc.yaml").is_file():
        raise UserError("no dvc.yaml here: run `demonlab run` from the demonlab repository root")
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    for name, value in QUIET.items():
        env.setdefault(name, value)
    dvc = [sys.executable, "-m", "dvc", "repro", *args.dvc_args]
    if subprocess.run(dvc, env=env).returncode != 0:
        raise UserError("`dvc repro` failed; the failing stage's own error is printed above")
    params = yaml.safe_load(Path("params.yaml").read_text(encoding="utf-8"))
    report = Path(params["data"]["normalized"]) / "report.json"
    if report.is_file():
        totals = json.loads(report.read_text())["totals"]
        print(
            f"DEMON normalized: {totals['normalized']} samples kept, {totals['quarantined']} quarantined, "
            f"{totals['tasks_failed']} task(s) failed, of {totals['input']} read"
        )
        print(f"report: {report.resolve()}")
    for scorer in ("parity", "strict"):
        summary = Path(params["score"]["out"]) / "chance" / scorer / "summary.json"
        if summary.is_file():
            categories = json.loads(summary.read_text())["categories"]
            scores = ", ".join(f"{name} {row['score_x100']:.1f}" for name, row in categories.items())
            print(f"chance baseline ({scorer}): {scores}")
            print(f"scores: {summary.resolve()}")
    return 0
