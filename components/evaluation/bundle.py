"""The results bundle of one evaluation, and merging several (DVC task groups, torchrun shards, resumed parts).

    <out>/<Task>/pred.json   the release's layout: [{"sample_id", "pred_response", "gt_response"}], by sample_id
    <out>/samples.jsonl      one row per sample: prompt hash, raw output, error, extracted answer, both scores
    <out>/results.json       task and category scores for both scorers beside the paper's, each score's n and 95%
                             bootstrap interval (`intervals`), counts, model fingerprint, generation settings, data
                             hash and source (mini-DEMON or DEMON-Core), seeds, versions
    <out>/report.md          the same as tables; <out>/categories.png: category scores beside the paper's

A bundle holds what was evaluated and what came out, never how the run went: the same answers to the same samples
write the same bytes (DVC's output hashes, a re-run compared with the first). When, at which commit, from which
command, how long and how much came from the response cache is `run_record`, returned beside the results for the
caller to log (the stage's MLflow run) or print (the command line).

A sample without an answer (its images failed, it ran out of memory alone) is scored as an empty answer, exactly
as the release scores a model that said nothing, and is listed with its error in samples.jsonl and results.json.
samples.jsonl carries each sample's ground truth and options, so bundles merge and re-score without the data.
"""

from __future__ import annotations

import hashlib
import json
import platform
import sys
from collections import Counter
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from components import atomic
from components.demon.registry import get_task
from components.errors import UserError
from components.evaluation.intervals import Bootstrap, score_intervals
from components.evaluation.report import summarize
from components.evaluation.scorers import SCORERS, ScoringError, TaskScore, score_task

BUNDLE_FORMAT = 1
SAMPLES_FILE = "samples.jsonl"
RESULTS_FILE = "results.json"
ERROR_EXAMPLES = 20  # errors listed in results.json (all of them are in samples.jsonl)
# Must agree across merged bundles: the same model answering under the same settings on the same data.
MERGE_KEYS = (("model", "fingerprint"), ("generation", "key"), ("data", "samples_sha256"))


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def versions() -> dict[str, str]:
    """Versions of what shaped the answers and scores."""
    from importlib.metadata import PackageNotFoundError, version

    found = {"python": platform.python_version()}
    for name in ("demonlab", "torch", "transformers", "numpy", "scikit-learn", "rouge"):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = "not installed"
    return found


def run_record(**details: Any) -> dict[str, Any]:
    """How one evaluation or merge ran: when (UTC), at which git commit, from which command, plus `details` (timing,
    answers generated and taken from the cache). Kept out of the bundle (module docstring)."""
    from components.tracking.runs import git_commit

    when = datetime.now(UTC).isoformat(timespec="seconds")
    return {"created": when, "git_commit": git_commit(), "command": sys.argv, **details}


def sample_row(sample: Mapping[str, Any], record: Mapping[str, Any]) -> dict[str, Any]:
    """One samples.jsonl row before scoring: the sample's identity and ground truth, and what the model said
    (whether the answer came from the cache is the run's business: `run_record`)."""
    choices = sample.get("choice_list")
    output = record.get("output")
    return {
        "uid": sample["uid"],
        "task": sample["task"],
        "category": sample["category"],
        "sample_id": int(sample["sample_id"]),
        "question_type": sample["question_type"],
        "n_images": record["n_images"],
        "prompt_sha256": record["prompt_sha256"],
        "prompt_tokens": record.get("prompt_tokens"),
        "output": output,
        "error": record.get("error"),
        "empty": output is not None and not output.strip(),
        "response": sample["response"],
        "choice_list": None if choices is None else [str(c) for c in choices],
    }


def _score(rows: list[dict]) -> tuple[dict[str, dict], dict[str, dict]]:
    """Score every task with both scorers; per-sample annotations go into the rows. Returns (summaries, errors)."""
    by_task: dict[str, list[dict]] = {}
    for row in rows:
        by_task.setdefault(row["task"], []).append(row)
    results: dict[str, list[TaskScore]] = {s: [] for s in SCORERS}
    errors: dict[str, dict[str, str]] = {s: {} for s in SCORERS}
    for task, members in sorted(by_task.items()):
        members.sort(key=lambda r: r["sample_id"])
        preds = [r["output"] or "" for r in members]
        gts = [r["response"] for r in members]
        choices = [r["choice_list"] for r in members]
        ids = [r["sample_id"] for r in members]
        for scorer in SCORERS:
            try:
                result = score_task(get_task(task), preds, gts, choices, scorer, sample_ids=ids)
            except ScoringError as error:
                errors[scorer][task] = str(error)
                continue
            results[scorer].append(result)
            for k, row in enumerate(members):
                row.setdefault("scores", {})[scorer] = float(result.scores[k])
                if result.rules is not None:
                    pick = result.picks[k]
                    row["rule"] = result.rules[k]
                    row["answer"] = row["choice_list"][pick] if pick is not None and row["choice_list"] else None
    for row in rows:
        if row["question_type"] == "open-ended":
            row["answer"] = row["output"]
        row.setdefault("answer", None)
        row.setdefault("rule", None)
        row.setdefault("scores", {})
    summaries = {s: summarize(results[s], errors[s], split="core") for s in SCORERS}
    for scorer, summary in summaries.items():
        summary["scorer"] = scorer
    return summaries, errors


def _counts(rows: Sequence[dict]) -> dict[str, Any]:
    failed = [r for r in rows if r["error"] is not None]
    return {
        "samples": len(rows),
        "answered": len(rows) - len(failed),
        "errors": len(failed),
        "empty": sum(r["empty"] for r in rows),
        "tasks": dict(sorted(Counter(r["task"] for r in rows).items())),
    }


def write_bundle(
    out: Path,
    rows: list[dict],
    meta: Mapping[str, Any],
    compare_runs: Mapping | None = None,
    bootstrap: Bootstrap | None = None,
) -> dict:
    """Score `rows` (from `sample_row`) and write the whole bundle into `out`; returns results.json's content.

    `meta`: model, generation, data, selection, provenance (whatever the caller knows; kept as given: nothing that
    differs between two runs of the same evaluation, see `run_record`).
    `compare_runs`: {run id: scores} of earlier MLflow runs to show beside ours (`report.run_scores`).
    `bootstrap`: resamples, confidence and seed of the intervals (default `intervals.Bootstrap()`).
    """
    from components.evaluation.bundle_report import data_source, write_report

    out = Path(out)
    rows = sorted(rows, key=lambda r: (r["task"], r["sample_id"]))
    uids = Counter(r["uid"] for r in rows)
    duplicated = [uid for uid, n in uids.items() if n > 1]
    if duplicated:
        raise UserError(f"bundle {out}: samples answered more than once: {duplicated[:5]}")
    summaries, scoring_errors = _score(rows)
    for task in sorted({r["task"] for r in rows}):
        members = [r for r in rows if r["task"] == task]
        preds = [
            {"sample_id": r["sample_id"], "pred_response": r["output"] or "", "gt_response": str(r["response"])}
            for r in members
        ]
        atomic.write_json(out / task / "pred.json", preds)
    atomic.write_jsonl(out / SAMPLES_FILE, rows)
    failures = [r for r in rows if r["error"] is not None]
    results = {
        "format": BUNDLE_FORMAT,
        **dict(meta),
        "counts": _counts(rows),
        "sample_errors": [{"uid": r["uid"], "error": r["error"]} for r in failures[:ERROR_EXAMPLES]],
        "scoring_errors": scoring_errors,
        "data_source": data_source(meta),
        "scores": summaries,
        "interval_method": (bootstrap or Bootstrap()).record(),
        "intervals": score_intervals(rows, bootstrap or Bootstrap()),
        "compare_runs": dict(compare_runs or {}),
    }
    atomic.write_json(out / RESULTS_FILE, results)
    write_report(out, results)
    return results


def read_bundle(folder: Path) -> tuple[dict, list[dict]]:
    """(results.json, samples.jsonl rows) of a bundle; UserError naming what is missing."""
    folder = Path(folder)
    results_path, samples_path = folder / RESULTS_FILE, folder / SAMPLES_FILE
    for path in (results_path, samples_path):
        if not path.is_file():
            raise UserError(f"{folder} is not an evaluation bundle (no {path.name}); give a `demonlab evaluate --out`")
    try:
        results = json.loads(results_path.read_text(encoding="utf-8"))
        rows = [json.loads(line) for line in samples_path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except json.JSONDecodeError as error:
        raise UserError(f"{folder}: unreadable bundle file ({error}); re-run the evaluation that wrote it") from None
    if results.get("format") != BUNDLE_FORMAT:
        raise UserError(f"{results_path}: bundle format {results.get('format')!r}, expected {BUNDLE_FORMAT}")
    return results, rows


def _field(results: Mapping, path: tuple[str, ...]) -> Any:
    value: Any = results
    for key in path:
        value = value.get(key) if isinstance(value, Mapping) else None
    return value


def _merged_meta(parts: Sequence[tuple[Path, dict]]) -> dict[str, Any]:
    first_path, first = parts[0]
    for path, results in parts[1:]:
        for key in MERGE_KEYS:
            if _field(results, key) != _field(first, key):
                raise UserError(
                    f"cannot merge {path} with {first_path}: their {'.'.join(key)} differ "
                    f"({_field(results, key)!r:.80} vs {_field(first, key)!r:.80}); merge only parts of one evaluation"
                )
    selection = {
        "tasks": sorted({t for _, r in parts for t in r.get("selection", {}).get("tasks", [])}),
        "limit": sorted({r.get("selection", {}).get("limit") for _, r in parts}, key=str),
    }
    keep = ("model", "generation", "data", "data_source", "provenance")
    return {
        **{key: first[key] for key in keep if key in first},
        "selection": selection,
        "merged_from": [str(path) for path, _ in parts],
    }


def merge_bundles(folders: Sequence[Path], out: Path) -> dict:
    """One bundle from several parts of the same evaluation; a sample in two parts must have the same answer.
    Returns results.json's content plus `run` (`run_record`)."""
    if not folders:
        raise UserError("merge: give at least one --bundle")
    parts, rows_by_uid = [], {}
    for folder in folders:
        results, rows = read_bundle(folder)
        parts.append((Path(folder), results))
        for row in rows:
            # scoring is redone; `cached` is in rows of bundles written before runs were kept out of them
            row = {k: v for k, v in row.items() if k not in ("scores", "rule", "answer", "cached")}
            seen = rows_by_uid.get(row["uid"])
            if seen is not None and (seen["output"], seen["error"]) != (row["output"], row["error"]):
                raise UserError(f"merge: {row['uid']} has different answers in {folder} and an earlier bundle")
            rows_by_uid[row["uid"]] = row
    results = write_bundle(Path(out), list(rows_by_uid.values()), _merged_meta(parts))
    return {**results, "run": run_record()}
