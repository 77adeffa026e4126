"""Baselines that never look at an image: the floors every DEMON score should be read against.

- `chance`: multiple choice, a uniformly random option (image options by their `Image X` label); open-ended, the
  reference response of another, randomly chosen sample of the same task, which measures how much ROUGE-L a task
  gives for merely sounding like its answers.
- `context`: a text-only reader. Open-ended, it copies the context: the text after its last `Caption#k:`-style
  label that has any (the last caption of a story, the last step of a plan), else the whole context without its
  placeholders. Multiple choice, the option sharing the most words with the context (its choice list left out),
  ties broken at random, which measures how far the words of the question give the answer away.

Deterministic for a seed (one `random.Random` per task, so a task's baseline does not depend on the others);
written in the official layout `<out>/<Task>/pred.json`.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import pandas as pd

from components import atomic

Baseline = Literal["chance", "context"]
BASELINES: tuple[Baseline, ...] = ("chance", "context")
IMAGE_LABEL = re.compile(r"\s*(image\s+[a-z])\b", re.IGNORECASE)
PLACEHOLDER = re.compile(r"\{(?:image|table)#\d+\}")
LABEL = re.compile(r"\S+#\d+:")  # Caption#3:, Step#2:
CHOICE_LIST = re.compile(r"Choice List:\s*\[.*?\]", re.DOTALL)
WORD = re.compile(r"\w+")

Respond = Callable[[random.Random, pd.Series, list[str]], str]


def _option(row: pd.Series, option: str) -> str:
    """An option as a prediction: image options by their `Image X` label, text options verbatim."""
    label = IMAGE_LABEL.match(option) if row["question_type"] == "image-choice" else None
    return label.group(1) if label else option


def chance_response(rng: random.Random, row: pd.Series, task_responses: list[str]) -> str:
    if row["question_type"] == "open-ended":
        others = [r for i, r in enumerate(task_responses) if i != row["position"]] or task_responses
        return rng.choice(others)
    return _option(row, rng.choice(list(row["choice_list"])))


def context_response(rng: random.Random, row: pd.Series, task_responses: list[str]) -> str:
    text = PLACEHOLDER.sub(" ", row["context"])
    if row["question_type"] == "open-ended":
        segments = [s.strip() for s in LABEL.split(text)]
        return next((s for s in reversed(segments) if WORD.search(s)), "")
    words = set(WORD.findall(CHOICE_LIST.sub(" ", text).lower()))
    options = list(row["choice_list"])
    overlap = [len(words.intersection(WORD.findall(o.lower()))) for o in options]
    return _option(row, rng.choice([o for o, n in zip(options, overlap, strict=True) if n == max(overlap)]))


RESPONDERS: dict[Baseline, Respond] = {"chance": chance_response, "context": context_response}


def write_baseline_predictions(
    samples: pd.DataFrame, out: Path, kind: Baseline = "chance", seed: int = 0
) -> dict[str, int]:
    """Write `<out>/<Task>/pred.json` of baseline `kind` for every task in `samples`; returns {task: n}."""
    respond = RESPONDERS[kind]
    counts: dict[str, int] = {}
    for task, group in samples.groupby("task", sort=True):
        rng = random.Random(f"{seed}/{task}")
        group = group.sort_values("sample_id").assign(position=range(len(group)))
        responses = group["response"].tolist()
        records = [
            {
                "sample_id": int(row["sample_id"]),
                "pred_response": respond(rng, row, responses),
                "gt_response": row["response"],
            }
            for _, row in group.iterrows()
        ]
        atomic.write_json(Path(out) / task / "pred.json", records)
        counts[task] = len(records)
    return counts


def write_chance_predictions(samples: pd.DataFrame, out: Path, seed: int = 0) -> dict[str, int]:
    """The chance baseline (the `baseline` stage's predictions)."""
    return write_baseline_predictions(samples, out, "chance", seed)
