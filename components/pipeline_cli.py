"""`demonlab run`: reproduce the pipeline with DVC from the project's environment, then point at its report."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from components.errors import UserError


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
    dvc = [sys.executable, "-m", "dvc", "repro", *args.dvc_args]
    if subprocess.run(dvc, env=env).returncode != 0:
        raise UserError("`dvc repro` failed; the failing stage's own error is printed above")
    report = Path("data/normalized/report.json")
    if report.is_file():
        totals = json.loads(report.read_text())["totals"]
        print(
            f"DEMON normalized: {totals['normalized']} samples kept, {totals['quarantined']} quarantined, "
            f"{totals['tasks_failed']} task(s) failed, of {totals['input']} read"
        )
        print(f"report: {report.resolve()}")
    return 0
