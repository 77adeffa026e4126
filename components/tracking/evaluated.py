"""What an evaluation run scored, said in MLflow: the settings that define the model and the evaluation as run
params, tags linking the model's logged model, training run and registered version, and the headline scores attached
to the logged model too, so MLflow's compare view shows what differs between runs and its Models view each trained
checkpoint with its scores.

Everything comes from the bundle (`results.json`): the model as the adapter described it, including the checkpoint's
own training record (`components.vpgc.checkpoints.checkpoint_record`), the generation settings, the selection.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import mlflow

from components.tracking.models import attach_scores, model_links, trained_model
from components.tracking.runs import flatten

HEADLINE = "parity.overall"  # the score a comparison leads with: the official scorer, all categories
INTERVAL = ("parity.overall_ci.low", "parity.overall_ci.high")
SCORERS = "parity (headline), strict"
# the param namespaces `evaluation_params` writes: what a comparison may show as differing
MODEL_PARAMS = ("model.", "train.", "eval.", "view")


def evaluation_params(results: Mapping[str, Any], name: str | None) -> dict[str, str]:
    """The model (`name` in evaluate.models, else its spec), how it was trained and how it was evaluated, as
    MLflow params: one value each, so the compare view can line the runs up by them."""
    model = results.get("model", {})
    kind = model.get("kind", "")
    if kind == "vpgc" and not model.get("config", {}).get("vpgc_enabled", True):
        kind = "backbone"  # the aligned VPG alone: VPG-C off
    training = (model.get("checkpoint") or {}).get("training") or {}
    generation, selection = results.get("generation", {}), results.get("selection", {})
    limit = selection.get("limit")
    params = {
        "model.name": name or model.get("spec"),
        "model.kind": kind,
        "view": "blind" if model.get("blind") else "images",
        "eval.decoding": f"{generation.get('decoding')}, {generation.get('max_new_tokens')} new tokens",
        "eval.prompt": generation.get("prompt"),
        "eval.samples_per_task": "all" if limit in (None, [None]) else limit[0] if isinstance(limit, list) else limit,
        "eval.scorer": SCORERS,
    }
    if training:
        params |= {
            "train.experiment": Path(str(training.get("experiment"))).stem,
            "train.variant": training.get("variant") or training.get("stage"),
            "train.mix": describe_mix(training.get("mix") or {}),
            "train.steps": training.get("steps"),
            "train.lr": training.get("lr"),
            "train.seed": training.get("seed"),
        }
    return {key: str(value) for key, value in params.items()}


def describe_mix(mix: Mapping[str, Any]) -> str:
    """`SynthCaption 4 + SynthDifference 4`: samples per step by task (in name order, as the checkpoint's record
    keeps them), where a task's data comes from elsewhere `IEdit 1 (data/mini-train/normalized)`."""
    parts = []
    for task, entry in sorted(mix.items()):
        if isinstance(entry, Mapping):
            parts.append(f"{task} {entry.get('samples')}" + (f" ({entry['data']})" if entry.get("data") else ""))
        else:
            parts.append(f"{task} {entry}")
    return " + ".join(parts)


def track_evaluation(results: Mapping[str, Any], name: str | None, metrics: Mapping[str, Any] | None) -> None:
    """On the active run: `evaluation_params`, the links to the model's logged model (found by its checkpoint's
    weights sha256), and, given the bundle's `metrics` (a merged bundle: one model's whole evaluation in one view),
    its headline scores attached to that logged model, measured on `DEMON <view>`."""
    params = evaluation_params(results, name)
    mlflow.log_params(params)
    checkpoint = results.get("model", {}).get("checkpoint")
    if not checkpoint:
        return  # a model from a config, Hugging Face or a server: nothing trained here to link
    model = trained_model(checkpoint["sha256"], mlflow.active_run().info.experiment_id)
    if model is None:
        return
    mlflow.set_tags(model_links(model))
    if metrics:
        scores = {key: float(value) for key, value in flatten(metrics).items()
                  if key.partition(".")[2].startswith("overall") and isinstance(value, int | float)}  # fmt: skip
        data = f"{results.get('data', {}).get('samples_sha256')}|{params['view']}|{params['eval.samples_per_task']}"
        attach_scores(model.model_id, scores, f"DEMON {params['view']}", hashlib.sha256(data.encode()).hexdigest())
