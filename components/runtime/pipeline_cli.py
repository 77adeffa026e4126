"""`demonlab run | doctor | server | worker | ui`: the pipeline on this machine, and the local services behind it.

`run` reproduces the DVC pipeline through the `demon-pipeline` Prefect flow (one MLflow parent run, a child per stage):
one line per stage on the console (`components.runtime.console`), all that DVC, Prefect, MLflow and the stages print in
the run's log (`logs/run-<UTC time>.log`), then the results and where to look further. `server` + `worker` serve the
deployments of `prefect.yaml`, so `prefect deployment run 'demon-pipeline/embedded'` works; `ui` opens the MLflow
comparison. Everything binds to 127.0.0.1; `--host` beyond loopback needs the tool's own authentication
(`components.security.check_exposure`). Prefect is only ever started as a subprocess: `components` does not import it.
Each command stops everything it started when it is stopped, and nothing it started outlives it
(`components.runtime.lifetime`); `doctor` ends what a killed run left running in the stores."""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import secrets
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import yaml

from components.errors import UserError
from components.runtime.console import PipelineConsole
from components.runtime.lifetime import child, dies_with_us, stoppable
from components.runtime.quiet import quiet
from components.security import check_exposure, check_prefect_login, redact

POOL = "demonlab"
PREFECT_PORT = 4200
MLFLOW_PORT = 5000
RESULTS = "docs/results.md"  # what the small experiment found: the main job is a smoke test of the same graph


def register(subparsers: argparse._SubParsersAction) -> None:
    run = subparsers.add_parser(
        "run",
        help="reproduce the whole pipeline (DVC stages as one Prefect flow, tracked in MLflow)",
        description="Run every stale DVC stage, each once the stages it reads from are done, as tasks of the "
        "`demon-pipeline` Prefect flow inside one MLflow parent run, then print the results and where the report is. "
        "DVC judges what is stale and records what ran in dvc.lock, as `dvc repro` would; with nothing stale the "
        "command says so in a second or two and starts nothing. Uses the Prefect server at PREFECT_API_URL, or "
        "starts one on 127.0.0.1 for the run (state kept in .prefect/). Parameters come from params.yaml.",
    )
    run.add_argument("--stages", nargs="+", default=None, metavar="STAGE", help="only these stages (`dvc stage list`)")
    run.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="change a parameter in params.yaml first, as `dvc exp run -S` does (repeatable)",
    )
    run.add_argument(
        "--parallel",
        type=int,
        default=1,
        metavar="N",
        help="run up to N stages that do not depend on each other at once (default 1; with several GPUs each of "
        "the N gets its own through CUDA_VISIBLE_DEVICES)",
    )
    run.add_argument(
        "--pool",
        default=None,
        metavar="NAME",
        help="run each stage on a worker of this Prefect work pool (other machines: `demonlab worker --pool NAME` in "
        "their clones), inputs pulled from and outputs pushed to the DVC remote; needs an MLflow server "
        "(MLFLOW_TRACKING_URI) and the commit pushed where the workers fetch it",
    )
    run.add_argument(
        "-v", "--verbose", action="store_true", help="show what DVC, Prefect, MLflow and the stages print, not a log"
    )
    run.set_defaults(handler=run_pipeline)

    sweep = subparsers.add_parser(
        "sweep",
        help="the pipeline for every combination of parameter values, each a DVC experiment, compared in one report",
        description="Run the pipeline once per combination of the -S values (as `demonlab run --set`), keep each as a "
        "DVC experiment (`dvc exp show`), group their MLflow runs under one parent run and write one comparison "
        "(sweeps/<name>.md). params.yaml, dvc.lock and the outputs are as before afterwards.",
    )
    sweep.add_argument(
        "-S", action="append", required=True, metavar="KEY=V1,V2", help="a parameter and its values (repeatable)"
    )
    sweep.add_argument("--name", default=None, help="the sweep's name, prefix of its experiments (default: the time)")
    sweep.add_argument("--parallel", type=int, default=1, metavar="N", help="as for `demonlab run`")
    sweep.add_argument("--pool", default=None, metavar="NAME", help="as for `demonlab run`: stages on its workers")
    sweep.add_argument("-v", "--verbose", action="store_true", help="as for `demonlab run`")
    sweep.set_defaults(handler=_sweep)

    doctor = subparsers.add_parser(
        "doctor",
        help="end what a killed run left running in MLflow and Prefect (`demonlab run` does it when it starts)",
        description="Find this workspace's MLflow runs and Prefect flow runs still recorded as running whose process "
        "on this machine has exited (killed by SIGKILL, a crash, a power cut) and end them: MLflow runs become KILLED, "
        "Prefect flow and task runs Crashed, each saying who found it and why. Live runs and other machines' runs are "
        "left alone. Uses the Prefect server at PREFECT_API_URL, or starts the workspace's (.prefect/) for the check.",
    )
    doctor.set_defaults(handler=run_doctor)

    server = subparsers.add_parser(
        "server",
        help="start the local Prefect server (127.0.0.1:4200, state in .prefect/)",
        description="Run Prefect's API and UI in the foreground on 127.0.0.1. Then, in another shell, "
        "`demonlab worker`. Stop with Ctrl-C.",
    )
    server.add_argument("--port", type=int, default=PREFECT_PORT)
    _add_exposure_arguments(server, "needs PREFECT_SERVER_API_AUTH_STRING set")
    server.set_defaults(handler=run_server)

    worker = subparsers.add_parser(
        "worker",
        help="register the prefect.yaml deployments and serve them with a process worker",
        description="Create the `demonlab` process work pool if needed, deploy everything in prefect.yaml, then run "
        "a worker in the foreground. Afterwards `prefect deployment run 'demon-pipeline/embedded'` runs the pipeline "
        "in this repository. Talks to PREFECT_API_URL (default: the `demonlab server` on 127.0.0.1:4200).",
    )
    worker.add_argument("--pool", default=POOL, help=f"work pool name (default: {POOL})")
    worker.add_argument(
        "--name", type=_worker_name, default=None, help="this worker's name in Prefect (default: host and folder)"
    )
    worker.add_argument("--limit", type=int, default=None, help="flow runs (stages) at once on this worker")
    worker.set_defaults(handler=run_worker)

    ui = subparsers.add_parser(
        "ui",
        help="open the MLflow UI on the project's tracking store (127.0.0.1:5000)",
        description="Serve the MLflow UI for the store the stages write to (MLFLOW_TRACKING_URI, default the "
        "workspace's mlflow.db). Compare runs: select them in the `demonlab` experiment, then Compare.",
    )
    ui.add_argument("--port", type=int, default=MLFLOW_PORT)
    ui.add_argument(
        "--auth",
        action="store_true",
        help="serve MLflow's basic-auth app (users in ./basic_auth.db or MLFLOW_AUTH_CONFIG_PATH's database; "
        "the first start needs MLFLOW_AUTH_ADMIN_PASSWORD)",
    )
    _add_exposure_arguments(ui, "needs --auth")
    ui.set_defaults(handler=run_ui)


def _add_exposure_arguments(parser: argparse.ArgumentParser, auth: str) -> None:
    parser.add_argument("--host", default="127.0.0.1", help=f"interface to bind (default 127.0.0.1; any other {auth})")
    parser.add_argument(
        "--insecure", action="store_true", help="allow a non-loopback --host without authentication (warns)"
    )


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


def _validate_params(assignments: list[str]) -> None:
    """params.yaml as the run will see it (with --set) and every experiment its stages use, validated before any
    server or stage starts: a broken config fails in a second, not an hour into the pipeline."""
    from components.params import apply_assignments, validate_params

    try:
        params = yaml.safe_load(Path("params.yaml").read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        raise UserError(f"params.yaml: not valid YAML: {' '.join(str(error).split())}") from None
    if isinstance(params, dict):
        apply_assignments(params, parse_assignments(assignments), "params.yaml")
    validate_params(params)


def parse_assignments(pairs: list[str]) -> dict[str, object]:
    """`["a.b=3", "c=x"]` -> `{"a.b": 3, "c": "x"}` (values read as YAML, as `dvc exp run -S` does)."""
    overrides = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise UserError(f"--set {pair!r}: expected KEY=VALUE, e.g. --set train.max_steps=20")
        overrides[key] = yaml.safe_load(value)
    return overrides


@contextmanager
def _prefect_api(env: dict[str, str]) -> Iterator[str]:
    """PREFECT_API_URL, else a Prefect server on 127.0.0.1 over the workspace's state for as long as the block."""
    from components.runtime.servers import prefect_server

    if "PREFECT_API_URL" in env:
        check_prefect_login(env["PREFECT_API_URL"], env.get("PREFECT_API_AUTH_STRING"))
        yield env["PREFECT_API_URL"]
        return
    with prefect_server(Path(env["PREFECT_HOME"])) as api:
        print(f"Prefect UI on {api.removesuffix('/api')} until this command ends", flush=True)
        yield api


@stoppable
def run_pipeline(args: argparse.Namespace) -> int:
    _require_workspace()
    if args.parallel < 1:
        raise UserError(f"--parallel {args.parallel}: expected a number of stages, 1 or more")
    _validate_params(args.set)
    if not args.set and (checked := _up_to_date(args.stages)):
        print(f"nothing to do: all {checked} stage(s) are up to date (DVC's judgement, as `dvc status` gives it)")
        for line in pipeline_summary(yaml.safe_load(Path("params.yaml").read_text(encoding="utf-8"))):
            print(line)
        return 0
    env = _environment()
    home = Path(env["PREFECT_HOME"])
    result_file = home / "last-pipeline-run.json"
    result_file.unlink(missing_ok=True)
    command = [sys.executable, "-m", "flows.pipeline", "--set", json.dumps(parse_assignments(args.set))]
    command += ["--result", str(result_file), "--parallel", str(args.parallel)]
    command += ["--stages", *args.stages] if args.stages else []
    command += ["--pool", args.pool] if args.pool else []
    log = None if args.verbose else Path("logs") / time.strftime("run-%Y%m%d-%H%M%S.log", time.gmtime())
    if log:
        log.parent.mkdir(exist_ok=True)
        log.touch()  # there for whoever reads the path as soon as it is printed
        print(f"log: {log} (what DVC, Prefect, MLflow and the stages print; -v shows it here)", flush=True)
    view = PipelineConsole(home / "stage-seconds.json", live=log is not None)
    started, own_server = time.monotonic(), "PREFECT_API_URL" not in env
    with _prefect_api(env) as api:
        env["PREFECT_API_URL"] = api
        returncode, outcomes = _follow(command, env, log, view)
    result = json.loads(result_file.read_text()) if result_file.is_file() else {}
    if returncode != 0 or "error" in result:
        # the flow's own one line, else the end of its log (a traceback's last line names the exception)
        last = log.read_text(errors="replace").strip().splitlines()[-1:] if log else []
        reason = result.get("error") or f"the pipeline flow exited with {returncode}" + "".join(f": {x}" for x in last)
        raise UserError(redact(reason) + (f"; full log: {log}" if log else "; its log is above"))
    minutes, seconds = divmod(round(time.monotonic() - started), 60)
    counts = ", ".join(f"{n} {outcome}" for outcome in ("ran", "restored", "unchanged") if (n := outcomes[outcome]))
    print(
        f"pipeline done: {len(result['stages'])} stage(s) checked ({counts}) in {minutes}m {seconds:02d}s; "
        f"MLflow parent run {result['mlflow_run_id']} ({result['name']})"
    )
    if peak := result.get("peak_rss_mb"):
        stage, mb = max(peak.items(), key=lambda item: item[1])
        print(f"peak memory: {mb} MB ({stage}, the largest of {len(peak)} stage process(es) that ran)")
    for line in pipeline_summary(yaml.safe_load(Path("params.yaml").read_text(encoding="utf-8"))):
        print(line)
    for line in look_further(result, None if own_server else api):
        print(line)
    return 0


def _up_to_date(names: list[str] | None) -> int:
    """How many stages were checked when none of `names` (default: all) is stale; 0 when some is, or when a name
    is not a stage (the pipeline flow says which). No server is started for this: it takes DVC a second or two."""
    from components.runtime.dvc_stages import DvcStages

    stages = DvcStages(Path.cwd())
    try:
        every = list(stages.upstream())
        selected = [name for name in every if names is None or name in names]
        if set(names or []) - set(every) or stages.stale(selected):
            return 0
        return len(selected)
    finally:
        stages.close()


def _follow(command: list[str], env: dict[str, str], log: Path | None, view: PipelineConsole) -> tuple[int, Counter]:
    """Run the pipeline flow with its output in `log` (None: on this console) while `view` renders its progress
    events; its exit status and the count of each stage outcome."""
    read, write = os.pipe()
    with ExitStack() as stack:  # left in reverse: the flow is stopped while its events are still read
        events = stack.enter_context(os.fdopen(read, encoding="utf-8"))
        output: dict[str, Any] = (
            {"stdout": stack.enter_context(log.open("ab")), "stderr": subprocess.STDOUT} if log else {}
        )
        process = stack.enter_context(child([*command, "--events", str(write)], env=env, pass_fds=(write,), **output))
        os.close(write)  # the flow holds the only writing end now: the events end when it does
        outcomes = view.follow(events)
        return process.wait(), outcomes


def look_further(result: dict, prefect_api: str | None) -> list[str]:
    """The commands that show this run: the MLflow comparison of the models it evaluated, and its Prefect flow run
    (on `prefect_api`, else on the workspace's own server, which kept it)."""
    from components.tracking.runs import tracking_uri

    store = tracking_uri()
    # a tracking server shows its own UI; the embedded store's is `demonlab ui`
    mlflow_ui = store.rstrip("/") if store.startswith(("http://", "https://")) else None
    lines = []
    if result.get("compare_view"):  # the evaluated runs: what differs between them, and their scores
        lines.append(_open("compare the models", mlflow_ui, "demonlab ui", MLFLOW_PORT, result["compare_view"]))
        report = f"/#/experiments/{result['experiment_id']}/runs/{result['mlflow_run_id']}/artifacts/report"
        lines.append(_open("the report, with its figure", mlflow_ui, "demonlab ui", MLFLOW_PORT, report))
    prefect_ui = prefect_api.removesuffix("/api") if prefect_api else None
    path = f"/runs/flow-run/{result['flow_run_id']}"
    lines.append(_open("this run in Prefect", prefect_ui, "demonlab server", PREFECT_PORT, path))
    return lines


def _open(what: str, ui: str | None, command: str, port: int, path: str) -> str:
    return f"{what}: {ui}{path}" if ui else f"{what}: {command}, then http://127.0.0.1:{port}{path}"


def pipeline_summary(params: dict) -> list[str]:
    """The lines `demonlab run` ends with: what the data stages kept, the answers to the declared contrasts, each
    model's overall score with its 95% interval, where the report is; none for what the project's
    `params.yaml` does not have (a pipeline of other stages)."""
    lines = []
    normalized = params.get("data", {}).get("normalized")
    if normalized and (report := Path(normalized) / "report.json").is_file():
        totals = json.loads(report.read_text())["totals"]
        lines.append(
            f"DEMON normalized: {totals['normalized']} samples kept, {totals['quarantined']} quarantined, "
            f"{totals['tasks_failed']} task(s) failed, of {totals['input']} read"
        )
    folder = params.get("evaluate", {}).get("report")
    if folder and (compare := Path(folder) / "compare.json").is_file():
        from components.evaluation.contrasts import sentences
        from components.evaluation.intervals import overall_summary

        record = json.loads(compare.read_text())
        # the answers first: the declared contrasts, Holm-adjusted as one family; every other pair is in the report
        if "contrasts" in record:
            family = record["contrasts"]
            lines.append(f"contrasts ({family['family']}; {family['adjustment']}):")
            lines += [f"  {line}" for line in sentences(family, figures="parity")]
        lines += overall_summary(record)
        lines.append(f"report: {compare.with_name('compare.md').resolve()}")
        lines.append(f"what VPG-C does with more training: {RESULTS} (the small experiment: no detectable effect)")
    return lines


def _foreground(command: list[str], env: dict[str, str]) -> int:
    """Run `command` to its end; a stop signal (`stoppable`) stops its whole tree first."""
    with child(command, env=env) as process:
        return process.wait()


@stoppable
def _sweep(args: argparse.Namespace) -> int:
    from components.runtime.sweep import run_sweep

    return run_sweep(args)


@stoppable
def run_doctor(args: argparse.Namespace) -> int:
    _require_workspace()
    env = _environment()
    with _prefect_api(env) as api:
        env["PREFECT_API_URL"] = api
        return _foreground([sys.executable, "-m", "flows.tracking"], env)


@stoppable
def run_server(args: argparse.Namespace) -> int:
    from components.runtime.servers import listen_url, prefect_server_command, prefect_ui_env, seed_prefect_database

    env = prefect_ui_env(_environment(), args.host, args.port)
    check_exposure(
        args.host,
        auth_configured=bool(env.get("PREFECT_SERVER_API_AUTH_STRING")),
        insecure=args.insecure,
        service="the Prefect server (it starts, cancels and deletes flow runs and deployments)",
        how="set PREFECT_SERVER_API_AUTH_STRING=user:password here and PREFECT_API_AUTH_STRING on every client",
    )
    Path(env["PREFECT_HOME"]).mkdir(parents=True, exist_ok=True)
    seed_prefect_database(env)
    url = listen_url(args.host, args.port)
    print(f"Prefect UI and API on {url} (PREFECT_API_URL={url}/api)", flush=True)
    return _foreground(prefect_server_command(args.port, args.host), env)


def default_worker_name(workspace: Path) -> str:
    """Host and folder, unique per clone: Prefect refuses '/' and '%' in a worker's name, so the path is hashed."""
    path = workspace.resolve()
    digest = hashlib.sha1(str(path).encode()).hexdigest()[:8]
    return f"{socket.gethostname()}:{path.name.replace('%', '-')}-{digest}"


def _worker_name(name: str) -> str:
    if not name or "/" in name or "%" in name:
        raise argparse.ArgumentTypeError(f"{name!r}: a Prefect worker's name cannot be empty or contain '/' or '%'")
    return name


@stoppable
def run_worker(args: argparse.Namespace) -> int:
    _require_workspace()
    env = _environment()
    env.setdefault("PREFECT_API_URL", f"http://127.0.0.1:{PREFECT_PORT}/api")
    env["DEMONLAB_WORKSPACE"] = str(Path.cwd())  # prefect.yaml's pull step runs flows here
    # named, and the name in its flow runs' environment, so a pipeline can tell when the worker of a stage is gone
    env["DEMONLAB_WORKER"] = args.name or default_worker_name(Path.cwd())
    check_prefect_login(env["PREFECT_API_URL"], env.get("PREFECT_API_AUTH_STRING"))
    prefect = str(Path(sys.executable).with_name("prefect"))
    steps = (
        [prefect, "work-pool", "create", args.pool, "--type", "process", "--overwrite"],
        [prefect, "--no-prompt", "deploy", "--all"],
    )
    for step in steps:
        done = subprocess.run(step, env=env, capture_output=True, text=True, preexec_fn=dies_with_us())
        if done.returncode != 0:
            raise UserError(
                redact(
                    f"`{' '.join(step[1:])}` failed against {env['PREFECT_API_URL']} (is `demonlab server` running?):"
                    f"\n{(done.stdout + done.stderr)[-2000:]}"
                )
            )
    print(f"deployments of prefect.yaml registered; worker on pool {args.pool!r} (Ctrl-C stops it)", flush=True)
    start = [prefect, "worker", "start", "--pool", args.pool, "--type", "process", "--name", env["DEMONLAB_WORKER"]]
    return _foreground(start + (["--limit", str(args.limit)] if args.limit else []), env)


@stoppable
def run_ui(args: argparse.Namespace) -> int:
    from components.runtime.servers import listen_url, mlflow_server_env
    from components.tracking.runs import tracking_uri

    check_exposure(
        args.host,
        auth_configured=args.auth,
        insecure=args.insecure,
        service="the MLflow UI (it reads and deletes every run, experiment and registered model)",
        how="add --auth (MLflow's basic-auth app; the first start needs MLFLOW_AUTH_ADMIN_PASSWORD)",
    )
    env = mlflow_server_env(_environment())
    if args.auth:  # the basic-auth app signs its CSRF tokens; for one server a fresh key per start is enough
        env.setdefault("MLFLOW_FLASK_SERVER_SECRET_KEY", secrets.token_urlsafe(32))
    store = tracking_uri()
    command = [str(Path(sys.executable).with_name("mlflow")), "ui", "--backend-store-uri", store]
    if store.startswith("sqlite:"):  # runs logged to the embedded store keep their artifacts beside it
        command += ["--default-artifact-root", Path("mlartifacts").resolve().as_uri()]
    command += ["--host", args.host, "--port", str(args.port), "--workers", "1"]
    command += ["--app-name", "basic-auth"] if args.auth else []
    print(f"MLflow UI on {listen_url(args.host, args.port)} (store: {redact(store)})", flush=True)
    return _foreground(command, env)
