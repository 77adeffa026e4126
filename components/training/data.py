"""Training data: a folder in the unified sample schema -> a deterministic, resumable stream of global batches.

The rows come from `components.demon.normalize.load_samples` (the synthetic-data stage writes `SynthDifference`
and `SynthCaption` rows; any task in the folder can be mixed in); a task whose mix entry names its own folder
(`{samples: 64, data: DIR}`, the paper's separate caption stream) is read from there. The user turn is
`schema.sample_parts(row)` and the target is `row["response"]`, exactly as evaluation builds the prompt.

Everything a step sees is a pure function of `(seed, step)`:
- each task is walked epoch by epoch in a seeded permutation; task `t` contributes `mix[t]` consecutive rows of
  that walk to every global step, so step `s` reads positions `s*mix[t] ... (s+1)*mix[t]-1`;
- the mixed global batch is shuffled (seeded by the step) so micro-batches mix the tasks;
- each sample gets its own crop seed, so its random resized crop does not depend on which rank draws it.
The data position in a checkpoint is therefore just the step: resuming, or changing the number of ranks, reads
exactly the samples an uninterrupted run would have read.
"""

from __future__ import annotations

import random
import zlib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from components.demon.normalize import load_samples
from components.demon.schema import placeholder_indices, sample_parts
from components.errors import UserError
from components.training.config import mix_counts, mix_folders
from components.vpgc.prompts import Conversation, Turn


@dataclass(frozen=True)
class Example:
    """One training (or held-out) sample, ready for `model.layouts` and `model.load_pixels`."""

    uid: str
    task: str
    conversation: Conversation
    target: str
    images: list[str]  # absolute: each task's rows may come from another folder (joining a root keeps them)
    crop_seed: int | None  # None: the evaluation transform (held-out loss)


def _task_key(task: str) -> int:
    return zlib.crc32(task.encode())  # stable across processes, unlike hash()


class TrainData:
    """The rows of `folder`, split into a fixed held-out set (`heldout` per task) and the training stream."""

    def __init__(self, folder: Path, mix: dict[str, Any], heldout: int, seed: int) -> None:
        self.folder = Path(folder)
        self.mix = mix_counts(mix)
        self.seed = seed
        folders = {task: Path(mix_folders(mix).get(task, self.folder)) for task in self.mix}
        loaded = {path: _load(path) for path in set(folders.values())}
        self.image_root = self.folder.resolve()  # callers join example images to it; they are absolute already
        for path, (samples, _) in loaded.items():
            tasks = [task for task, source in folders.items() if source == path]
            available = sorted(samples["task"].unique())
            absent = [task for task in tasks if task not in available]
            if absent:
                raise UserError(
                    f"{path}: the mix names task(s) {absent} that the data does not have (it has {available}); fix "
                    "`mix` in the experiment's train section or point --data (or the task's `data:`) at its output"
                )
        self.train_rows: dict[str, pd.DataFrame] = {}
        heldout_frames = []
        for task in self.mix:
            samples, root = loaded[folders[task]]
            rows = samples[samples["task"] == task].sort_values("uid").reset_index(drop=True)
            _check_rows(rows, folders[task])
            rows["images"] = [[str(root / image) for image in images] for images in rows["images"]]
            order = np.random.default_rng([seed, _task_key(task)]).permutation(len(rows))
            if len(rows) <= heldout:
                raise UserError(
                    f"{folders[task]}: task {task} has {len(rows)} samples, not more than heldout={heldout}; "
                    "generate more data or lower `train.heldout`"
                )
            heldout_frames.append(rows.iloc[order[:heldout]])
            self.train_rows[task] = rows.iloc[np.sort(order[heldout:])].reset_index(drop=True)
        self.heldout_rows = pd.concat(heldout_frames).sort_values("uid").reset_index(drop=True)

    @property
    def global_batch_size(self) -> int:
        return sum(self.mix.values())

    def sizes(self) -> dict[str, int]:
        return {task: len(rows) for task, rows in self.train_rows.items()} | {"heldout": len(self.heldout_rows)}

    def global_batch(self, step: int) -> list[Example]:
        """The samples of global step `step` (0-based), mixed and shuffled; the same on every rank."""
        picked: list[tuple[str, int]] = []
        for task, count in self.mix.items():
            size = len(self.train_rows[task])
            for position in range(step * count, (step + 1) * count):
                epoch, offset = divmod(position, size)
                picked.append((task, int(_permutation(self.seed, task, epoch, size)[offset])))
        shuffle = np.random.default_rng([self.seed, step, 1]).permutation(len(picked))
        crop_seeds = np.random.default_rng([self.seed, step, 2]).integers(0, 2**62, size=len(picked))
        return [
            _example(self.train_rows[picked[i][0]].iloc[picked[i][1]], int(seed))
            for i, seed in zip(shuffle, crop_seeds, strict=True)
        ]

    def heldout_examples(self) -> list[Example]:
        return [_example(row, None) for _, row in self.heldout_rows.iterrows()]


def _load(folder: Path) -> tuple[pd.DataFrame, Path]:
    samples, root = load_samples(folder)
    if samples.empty:
        raise UserError(f"{folder}/samples.parquet: no samples; run the synthetic-data stage first")
    return samples, root


@lru_cache(maxsize=64)
def _permutation(seed: int, task: str, epoch: int, size: int) -> np.ndarray:
    return np.random.default_rng([seed, _task_key(task), epoch]).permutation(size)


def _example(row: pd.Series, crop_seed: int | None) -> Example:
    return Example(
        uid=row["uid"],
        task=row["task"],
        conversation=[Turn(user=sample_parts(row))],
        target=str(row["response"]),
        images=list(row["images"]),
        crop_seed=crop_seed,
    )


def _check_rows(rows: pd.DataFrame, folder: Path) -> None:
    """Every row must have a non-empty response and placeholders that index its images."""
    for _, row in rows.iterrows():
        images = list(row["images"])
        indices = placeholder_indices(f"{row['instruction']}{row['context']}")
        reason = None
        if not isinstance(row["response"], str) or not row["response"].strip():
            reason = "empty response"
        elif any(not 1 <= k <= len(images) for k in indices):
            reason = f"its text references images {indices} but it has {len(images)}"
        if reason:
            raise UserError(
                f"{folder}/samples.parquet: sample {row['uid']}: {reason}; fix or drop it in the stage that "
                "wrote this folder"
            )


def crop_rng(example: Example) -> random.Random | None:
    """The random-resized-crop generator of one sample (None = evaluation transform)."""
    return None if example.crop_seed is None else random.Random(example.crop_seed)
