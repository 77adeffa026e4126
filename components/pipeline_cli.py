"""`demonlab run | server | worker | ui`: the pipeline on this machine, and the local services behind it.

`run` reproduces the DVC pipeline through the `demon-pipeline` Prefect flow (one MLflow parent run, a child per
stage). `server` + `worker` serve the deployments of `prefect.yaml`, so `prefect deployment run 'demon-pipeline/
embedded'` works; `ui` opens the MLflow comparison. Everything binds to 127.0.0.1. Prefect is only ever started as a
subprocess: `components` does not import it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from contextlib import nullcontext
from pathlib import Path

import yaml

from components.errors import UserError
from components.quiet import quiet

POOL = "demonlab"
PREFECT_PORT = 4200
MLFLOW_PORT = 5000


def register(subparsers: argparse._SubParsersAction) -> None:
    run = subparsers.add_parser(
        "run",
        help="reproduce the whole pipeline (DVC stages as one Prefect flow, tracked in MLflow)",
        description="Run every stale DVC stage in order as tasks of the `demon-pipeline` Prefect flow, inside one "
        "MLflow parent run, then print where the report is. Uses the Prefect server at PREFECT_API_URL, or starts "
        "one on 127.0.0.1 for the run (state kept in .prefect/). Parameters come from params.yaml.",
    )
    run.add_argument("--stages", nargs="+", default=None, metavar="STAGE", help="only these stages (`dvc stage list`)")
    run.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="change a parameter in params.yaml first, as `dvc exp run -S` does (repeatable)",
    )
    run.set_defaults(handler=run_pipeline)

    server = subparsers.add_parser(
        "server",
        help="start the local Prefect server (127.0.0.1:4200, state in .prefect/)",
        description="Run Prefect's API and UI in the foreground on 127.0.0.1. Then, in another shell, "
        "`demonlab worker`. Stop with Ctrl-C.",
    )
    server.add_argument("--port", type=int, default=PREFECT_PORT)
    server.set_defaults(handler=run_server)

    worker = subparsers.add_parser(
        "worker",
        help="register the prefect.yaml deployments and serve them with a process worker",
        description="Create the `demonlab` process work pool if needed, deploy everything in prefect.yaml, then run "
        "a worker in the foreground. Afterwards `prefect deployment run 'demon-pipeline/embedded'` runs the pipeline "
        "in this repository. Talks to PREFECT_API_URL (default: the `demonlab server` on 127.0.0.1:4200).",
    )
    worker.add_argument("--pool", default=POOL, help=f"work pool name (default: {POOL})")
    worker.set_defaults(handler=run_worker)

    ui = subparsers.add_parser(
        "ui",
        help="open the MLflow UI on the project's tracking store (127.0.0.1:5000)",
        description="Serve the MLflow UI for the store the stages write to (MLFLOW_TRACKING_URI, default the "
        "workspace's mlflow.db). Compare runs: select them in the `demonlab` experiment, then Compare.",
    )
    ui.add_argument("--port", type=int, default=MLFLOW_PORT)
    ui.set_defaults(handler=run_ui)


def _environment() -> dict[str, str]:
    """This environment's tools first on PATH, no usage reporting, the workspace's Prefect home."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.setdefault("PREFECT_HOME", str(Path(".prefect").resolve()))
    quiet(env)
    return env


def _require_workspace() -> None:
    if not Path("dvc.yaml").is_file():
        raise UserError("no dvc.yaml here: run this from the demonlab repository root")


def parse_assignments(pairs: list[str]) -> dict[str, object]:
    """`["a.b=3", "c=x"]` -> `{"a.b": 3, "c": "x"}` (values read as YAML, as `dvc exp run -S` does)."""
    overrides = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise UserError(f"--set {pair!r}: expected KEY=VALUE, e.g. --set train.max_steps=20")
        overrides[key] = yaml.safe_load(value)
    return overrides


def run_pipeline(args: argparse.Namespace) -> int:
    from components.servers import prefect_server

    _require_workspace()
    env = _environment()
    result_file = Path(env["PREFECT_HOME"]) / "last-pipeline-run.json"
    result_file.unlink(missing_ok=True)
    command = [sys.executable, "-m", "flows.pipeline", "--set", json.dumps(parse_assignments(args.set))]
    command += ["--result", str(result_file)] + (["--stages", *args.stages] if args.stages else [])
    own_server = "PREFECT_API_URL" not in env
    with prefect_server(Path(env["PREFECT_HOME"])) if own_server else nullcontext(env["PREFECT_API_URL"]) as api:
        env["PREFECT_API_URL"] = api
        returncode = subprocess.run(command, env=env).returncode
    result = json.loads(result_file.read_text()) if result_file.is_file() else {}
    if returncode != 0 or "error" in result:
        raise UserError(result.get("error", f"the pipeline flow exited with {returncode}; its log is above"))
    print(f"pipeline done: {len(result['stages'])} stage(s) checked; MLflow parent run {result['mlflow_run_id']}")
    for line in pipeline_summary(yaml.safe_load(Path("params.yaml").read_text(encoding="utf-8"))):
        print(line)
    return 0


def pipeline_summary(params: dict) -> list[str]:
    """The lines `demonlab run` ends with: what the data stages kept, each model's overall score with its 95%
    interval, the paper's full model's paired differences, where the report is."""
    lines = []
    report = Path(params["data"]["normalized"]) / "report.json"
    if report.is_file():
        totals = json.loads(report.read_text())["totals"]
        lines.append(
            f"DEMON normalized: {totals['normalized']} samples kept, {totals['quarantined']} quarantined, "
            f"{totals['tasks_failed']} task(s) failed, of {totals['input']} read"
        )
    compare = Path(params["evaluate"]["report"]) / "compare.json"
    if compare.is_file():
        from components.evaluation.intervals import overall_summary

        record = json.loads(compare.read_text())
        lines += overall_summary(record)
        # the paper's full model against every other model and its own blind control, paired on shared samples
        full = f"vpgc-{params['train']['registered_variant']}"
        for other in (label for label in record["bundles"] if label != full and full in record["bundles"]):
            lines.append(overall_summary(record, full, other)[-1])
        lines.append(f"report: {compare.with_name('compare.md').resolve()}")
    return lines


def _foreground(command: list[str], env: dict[str, str]) -> int:
    try:
        return subprocess.run(command, env=env).returncode
    except KeyboardInterrupt:
        return 0


def run_server(args: argparse.Namespace) -> int:
    from components.servers import prefect_server_command

    env = _environment()
    Path(env["PREFECT_HOME"]).mkdir(parents=True, exist_ok=True)
    print(f"Prefect UI and API on http://127.0.0.1:{args.port} (PREFECT_API_URL=http://127.0.0.1:{args.port}/api)")
    return _foreground(prefect_server_command(args.port), env)


def run_worker(args: argparse.Namespace) -> int:
    _require_workspace()
    env = _environment()
    env.setdefault("PREFECT_API_URL", f"http://127.0.0.1:{PREFECT_PORT}/api")
    env["DEMONLAB_WORKSPACE"] = str(Path.cwd())  # prefect.yaml's pull step runs flows here
    prefect = str(Path(sys.executable).with_name("prefect"))
    steps = (
        [prefect, "work-pool", "create", args.pool, "--type", "process", "--overwrite"],
        [prefect, "--no-prompt", "deploy", "--all"],
    )
    for step in steps:
        done = subprocess.run(step, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            raise UserError(
                f"`{' '.join(step[1:])}` failed against {env['PREFECT_API_URL']} (is `demonlab server` running?):\n"
                f"{(done.stdout + done.stderr)[-2000:]}"
            )
    print(f"deployments of prefect.yaml registered; worker on pool {args.pool!r} (Ctrl-C stops it)")
    return _foreground([prefect, "worker", "start", "--pool", args.pool, "--type", "process"], env)


def run_ui(args: argparse.Namespace) -> int:
    from components.tracking.runs import tracking_uri

    env = _environment()
    store = tracking_uri()
    command = [str(Path(sys.executable).with_name("mlflow")), "ui", "--backend-store-uri", store]
    if store.startswith("sqlite:"):  # runs logged to the embedded store keep their artifacts beside it
        command += ["--default-artifact-root", Path("mlartifacts").resolve().as_uri()]
    command += ["--host", "127.0.0.1", "--port", str(args.port), "--workers", "1"]
    print(f"MLflow UI on http://127.0.0.1:{args.port} (store: {store})")
    return _foreground(command, env)
