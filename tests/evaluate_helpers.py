"""Shared pieces of the evaluation tests: a tiny VPG-C experiment file, a small normalized mini-DEMON, and a
scripted adapter (a real `ModelAdapter` whose answers and memory limit the test decides)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
import yaml
from torch import nn
from vpgc_tiny import tiny_dict

from components.demon.mini import build_mini_demon
from components.demon.normalize import normalize
from components.evaluation.adapters import Encoded, Loaded, ModelAdapter, Request, open_rgb
from components.vpgc.generation import GenerationSettings


def tiny_experiment(folder: Path, **eval_settings) -> Path:
    """An experiment file with the tiny random VPG-C model (trained-looking VPG-C) and an `eval:` section."""
    path = folder / "tiny-eval.yaml"
    document = {"model": tiny_dict(), "eval": {"batch_size": 4, "max_new_tokens": 6, **eval_settings}}
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


def mini_normalized(folder: Path, per_task: int = 1, seed: int = 0) -> Path:
    """A normalized mini-DEMON (all 29 Core tasks, `per_task` samples each) under `folder`."""
    raw, out = folder / "raw", folder / "normalized"
    build_mini_demon(raw, per_task=per_task, seed=seed, progress=False)
    normalize(raw, out, progress=False)
    return out


class ScriptedAdapter(ModelAdapter):
    """Answers `answer(uid)`; raises torch.OutOfMemoryError for batches above `max_batch` and for `oom_uids` even
    alone, as a device running out of memory would. Records every batch it was given."""

    kind = "scripted"
    default_max_new_tokens = 4

    def __init__(self, answer=lambda uid: f"answer of {uid}", max_batch: int = 1000, oom_uids: Sequence[str] = ()):
        super().__init__("scripted", {"version": 1}, nn.Linear(1, 1))
        self.answer, self.max_batch, self.oom_uids = answer, max_batch, set(oom_uids)
        self.batches: list[list[str]] = []

    def encode(self, request: Request) -> Encoded:
        text = "".join(p["text"] for p in request.parts if p["type"] == "text")
        return Encoded(request, len(text.split()) + 10 * len(request.image_paths()))

    def load(self, encoded: Encoded) -> Loaded:
        return Loaded(encoded, [open_rgb(path) for path in encoded.request.image_paths()])

    def generate(self, batch: Sequence[Loaded], settings: GenerationSettings) -> list[str]:
        uids = [item.encoded.request.uid for item in batch]
        self.batches.append(uids)
        if len(batch) > self.max_batch or self.oom_uids & set(uids):
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return [self.answer(uid) for uid in uids]
