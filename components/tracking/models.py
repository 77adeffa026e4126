"""Trained checkpoints as MLflow models: log + register one, and download one back as a checkpoint folder.

A logged model is an MLflow `pyfunc` whose only artifact is our checkpoint folder: `weights.safetensors` (the
trained components: VPG-C, plus the VPG when our align stage trained it) and `config.yaml` (the resolved model
config naming the frozen backbones by path/package). The backbones' weights are never logged: they are public
files, loaded from where the config names them. `pyfunc.load_model(uri).predict(frame)` answers questions with
`{image#k}` placeholders (columns `text`, `images`); evaluation uses `download_checkpoint` and
`VPGCModel.from_checkpoint` instead.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import mlflow
import mlflow.pyfunc
import requests
from mlflow.tracking import MlflowClient

from components.errors import UserError
from components.security import redact
from components.tracking.runs import refusal
from components.vpgc.checkpoints import CONFIG_FILE, WEIGHTS_FILE

ARTIFACT = "checkpoint"


class CheckpointModel(mlflow.pyfunc.PythonModel):
    """Generation with a demonlab checkpoint: rows `{text: "... {image#1} ...", images: [path, ...]}` -> replies."""

    def load_context(self, context: Any) -> None:
        from components.vpgc.model import VPGCModel

        self.model = VPGCModel.from_checkpoint(context.artifacts[ARTIFACT])

    # No type hints here: MLflow would turn them into an input schema and reject DataFrames.
    def predict(self, context, model_input, params=None):  # noqa: ANN001, ANN201
        from components.demon.schema import to_parts
        from components.vpgc.prompts import Turn

        rows = model_input.to_dict("records")
        return self.model.generate([[Turn(to_parts(row["text"], list(row["images"])))] for row in rows])


def log_checkpoint_model(checkpoint_dir: Path, name: str, alias: str) -> str:
    """Log `checkpoint_dir` (weights.safetensors + config.yaml) as a model of the active run, register it as
    `name` and point `alias` at the new version; returns `models:/name@alias`."""
    checkpoint_dir = Path(checkpoint_dir)
    for file in (WEIGHTS_FILE, CONFIG_FILE):
        if not (checkpoint_dir / file).is_file():
            raise UserError(f"{checkpoint_dir}: no {file}; only a folder written by training can be logged")
    if mlflow.active_run() is None:
        raise RuntimeError("log_checkpoint_model needs an active MLflow run (components.tracking.runs.stage_run)")
    import torch

    info = mlflow.pyfunc.log_model(
        name="model",
        python_model=CheckpointModel(),
        artifacts={ARTIFACT: str(checkpoint_dir)},
        registered_model_name=name,
        pip_requirements=[f"torch=={torch.__version__.split('+')[0]}", "transformers", "safetensors", "demonlab"],
    )
    MlflowClient().set_registered_model_alias(name, alias, str(info.registered_model_version))
    return f"models:/{name}@{alias}"


def download_checkpoint(uri: str, dst: Path | None = None) -> Path:
    """A local folder with weights.safetensors + config.yaml for a `models:/name@alias` (or `/version`) or
    `runs:/<run id>/<path>` URI; downloads under `dst` (default: a new temporary folder)."""
    target = Path(dst) if dst is not None else Path(tempfile.mkdtemp(prefix="demonlab-model-"))
    try:
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(target)))
    except (mlflow.exceptions.MlflowException, requests.HTTPError) as error:
        raise refusal(error) or UserError(
            f"{uri}: cannot download it ({redact(str(error).splitlines()[0])}); check the model name and alias "
            "(`mlflow` UI, Models) or the run id, and that MLFLOW_TRACKING_URI points at the right store"
        ) from None
    found = sorted({p.parent for p in local.rglob(WEIGHTS_FILE) if (p.parent / CONFIG_FILE).is_file()})
    if len(found) != 1:
        raise UserError(
            f"{uri}: expected one checkpoint folder ({WEIGHTS_FILE} + {CONFIG_FILE}) in it, found {len(found)}"
        )
    return found[0]
