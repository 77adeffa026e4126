"""MLflow runs for stages, and the one metric writer (DVC metrics file + MLflow, never one without the other).

Defaults are the embedded ones: a SQLite store and an artifact folder under the workspace. Production points
`MLFLOW_TRACKING_URI` at a tracking server (PostgreSQL + object store) and nothing here changes.
A pipeline sets `DEMONLAB_PARENT_RUN_ID` so every stage run becomes a child of the pipeline's run.
A server with MLflow's basic-auth app takes the login MLflow itself reads (`MLFLOW_TRACKING_USERNAME` and
`MLFLOW_TRACKING_PASSWORD`, or `~/.mlflow/credentials`); a rejected login or a denied write stops the stage with
one line naming the server and what to set (`tracking_errors`).
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import operator
import os
import socket
import subprocess
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import mlflow
import requests
import yaml
from mlflow.utils.credentials import read_mlflow_creds

from components import atomic
from components.errors import UserError
from components.security import credential_error, holds_secret, redact
from components.tracking.provenance import dvc_run_tags

EXPERIMENT = "demonlab"
PARENT_RUN_ENV = "DEMONLAB_PARENT_RUN_ID"
MLFLOW_LOGIN = "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD (or ~/.mlflow/credentials)"
# A training variant's model is `vpgc-<variant>` in evaluate.models and the report (flows/train.py)
ITEM_NAMES = {"train": "vpgc-{}"}
# Where a run runs, so a later run can tell one left RUNNING by a killed process (components.tracking.reconcile)
WORKSPACE_TAG = "demonlab.workspace"
PROCESS_TAG = "demonlab.process"


def workspace() -> Path:
    """The project workspace: `DEMONLAB_WORKSPACE`, else the current folder (DVC runs stages at the repo root)."""
    return Path(os.environ.get("DEMONLAB_WORKSPACE", ".")).resolve()


def workspace_key() -> str:
    """A short name for the workspace where a full path does not fit (Prefect tags and concurrency limits)."""
    return "demonlab-workspace-" + hashlib.sha256(str(workspace()).encode()).hexdigest()[:12]


def this_process() -> str:
    """`host:pid` of this process."""
    return f"{socket.gethostname()}:{os.getpid()}"


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{workspace() / 'mlflow.db'}"


def configure() -> str:
    """Point MLflow at the store and select the project's experiment; returns the experiment id."""
    uri = tracking_uri()
    mlflow.set_tracking_uri(uri)
    try:
        experiment = mlflow.get_experiment_by_name(EXPERIMENT)
        if experiment is not None:
            experiment_id = experiment.experiment_id
        else:
            # Artifacts of the embedded store live beside it; a server decides its own artifact root.
            location = (workspace() / "mlartifacts").as_uri() if uri.startswith("sqlite:") else None
            experiment_id = mlflow.create_experiment(EXPERIMENT, artifact_location=location)
    except mlflow.exceptions.MlflowException as error:
        message = f"MLflow tracking store {redact(uri)} is not usable: {redact(str(error))}"
        raise refusal(error) or UserError(message) from error
    mlflow.set_experiment(experiment_id=experiment_id)
    return experiment_id


def refusal(error: Exception) -> UserError | None:
    """The one-line error for a login the tracking server rejected (401) or a write it denied (403), else None.

    MLflow's REST calls raise MlflowException; its artifact uploads and downloads through the server raise
    requests' HTTPError, which only counts when it came from the tracking server."""
    uri = tracking_uri()
    if isinstance(error, mlflow.exceptions.MlflowException):
        status = error.get_http_status_code()
    elif isinstance(error, requests.HTTPError) and error.response is not None and error.response.url.startswith(uri):
        status = error.response.status_code
    else:
        return None
    user = read_mlflow_creds().username
    if status == 401:
        tried = f"user {user!r} or its password was not accepted" if user else "none is set"
        return credential_error(f"MLflow server {uri}", 401, f"set {MLFLOW_LOGIN} ({tried})")
    if status == 403:
        return credential_error(
            f"MLflow server {uri}",
            403,
            f"user {user!r} may not do this: ask the server's admin for EDIT on experiment {EXPERIMENT!r} (and "
            f"MANAGE on the registered models a stage registers), or set {MLFLOW_LOGIN} to a user who has it",
        )
    return None


@contextmanager
def tracking_errors() -> Iterator[None]:
    """Inside this block, a login or write the tracking server refuses raises `refusal`'s UserError (exit 2, not
    retried: the same credentials fail the same way again); other errors pass through unchanged."""
    try:
        yield
    except (mlflow.exceptions.MlflowException, requests.HTTPError) as error:
        if (user_error := refusal(error)) is None:
            raise
        raise user_error from None


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=workspace())
    except OSError:
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def flatten(params: Mapping, prefix: str = "") -> dict[str, object]:
    """Nested mapping -> `a.b.c` keys, as MLflow params and metrics want them."""
    flat: dict[str, object] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def loggable_params(params: Mapping) -> dict[str, str]:
    """Nested `params` flattened for `mlflow.log_params`, refusing any value that carries a credential: parameters
    are versioned (params.yaml, experiment files, dvc.lock) and shown to every reader of the tracking server."""
    flat = {key: str(value) for key, value in flatten(params).items()}
    if leaking := sorted(key for key, value in flat.items() if holds_secret(value)):
        raise UserError(
            f"parameter(s) {', '.join(leaking)} carry a credential; parameters are versioned and tracked, so give "
            "credentials through the environment (docs/orchestration.md, Secrets) and leave them out of the value"
        )
    return {key: value[:6000] for key, value in flat.items()}


@contextmanager
def stage_run(stage: str, params: Mapping, tags: Mapping[str, str] | None = None) -> Iterator[mlflow.ActiveRun]:
    """An MLflow run for one stage: params logged, provenance tagged, nested under the pipeline run if any."""
    logged = loggable_params(params)
    with tracking_errors():
        configure()
        parent = os.environ.get(PARENT_RUN_ENV)
        all_tags = {"demonlab.stage": stage, **dvc_run_tags(workspace()), **(tags or {})}
        if commit := git_commit():
            all_tags["git.commit"] = commit
        if parent:
            all_tags["mlflow.parentRunId"] = parent
        with start_run(run_name=run_name(stage), tags=all_tags) as run:
            mlflow.log_params(logged)
            yield run


@contextmanager
def start_run(run_name: str, tags: Mapping[str, str]) -> Iterator[mlflow.ActiveRun]:
    """`mlflow.start_run`, tagged with where it runs, ending KILLED (not FAILED) when stopped from outside: Ctrl-C,
    a stop signal (Prefect raises its own BaseException for SIGTERM), `sys.exit`."""
    where = {WORKSPACE_TAG: str(workspace()), PROCESS_TAG: this_process()}
    with mlflow.start_run(run_name=run_name, tags={**tags, **where}) as run:
        try:
            yield run
        except BaseException as error:
            if not isinstance(error, Exception):
                mlflow.end_run("KILLED")
            raise


def run_name(stage: str) -> str:
    """What a stage run is, for MLflow and Prefect: the DVC stage and its item's values (`evaluate vpgc-captions
    images demon`, `train vpgc-synthetic`, `score parity`); `stage` itself outside DVC."""
    name, _, item = os.environ.get("DVC_STAGE", stage).partition("@")
    if not item:
        return name
    values = _matrix_item(name, item) or [ITEM_NAMES.get(name, "{}").format(item)]
    return " ".join([name, *values])


def _matrix_item(name: str, item: str) -> list[str] | None:
    """The values of a DVC matrix stage's item, which DVC names by joining them with `-` (`vpgc-captions-images-
    demon`), found among the dimensions of dvc.yaml resolved against params.yaml; None for a `foreach` item."""
    try:
        stages = yaml.safe_load((workspace() / "dvc.yaml").read_text(encoding="utf-8"))["stages"]
        matrix = stages.get(name, {}).get("matrix")
        if not matrix:
            return None
        params = yaml.safe_load((workspace() / "params.yaml").read_text(encoding="utf-8"))
        dimensions = []
        for values in matrix.values():
            if isinstance(values, str) and values.startswith("${") and values.endswith("}"):  # `${evaluate.models}`
                values = functools.reduce(operator.getitem, values[2:-1].split("."), params)
            dimensions.append([str(v) for v in values])  # a mapping's keys, or a list's items
    except (OSError, KeyError, TypeError):  # a name is not worth failing a stage for: DVC's item will do
        return None
    return next((list(c) for c in itertools.product(*dimensions) if "-".join(c) == item), None)


def pipeline_run_name(experiment: str) -> str:
    """`pipeline <experiment> <git short sha>`: which configuration of which code a pipeline run reproduced."""
    return " ".join(filter(None, ["pipeline", experiment, (git_commit() or "")[:7]]))


def write_metrics(path: Path, metrics: Mapping, step: int | None = None) -> None:
    """Write `metrics` to the stage's DVC metrics file and log the same numbers to the active MLflow run.

    Nested keys are flattened for MLflow (`totals.normalized`); the JSON keeps the nesting, so `dvc metrics
    show` and the MLflow compare view show the same values under the same dotted names.
    """
    numbers = {
        k: float(v) for k, v in flatten(metrics).items() if isinstance(v, int | float) and not isinstance(v, bool)
    }
    if mlflow.active_run() is None:
        raise RuntimeError("write_metrics needs an active stage run (components.tracking.runs.stage_run)")
    atomic.write_json(Path(path), metrics)
    mlflow.log_metrics(numbers, step=step)
