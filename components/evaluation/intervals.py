"""Uncertainty of DEMON scores: bootstrap confidence intervals of every score, paired tests between models.

A score is a statistic of the per-sample scores (samples.jsonl `scores.<scorer>`, 0..1), x100:

    task     = mean of its samples            (the release's np.mean of ROUGE-L F, or correct / n)
    category = unweighted mean of its scored tasks   (the paper's category score, `report.summarize`)
    overall  = unweighted mean of the categories with a scored task   (ours: the paper reports none)

Interval: percentile bootstrap over samples, stratified by task. Each of B resamples draws n_t samples with
replacement within every task t (an index matrix (B, n_t)), giving task means (B,) per task; categories and the
overall are then recomputed from those, so every level keeps the fixed per-task sizes and the equal task weights.

Paired difference of models a and b: only samples both answered (same uid and ground truth) count. The
per-sample differences d = s_a - s_b (n_t,) are resampled, which is resampling the same indices for both models;
the interval is the percentile interval of the resampled statistic. Its two-sided p-value is a sign-flip
permutation test of the same statistic (every d_i's sign flipped with probability 1/2: H0 says the two models'
scores of a sample are exchangeable), p = (1 + #{|T*| >= |T|}) / (B + 1). A permutation test holds its size at
any n without the re-centring a bootstrap p-value needs; the paired bootstrap gives the interval.

A level that holds a task with fewer than MIN_SAMPLES samples gets no interval (None, shown `n/a`): a bootstrap
of one sample has zero width, which would read as certainty. Every task draws from its own generator seeded by
(seed, task name), so a task's interval is the same in a group bundle, the merged bundle and a comparison.
"""

from __future__ import annotations

import itertools
import json
import zlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from components.demon.registry import categories, tasks
from components.errors import UserError
from components.evaluation.scorers import SCORERS

MIN_SAMPLES = 2
CHUNK = 4_000_000  # resampled values held at once (~32 MB of float64): bounds memory for tasks with many samples
BOOTSTRAP, SIGN_FLIP = 0, 1  # generator streams of a task
Level = tuple[str, str, list[str], Any]  # (level, name, member tasks, score x100: a float or a resampled array)
Draw = Callable[[np.ndarray, np.random.Generator, int], np.ndarray]


@dataclass(frozen=True)
class Bootstrap:
    """How intervals and p-values are drawn; `record()` goes into results.json / compare.json (`interval_method`)."""

    resamples: int = 10_000
    confidence: float = 0.95
    seed: int = 0

    def record(self) -> dict[str, Any]:
        return {
            "interval": "percentile bootstrap over samples, stratified by task",
            "paired_interval": "paired percentile bootstrap over the shared samples, stratified by task",
            "p_value": "two-sided sign-flip permutation test, stratified by task",
            **asdict(self),
            "min_samples": MIN_SAMPLES,
        }


def _rng(bootstrap: Bootstrap, task: str, stream: int) -> np.random.Generator:
    # crc32, not hash(): Python salts str hashes per process, and the draws must repeat across runs.
    return np.random.default_rng([bootstrap.seed, zlib.crc32(task.encode()), stream])


def _bootstrap_means(values: np.ndarray, rng: np.random.Generator, resamples: int) -> np.ndarray:
    """(n,) -> (resamples,) means of resamples drawn with replacement."""
    n = len(values)
    step = max(1, CHUNK // n)
    parts = [values[rng.integers(0, n, (min(step, resamples - start), n))].mean(axis=1)
             for start in range(0, resamples, step)]  # fmt: skip
    return np.concatenate(parts)


def _sign_flip_means(values: np.ndarray, rng: np.random.Generator, resamples: int) -> np.ndarray:
    """(n,) -> (resamples,) means with every value's sign flipped with probability 1/2."""
    n = len(values)
    step = max(1, CHUNK // n)
    parts = []
    for start in range(0, resamples, step):
        # Random bytes unpacked into bits are ~10x cheaper than drawing integers; signs = 2 * bits - 1.
        packed = rng.integers(0, 256, (min(step, resamples - start), -(-n // 8)), dtype=np.uint8)
        bits = np.unpackbits(packed, axis=1, count=n).astype(np.float64)
        parts.append((2 * (bits @ values) - values.sum()) / n)
    return np.concatenate(parts)


def _aggregate(task_values: Mapping[str, Any]) -> list[Level]:
    """(level, name, member tasks, score x100) of the overall, each category with a scored task and each task.

    `task_values` are task means (0..1): floats, or arrays of resampled means. Categories add their tasks in the
    registry's order with `100 * sum / len`, exactly as `report.summarize`, so the point estimates equal its scores.
    """
    found = []
    for category in categories():
        members = [t.folder for t in tasks("core") if t.category == category and t.folder in task_values]
        if members:
            found.append(("category", category, members, 100 * sum(task_values[t] for t in members) / len(members)))
    levels = []
    if found:
        overall = sum(value for *_, value in found) / len(found)
        levels.append(("overall", "overall", [t for _, _, members, _ in found for t in members], overall))
    return levels + found + [("task", t, [t], 100 * task_values[t]) for t in sorted(task_values)]


def _estimates(values: Mapping[str, np.ndarray], bootstrap: Bootstrap, paired: bool) -> list[dict[str, Any]]:
    """{task: per-sample values (n,)} -> [{level, name, n, score|diff, ci_low, ci_high[, p_value]}], every level."""
    values = {task: v for task, v in values.items() if len(v)}
    if not values:
        return []
    blank = np.full(bootstrap.resamples, np.nan)  # a task too small to resample: NaN spreads to its levels

    def resampled(draw: Draw, stream: int) -> list[Level]:
        return _aggregate({task: draw(v, _rng(bootstrap, task, stream), bootstrap.resamples)
                           if len(v) >= MIN_SAMPLES else blank for task, v in values.items()})  # fmt: skip

    point = _aggregate({task: float(np.mean(v)) for task, v in values.items()})
    boot = resampled(_bootstrap_means, BOOTSTRAP)
    flips = resampled(_sign_flip_means, SIGN_FLIP) if paired else [None] * len(point)
    dists = np.stack([dist for *_, dist in boot])  # (levels, resamples)
    known = ~np.isnan(dists).any(axis=1)
    tail = 50 * (1 - bootstrap.confidence)
    bounds = np.full((len(point), 2), np.nan)
    bounds[known] = np.percentile(dists[known], [tail, 100 - tail], axis=1).T
    records = []
    for k, ((level, name, members, score), flip) in enumerate(zip(point, flips, strict=True)):
        low, high = (float(b) for b in bounds[k]) if known[k] else (None, None)
        key = "diff" if paired else "score"
        n = sum(len(values[t]) for t in members)
        record = {"level": level, "name": name, "n": n, key: score, "ci_low": low, "ci_high": high}
        if paired:
            # |T*| >= |T| up to summation noise: a model against itself (T = T* = 0) gets p = 1.
            extreme = np.count_nonzero(np.abs(flip[-1]) >= abs(score) - 1e-9)
            record["p_value"] = float((1 + extreme) / (bootstrap.resamples + 1)) if known[k] else None
        records.append(record)
    return records


def task_samples(rows: Iterable[Mapping[str, Any]], scorer: str) -> dict[str, dict[tuple[str, str], float]]:
    """{task: {(uid, ground truth): score}} of the samples.jsonl rows `scorer` scored, by sample id (the order
    `score_task` averages them in, so the task means are its scores to the last bit)."""
    found: dict[str, dict[tuple[str, str], float]] = {}
    for row in sorted(rows, key=lambda r: (r["task"], r["sample_id"])):
        if scorer in row.get("scores", {}):
            found.setdefault(row["task"], {})[(row["uid"], json.dumps(row["response"]))] = row["scores"][scorer]
    return found


def score_intervals(rows: Iterable[Mapping[str, Any]], bootstrap: Bootstrap = Bootstrap()) -> list[dict[str, Any]]:
    """One model's [{scorer, level, name, n, score, ci_low, ci_high}] (x100) from its samples.jsonl rows."""
    rows = list(rows)
    return [
        {"scorer": scorer, **record}
        for scorer in SCORERS
        for record in _estimates(
            {task: np.fromiter(found.values(), np.float64) for task, found in task_samples(rows, scorer).items()},
            bootstrap,
            paired=False,
        )
    ]


def paired_differences(
    rows_a: Sequence[Mapping[str, Any]], rows_b: Sequence[Mapping[str, Any]], a: str, b: str,
    bootstrap: Bootstrap = Bootstrap(),
) -> tuple[list[dict[str, Any]], dict[str, Any]]:  # fmt: skip
    """Model a minus model b on the samples both answered: ([{scorer, a, b, level, name, n, diff, ci_low, ci_high,
    p_value}], {a, b, shared, dropped_a, dropped_b}); a sample counts as shared when uid and ground truth agree."""
    records = []
    for scorer in SCORERS:
        found_a, found_b = task_samples(rows_a, scorer), task_samples(rows_b, scorer)
        diffs = {
            task: np.array([score - found_b[task][key] for key, score in found_a[task].items() if key in found_b[task]])
            for task in found_a.keys() & found_b.keys()
        }
        records += [{"scorer": scorer, "a": a, "b": b, **r} for r in _estimates(diffs, bootstrap, paired=True)]
    keys_a, keys_b = ({(r["uid"], json.dumps(r["response"])) for r in rows} for rows in (rows_a, rows_b))
    counts = {"a": a, "b": b, "shared": len(keys_a & keys_b), "dropped_a": len(keys_a - keys_b),
              "dropped_b": len(keys_b - keys_a)}  # fmt: skip
    return records, counts


def compare_intervals(bundles: Mapping[str, Sequence[Mapping[str, Any]]], bootstrap: Bootstrap = Bootstrap()) -> dict:
    """compare.json's uncertainty for {label: samples.jsonl rows}: `interval_method`, `intervals` (each model's,
    with `model`), `paired` (every pair in order, a before b) and `paired_samples` (shared and dropped per pair)."""
    paired, counts = [], []
    for a, b in itertools.combinations(bundles, 2):
        records, count = paired_differences(bundles[a], bundles[b], a, b, bootstrap)
        paired += records
        counts.append(count)
    intervals = [{"model": label, **r} for label, rows in bundles.items() for r in score_intervals(rows, bootstrap)]
    return {"interval_method": bootstrap.record(), "intervals": intervals, "paired": paired, "paired_samples": counts}


def format_interval(record: Mapping[str, Any]) -> str:
    """`score ± half-width (n)`: half the interval's width (the bounds themselves are in the record)."""
    half = "n/a" if record["ci_low"] is None else f"{(record['ci_high'] - record['ci_low']) / 2:.2f}"
    return f"{record['score']:.2f} ± {half} ({record['n']})"


def significant(record: Mapping[str, Any], confidence: float = 0.95) -> bool:
    """The interval excludes 0 and the test rejects at 1 - confidence. Both: at a few samples the percentile
    interval is too narrow (five wins in five give [+x, +y] where the exact test's p is 0.0625)."""
    if record["ci_low"] is None:
        return False
    return (record["ci_low"] > 0 or record["ci_high"] < 0) and record["p_value"] < 1 - confidence


def format_difference(record: Mapping[str, Any], confidence: float = 0.95, bold: bool = True) -> str:
    """`diff [low, high], p (n)`, bold where `significant` unless `bold` is off (exploratory, unadjusted tests)."""
    if record["ci_low"] is None:
        return f"{record['diff']:+.2f} [n/a] ({record['n']})"
    text = f"{record['diff']:+.2f} [{record['ci_low']:+.2f}, {record['ci_high']:+.2f}]"
    if bold and significant(record, confidence):
        text = f"**{text}**"
    return f"{text}, p={record['p_value']:.4f} ({record['n']})"


def _reversed(record: Mapping[str, Any]) -> dict[str, Any]:
    """b minus a from a's record of a minus b."""
    low, high = record["ci_low"], record["ci_high"]
    return {**record, "a": record["b"], "b": record["a"], "diff": -record["diff"],
            "ci_low": None if high is None else -high, "ci_high": None if low is None else -low}  # fmt: skip


def overall_summary(
    compare: Mapping[str, Any] | Path, a: str | None = None, b: str | None = None, scorer: str = "parity"
) -> list[str]:
    """Lines for a closing summary: each model's overall score with its interval and, given two models, their
    paired difference. `compare`: compare.json's content or its path."""
    record = json.loads(Path(compare).read_text(encoding="utf-8")) if isinstance(compare, Path) else compare
    lines = [f"{r['model']} ({scorer} x100): overall {format_interval(r)}" for r in record.get("intervals", [])
             if r["scorer"] == scorer and r["level"] == "overall"]  # fmt: skip
    if a is not None and b is not None:
        found = [r for r in record.get("paired", []) if r["scorer"] == scorer and r["level"] == "overall"]
        pair = next((r for r in found if (r["a"], r["b"]) == (a, b)), None)
        pair = pair or next((_reversed(r) for r in found if (r["b"], r["a"]) == (a, b)), None)
        if pair is None:
            known = sorted({m for r in found for m in (r["a"], r["b"])})
            raise UserError(f"compare.json has no paired overall difference of {a!r} and {b!r}; models: {known}")
        lines.append(f"{a} - {b} ({scorer} x100, paired): {format_difference(pair)}")
    return lines
