"""The DEMON task registry: 31 tasks (29 Core, 2 Full-only), read from the packaged `tasks.json`.

`tasks.json` is generated from the shared reference by `scripts/build_task_table.py`; it carries each task's
category, scenario, question type, metric, expected counts, folder aliases seen in the wild and the official
instruction templates.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from typing import Literal

from components.errors import UserError

Split = Literal["core", "full"]
QuestionType = Literal["open-ended", "multi-choice", "image-choice"]

# Google Drive folder of the official release (reference/paper.md, DEMON).
OFFICIAL_GDRIVE_FOLDER_ID = "1x3O7brcJi4XJS2c6LLUpG5Xx0mg1WkRG"


@dataclass(frozen=True)
class Task:
    folder: str  # canonical folder name, e.g. "MultiModalQA"
    name: str  # the paper's task name, e.g. "Complex Multimodal QA"
    category: str
    scenario: str
    question_type: Literal["open-ended", "multi-choice"]  # as the official metadata says
    metric: Literal["rouge_l", "tfidf_accuracy", "image_option_accuracy"]
    dataset_name: str  # `metadata.dataset` in the official JSON
    aliases: tuple[str, ...]
    counts: dict[str, int]
    templates: dict[str, tuple[str, ...]] = field(repr=False)
    readme_example: dict[str, dict] = field(repr=False)
    notes: str = ""

    @property
    def image_options(self) -> bool:
        """Options are images (`Image A`..`Image D`): scored by the 7-character rule."""
        return self.metric == "image_option_accuracy"

    @property
    def normalized_question_type(self) -> QuestionType:
        """The schema's question type: image-option tasks are `image-choice`."""
        return "image-choice" if self.image_options else self.question_type

    def in_split(self, split: Split) -> bool:
        return self.counts[split] > 0


@cache
def all_tasks() -> tuple[Task, ...]:
    raw = json.loads(resources.files(__package__).joinpath("tasks.json").read_text(encoding="utf-8"))
    return tuple(
        Task(
            folder=r["folder"],
            name=r["name"],
            category=r["category"],
            scenario=r["scenario"],
            question_type=r["question_type"],
            metric=r["metric"],
            dataset_name=r["dataset_name"],
            aliases=tuple(r["aliases"]),
            counts=r["counts"],
            templates={k: tuple(v) for k, v in r["templates"].items()},
            readme_example=r["readme_example"],
            notes=r["notes"],
        )
        for r in raw
    )


def tasks(split: Split = "core") -> tuple[Task, ...]:
    """The tasks that have data in `split` (29 for core, 31 for full)."""
    return tuple(t for t in all_tasks() if t.in_split(split))


@cache
def _by_lower_name() -> dict[str, Task]:
    index: dict[str, Task] = {}
    for task in all_tasks():
        for name in (task.folder, task.dataset_name, *task.aliases):
            index[name.lower()] = task
    return index


def find_task(name: str) -> Task | None:
    """The task a folder (or metadata dataset) name refers to, aliases and case ignored; None if none."""
    return _by_lower_name().get(name.strip().lower())


def get_task(name: str) -> Task:
    task = find_task(name)
    if task is None:
        known = ", ".join(t.folder for t in all_tasks())
        raise KeyError(f"unknown DEMON task {name!r}; known tasks: {known}")
    return task


def categories() -> tuple[str, ...]:
    """The seven categories, in the paper's order."""
    return tuple(dict.fromkeys(t.category for t in all_tasks()))


def category_slug(category: str) -> str:
    """`Multi-Image Reasoning` -> `multi-image-reasoning` (DVC stage names, output folders)."""
    return re.sub(r"[^a-z0-9]+", "-", category.lower()).strip("-")


def resolve_categories(names: Sequence[str]) -> list[str]:
    """Category names or slugs -> category names; UserError listing the valid ones."""
    by_key = {key: c for c in categories() for key in (c.lower(), category_slug(c))}
    unknown = [n for n in names if n.strip().lower() not in by_key]
    if unknown:
        valid = ", ".join(f"{category_slug(c)} ({c})" for c in categories())
        raise UserError(f"unknown categor(y/ies) {unknown}; use a slug or name: {valid}")
    return [by_key[n.strip().lower()] for n in names]
