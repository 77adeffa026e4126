"""Trained checkpoints as MLflow models: log + register one, and download one back as a checkpoint folder.

A logged model is an MLflow `pyfunc` whose only artifact is our checkpoint folder: `weights.safetensors` (the
trained components: VPG-C, plus the VPG when our align stage trained it) and `config.yaml` (the resolved model
config naming the frozen backbones by path/package). The backbones' weights are never logged: they are public
files, loaded from where the config names them. `pyfunc.load_model(uri).predict(frame)` answers questions with
`{image#k}` placeholders (columns `text`, `images`); evaluation uses `download_checkpoint` and
`VPGCModel.from_checkpoint` instead.

Every trained checkpoint is logged (MLflow 3's LoggedModel, with the checkpoint's training record as its params),
one is also registered. The logged model is tagged with the sha256 of the checkpoint's weights, which an evaluation
finds in its bundle (`checkpoint_record`): so the evaluation runs link their model, and their scores are attached
to it (`attach_scores`), without a run id in any file DVC tracks.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import mlflow
import mlflow.pyfunc
import requests
from mlflow.entities import Dataset, LoggedModel
from mlflow.tracking import MlflowClient

from components.errors import UserError
from components.security import redact
from components.tracking.runs import flatten, refusal
from components.vpgc.checkpoints import CONFIG_FILE, WEIGHTS_FILE, checkpoint_record

ARTIFACT = "checkpoint"
CHECKPOINT_TAG = "demonlab.checkpoint_sha256"  # on the logged model and the training run
REGISTERED_TAG = "demonlab.registered_model"  # `name/version`, on the logged model of the registered checkpoint


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


def log_checkpoint_model(
    checkpoint_dir: Path, name: str, register_as: str | None = None, alias: str | None = None
) -> str:
    """Log `checkpoint_dir` (weights.safetensors + config.yaml) as the logged model `name` of the active run, its
    training record as the model's params; with `register_as`, register it under that name and point `alias` at the
    new version. Returns `models:/register_as@alias`, else `models:/<model id>`."""
    checkpoint_dir = Path(checkpoint_dir)
    for file in (WEIGHTS_FILE, CONFIG_FILE):
        if not (checkpoint_dir / file).is_file():
            raise UserError(f"{checkpoint_dir}: no {file}; only a folder written by training can be logged")
    if mlflow.active_run() is None:
        raise RuntimeError("log_checkpoint_model needs an active MLflow run (components.tracking.runs.stage_run)")
    import torch

    record = checkpoint_record(checkpoint_dir)
    info = mlflow.pyfunc.log_model(
        name=name,
        python_model=CheckpointModel(),
        artifacts={ARTIFACT: str(checkpoint_dir)},
        registered_model_name=register_as,
        pip_requirements=[f"torch=={torch.__version__.split('+')[0]}", "transformers", "safetensors", "demonlab"],
        params={f"train.{k}": str(v) for k, v in flatten(record["training"] or {}).items()},
        tags={CHECKPOINT_TAG: record["sha256"]},
        model_type="vpgc",
    )
    mlflow.set_tag(CHECKPOINT_TAG, record["sha256"])
    if not register_as:
        return f"models:/{info.model_id}"
    version = str(info.registered_model_version)
    client = MlflowClient()
    client.set_registered_model_alias(register_as, alias, version)
    mlflow.set_logged_model_tags(info.model_id, {REGISTERED_TAG: f"{register_as}/{version}"})
    return f"models:/{register_as}@{alias}"


def trained_model(sha256: str, experiment_id: str) -> LoggedModel | None:
    """The newest logged model of the checkpoint whose weights have `sha256`; None when no training logged it
    here (a checkpoint from elsewhere, a store that was reset)."""
    found = mlflow.search_logged_models(
        experiment_ids=[experiment_id],
        filter_string=f"tags.`{CHECKPOINT_TAG}` = '{sha256}'",
        order_by=[{"field_name": "creation_timestamp", "ascending": False}],
        max_results=1,
        output_format="list",
    )
    return found[0] if found else None


def model_links(model: LoggedModel) -> dict[str, str]:
    """Tags that link a run to the logged model it evaluated, that model's training run and its registered version."""
    links = {"demonlab.model_id": model.model_id, "demonlab.training_run_id": model.source_run_id or ""}
    if registered := model.tags.get(REGISTERED_TAG):
        links[REGISTERED_TAG] = registered
    return links


def attach_scores(model_id: str, scores: dict[str, float], dataset: str, digest: str) -> None:
    """Log `scores` from the active run to the logged model `model_id` as well, measured on `dataset` (its name in
    MLflow's Models view, e.g. `DEMON images` beside `DEMON blind`: the same keys, two evaluations of one model)."""
    source = json.dumps({"name": dataset})
    measured_on = Dataset(name=dataset, digest=digest[:36], source_type="code", source=source)
    mlflow.log_metrics(scores, model_id=model_id, dataset=measured_on)


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
