"""MLflow runs for stages, and the one metric writer (DVC metrics file + MLflow, never one without the other).

Defaults are the embedded ones: a SQLite store and an artifact folder under the workspace. Production points
`MLFLOW_TRACKING_URI` at a tracking server (PostgreSQL + object store) and nothing here changes.
A pipeline sets `DEMONLAB_PARENT_RUN_ID` so every stage run becomes a child of the pipeline's run.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import mlflow

from components import atomic
from components.errors import UserError
from components.tracking.provenance import dvc_run_tags

EXPERIMENT = "demonlab"
PARENT_RUN_ENV = "DEMONLAB_PARENT_RUN_ID"


def workspace() -> Path:
    """The project workspace: `DEMONLAB_WORKSPACE`, else the current folder (DVC runs stages at the repo root)."""
    return Path(os.environ.get("DEMONLAB_WORKSPACE", ".")).resolve()


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
        raise UserError(f"MLflow tracking store {uri} is not usable: {error}") from error
    mlflow.set_experiment(experiment_id=experiment_id)
    return experiment_id


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


@contextmanager
def stage_run(stage: str, params: Mapping, tags: Mapping[str, str] | None = None) -> Iterator[mlflow.ActiveRun]:
    """An MLflow run for one stage: params logged, provenance tagged, nested under the pipeline run if any."""
    configure()
    parent = os.environ.get(PARENT_RUN_ENV)
    all_tags = {"demonlab.stage": stage, **dvc_run_tags(workspace()), **(tags or {})}
    if commit := git_commit():
        all_tags["git.commit"] = commit
    if parent:
        all_tags["mlflow.parentRunId"] = parent
    with mlflow.start_run(run_name=stage, tags=all_tags) as run:
        mlflow.log_params({k: str(v)[:6000] for k, v in flatten(params).items()})
        yield run


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
