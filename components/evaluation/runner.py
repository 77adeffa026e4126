"""Score prediction folders in the release's layout against DEMON data; write per-task results and a summary.

Predictions: `<preds>/<Task>/pred.json`, a JSON list of `{"sample_id", "pred_response", "gt_response"}`.
Data: the raw DEMON tree (`<data>/<Task>/<split>/<split>.json`) or a normalized folder (`<data>/samples.parquet`).
Folder names are matched through the registry (aliases, any case).

Ground truths come from where the release takes them: text-option tasks from the data's `response`; open-ended
and image-option tasks from `pred.json`'s `gt_response` (from the data when a record has none), with a warning when
the two disagree.

Outputs, each written atomically, per task under `<out>/<pred folder>/` as the release writes them:
`eval.json` = `{"Rouge-L f": x}` or `{"Accuracy": x}` (what the release's aggregation script reads) and
`eval_score.json` = `[{"id", "score"(, "rule", "pick")}, ...]`; then `<out>/summary.json`. A task whose inputs are
unusable gets an entry under `errors` and the other tasks are still scored.
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from components import atomic
from components.demon.normalize import parse_inline_choices
from components.demon.registry import Split, Task, find_task
from components.errors import UserError
from components.evaluation.normalize import as_text, normalize
from components.evaluation.report import summarize
from components.evaluation.scorers import Scorer, ScoringError, TaskScore, score_task


@dataclass
class TaskData:
    """One task's ground truth, keyed by integer sample id (in the data's order)."""

    task: Task
    source: str  # where it came from, for messages
    responses: dict[int, object]
    choices: dict[int, list | None]


def _sample_id(value: object) -> int:
    if isinstance(value, bool):
        raise ValueError(f"sample_id {value!r} is not an integer")
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value)
    raise ValueError(f"sample_id {value!r} is not an integer")


def _load_raw_task(task: Task, path: Path) -> TaskData:
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        items = raw["data"]
        responses: dict[int, object] = {}
        choices: dict[int, list | None] = {}
        for item in items:
            sid = _sample_id(item["sample_id"])
            instance = item.get("task_instance") or {}
            options = instance.get("choice_list")
            if options is None and task.metric != "rouge_l":
                # The release needs `choice_list`; a few README examples only have the options inline.
                options = parse_inline_choices(str(instance.get("context", "")))
            responses[sid] = item["response"]
            choices[sid] = options
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
        raise ScoringError(
            f"{task.folder}: cannot read {path}: {error!r}; check the file is the official JSON"
        ) from None
    return TaskData(task, str(path), responses, choices)


def load_data(data: Path, split: Split = "core") -> tuple[dict[str, TaskData], dict[str, str]]:
    """({task folder: TaskData}, {task folder: load error}) from a raw DEMON tree or a normalized folder."""
    data = Path(data)
    parquet = data / "samples.parquet"
    if parquet.is_file():
        return _load_normalized(parquet, split), {}
    found: dict[str, TaskData] = {}
    errors: dict[str, str] = {}
    if data.is_dir():
        for folder in sorted(p for p in data.iterdir() if p.is_dir()):
            task = find_task(folder.name)
            path = folder / split / f"{split}.json"
            if task is None or not path.is_file():
                continue
            try:
                found[task.folder] = _load_raw_task(task, path)
            except ScoringError as error:
                errors[task.folder] = str(error)
    if not found and not errors:
        raise UserError(
            f"no DEMON data in {data}: expected <Task>/{split}/{split}.json folders (the official layout) or a "
            "normalized folder with samples.parquet; pass --data the dataset root"
        )
    return found, errors


def _load_normalized(parquet: Path, split: Split) -> dict[str, TaskData]:
    import pyarrow.parquet as pq

    wanted = ["task", "sample_id", "choice_list", "response", "split"]
    names = pq.read_schema(parquet).names
    missing = [c for c in wanted[:4] if c not in names]
    if missing:
        raise UserError(f"{parquet} lacks columns {missing}; re-run `demonlab normalize` to rebuild it")
    frame = pq.read_table(parquet, columns=[c for c in wanted if c in names]).to_pandas()
    if "split" in frame.columns:
        frame = frame[frame["split"] == split]
    found: dict[str, TaskData] = {}
    for name, group in frame.groupby("task", sort=True):
        task = find_task(str(name))
        if task is None:  # synthetic training tasks share the schema; they are not DEMON tasks
            continue
        ids = [int(i) for i in group["sample_id"]]
        options = [None if c is None else [str(o) for o in c] for c in group["choice_list"]]
        found[task.folder] = TaskData(
            task, str(parquet), dict(zip(ids, group["response"], strict=True)), dict(zip(ids, options, strict=True))
        )
    return found


def _prediction_folders(preds: Path) -> tuple[dict[str, list[Path]], list[str]]:
    """{task folder: [prediction folders naming it]}, and folder names that name no task."""
    by_task: dict[str, list[Path]] = {}
    unknown: list[str] = []
    for folder in sorted(p for p in preds.iterdir() if p.is_dir()):
        task = find_task(folder.name)
        if task is None:
            unknown.append(folder.name)
        else:
            by_task.setdefault(task.folder, []).append(folder)
    return by_task, unknown


def _load_predictions(path: Path, data: TaskData) -> tuple[list[int], list[object], list[object | None]]:
    """(sample ids, predictions, gt_response or None) in the file's order; ScoringError if unusable."""
    task = data.task.folder
    if not path.is_file():
        raise ScoringError(f"{task}: no predictions file {path}; write the model's answers there (pred.json)")
    try:
        records = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ScoringError(f"{task}: {path} is not readable JSON ({error}); rewrite it as a JSON list") from None
    if not isinstance(records, list):
        raise ScoringError(f"{task}: {path} holds a {type(records).__name__}, not a list of prediction records")
    ids: list[int] = []
    preds: list[object] = []
    gts: list[object | None] = []
    for k, record in enumerate(records):
        if not isinstance(record, dict) or "sample_id" not in record or "pred_response" not in record:
            raise ScoringError(
                f"{task}: {path} record #{k} is not an object with sample_id and pred_response: {record!r:.120}"
            )
        try:
            ids.append(_sample_id(record["sample_id"]))
        except ValueError as error:
            raise ScoringError(f"{task}: {path} record #{k}: {error}") from None
        preds.append(record["pred_response"])
        gts.append(record.get("gt_response"))
    seen = Counter(ids)
    duplicates = sorted(i for i, count in seen.items() if count > 1)
    missing = [i for i in data.responses if i not in seen]
    extra = [i for i in ids if i not in data.responses]
    problems = []
    for what, values in (("duplicate", duplicates), ("missing", missing), ("unknown", extra)):
        if values:
            shown = ", ".join(map(str, values[:10])) + (f" (+{len(values) - 10} more)" if len(values) > 10 else "")
            problems.append(f"{len(values)} {what} sample_id(s): {shown}")
    if problems:
        raise ScoringError(
            f"{task}: {path} does not match the data ({data.source}): {'; '.join(problems)}; "
            f"predict exactly the {len(data.responses)} samples of the task, once each"
        )
    return ids, preds, gts


def score_one(data: TaskData, pred_path: Path, scorer: Scorer) -> tuple[TaskScore, list[str]]:
    """Score one task's pred.json; returns the scores and warnings."""
    ids, preds, pred_gts = _load_predictions(pred_path, data)
    text_options = data.task.metric == "tfidf_accuracy"
    gts, differ = [], 0
    for sid, gt in zip(ids, pred_gts, strict=True):
        truth = data.responses[sid]
        if text_options or gt is None:
            gts.append(truth)
            continue
        gts.append(gt)
        try:
            differ += normalize(as_text(gt)) != normalize(as_text(truth))
        except TypeError:
            differ += 1
    warnings = []
    if differ:
        warnings.append(
            f"{differ} gt_response value(s) in {pred_path} differ from the data's response; scored against "
            "pred.json as the release does (re-create pred.json from the data to score against it)"
        )
    choices = [data.choices[sid] for sid in ids]
    return score_task(data.task, preds, gts, choices, scorer, sample_ids=ids), warnings


def score_directory(
    data: Path, preds: Path, scorer: Scorer = "parity", out: Path | None = None, split: Split = "core"
) -> dict:
    """Score every task of the data that has (or lacks) predictions; write the outputs; return the summary."""
    preds = Path(preds)
    out = Path(out) if out is not None else preds
    if not preds.is_dir():
        raise UserError(f"predictions folder {preds} does not exist; pass --preds the folder holding <Task>/pred.json")
    datasets, errors = load_data(Path(data), split)
    folders, unknown = _prediction_folders(preds)
    warnings: dict[str, list[str]] = {}
    if unknown:
        warnings["(predictions)"] = [f"ignored folders that name no DEMON task: {', '.join(unknown)}"]
    for task in sorted(set(folders) - set(datasets) - set(errors)):
        errors[task] = f"{task}: predictions in {folders[task][0]} but the data has no such task (split {split})"
    scores: list[TaskScore] = []
    for task in tqdm(sorted(datasets), desc=f"scoring ({scorer})", unit="task", disable=None):
        named = folders.get(task, [])
        if len(named) > 1:
            errors[task] = f"{task}: several prediction folders name it ({', '.join(p.name for p in named)}); keep one"
            continue
        folder = named[0] if named else preds / task
        try:
            result, task_warnings = score_one(datasets[task], folder / "pred.json", scorer)
        except ScoringError as error:
            errors[task] = str(error)
            continue
        target = out / folder.name
        atomic.write_json(target / "eval.json", result.eval_score_json())
        atomic.write_json(target / "eval_score.json", result.eval_rows())
        scores.append(result)
        if task_warnings:
            warnings[task] = task_warnings
    for message in errors.values():
        print(f"demonlab score: error: {message}", file=sys.stderr)
    summary = summarize(scores, errors, warnings, split)
    summary["scorer"] = scorer
    summary["data"] = str(data)
    summary["preds"] = str(preds)
    atomic.write_json(out / "summary.json", summary)
    return summary
