"""Summaries of scored tasks: task scores, category scores, and the paper's numbers beside them.

Category score = unweighted mean of its task scores x 100, as the paper reports it (no overall average). The
paper's tables ship as package data (`paper/paper-task-scores.csv`, `paper/paper-category-scores.csv`).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Mapping
from functools import cache
from importlib import resources

from components.demon.registry import Split, categories, get_task, tasks
from components.evaluation.scorers import TaskScore

# The paper's models printed beside ours in the text table, with short labels (summary.json has them all).
HEADLINE_MODELS = {"VPG-C (Vicuna-7B)": "paper V-7B", "VPG-C (LLaMA2-7B-chat)": "paper L2-7B"}


def _read_csv(name: str) -> list[dict[str, str]]:
    text = resources.files(__package__).joinpath("paper", name).read_text(encoding="utf-8")
    return list(csv.DictReader(io.StringIO(text)))


def _number(value: str) -> float | None:
    return float(value) if value.strip() else None


@cache
def paper_task_scores() -> dict[str, dict[str, float | None]]:
    """{task folder: {model: score x100 or None where the paper has no number}}."""
    return {row.pop("folder"): {m: _number(v) for m, v in row.items()} for row in _read_csv("paper-task-scores.csv")}


@cache
def paper_category_scores() -> dict[str, dict[str, float]]:
    """{category: {model (or ablation row): score x100}}."""
    out: dict[str, dict[str, float]] = {c: {} for c in categories()}
    for row in _read_csv("paper-category-scores.csv"):
        model = row.pop("model")
        for category, value in row.items():
            if (number := _number(value)) is not None:
                out[category][model] = number
    return out


def summarize(
    task_scores: Iterable[TaskScore],
    errors: Mapping[str, str] | None = None,
    warnings: Mapping[str, list[str]] | None = None,
    split: Split = "core",
) -> dict:
    """The summary record (what `summary.json` holds).

    tasks: {folder: category, metric, score (the release's value, 0..1), score_x100, n, rules (strict), paper}
    categories: {category: score_x100 (mean over the scored tasks, None if none), complete, tasks_scored,
    tasks_missing, paper}; errors: {task: message}; warnings: {task: [message]}.
    """
    scored = list(task_scores)
    scorers = sorted({s.scorer for s in scored})
    paper_tasks = paper_task_scores()
    task_rows: dict[str, dict] = {}
    for s in scored:
        row = {
            "category": get_task(s.task).category,
            "metric": s.metric,
            "score": s.score,
            "score_x100": 100 * s.score,
            "n": s.n,
        }
        if s.rules is not None:
            row["rules"] = s.rule_counts()
        row["paper"] = paper_tasks.get(s.task, {})
        task_rows[s.task] = row

    paper_categories = paper_category_scores()
    category_rows: dict[str, dict] = {}
    for category in categories():
        members = [t.folder for t in tasks(split) if t.category == category]
        done = [t for t in members if t in task_rows]
        values = [task_rows[t]["score"] for t in done]
        category_rows[category] = {
            "score_x100": 100 * sum(values) / len(values) if values else None,
            "complete": len(done) == len(members),
            "tasks_scored": done,
            "tasks_missing": [t for t in members if t not in task_rows],
            "paper": paper_categories[category],
        }
    return {
        "scorer": scorers[0] if len(scorers) == 1 else scorers,
        "split": split,
        "tasks": task_rows,
        "categories": category_rows,
        "errors": dict(errors or {}),
        "warnings": {k: list(v) for k, v in (warnings or {}).items() if v},
    }


def format_summary(summary: dict) -> str:
    """A plain-text category table, ours beside the paper's headline models; errors below it."""
    head = f"{'category':<28} {'ours':>8} {'tasks':>6}" + "".join(f" {label:>12}" for label in HEADLINE_MODELS.values())
    lines = [f"scorer: {summary['scorer']}", head, "-" * len(head)]
    partial = False
    for category, row in summary["categories"].items():
        ours = "-" if row["score_x100"] is None else f"{row['score_x100']:.2f}"
        if row["score_x100"] is not None and not row["complete"]:
            ours, partial = ours + "*", True
        count = f"{len(row['tasks_scored'])}/{len(row['tasks_scored']) + len(row['tasks_missing'])}"
        paper = "".join(f" {row['paper'].get(model, float('nan')):>12.2f}" for model in HEADLINE_MODELS)
        lines.append(f"{category:<28} {ours:>8} {count:>6}{paper}")
    if partial:
        lines.append("* mean over the scored tasks only: not comparable with the paper")
    lines.extend(f"error: {message}" for message in summary["errors"].values())
    return "\n".join(lines)
