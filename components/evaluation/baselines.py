"""Chance-level predictions: the floor every DEMON score should be read against.

Multiple choice: a uniformly random option (image options by their `Image X` label). Open-ended: the reference
response of another, randomly chosen sample of the same task, which measures how much ROUGE-L a task gives for
merely sounding like its answers. Deterministic for a seed; written in the official layout `<out>/<Task>/pred.json`.
"""

from __future__ import annotations

import random
import re
from pathlib import Path

import pandas as pd

from components import atomic

IMAGE_LABEL = re.compile(r"\s*(image\s+[a-z])\b", re.IGNORECASE)


def chance_response(rng: random.Random, row: pd.Series, task_responses: list[str]) -> str:
    if row["question_type"] == "open-ended":
        others = [r for i, r in enumerate(task_responses) if i != row["position"]] or task_responses
        return rng.choice(others)
    option = rng.choice(list(row["choice_list"]))
    label = IMAGE_LABEL.match(option) if row["question_type"] == "image-choice" else None
    return label.group(1) if label else option


def write_chance_predictions(samples: pd.DataFrame, out: Path, seed: int = 0) -> dict[str, int]:
    """Write `<out>/<Task>/pred.json` for every task in `samples`; returns {task: n predictions}."""
    counts: dict[str, int] = {}
    for task, group in samples.groupby("task", sort=True):
        rng = random.Random(f"{seed}/{task}")  # per task, so a task's baseline does not depend on the others
        group = group.sort_values("sample_id").assign(position=range(len(group)))
        responses = group["response"].tolist()
        records = [
            {
                "sample_id": int(row["sample_id"]),
                "pred_response": chance_response(rng, row, responses),
                "gt_response": row["response"],
            }
            for _, row in group.iterrows()
        ]
        atomic.write_json(Path(out) / task / "pred.json", records)
        counts[task] = len(records)
    return counts
