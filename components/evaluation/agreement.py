"""Backend agreement: do two ways of running one model (in-process Hugging Face vs a served endpoint, or two
servers) give the same answers on the same samples? Read before trusting a served score.

    agreement(rows_a, rows_b, "hf", "served") -> {exact_match, paired, differing, ...}   samples.jsonl rows in
    write_agreement(out, record)              -> agreement.json, agreement.md

Samples are paired on uid (and ground truth, as `intervals.paired_differences` pairs them). Exact match: the raw
outputs are the same string, over the samples both backends answered (a sample either failed is listed apart, with
its error). The paired score differences (a - b, per scorer, overall / category / task, with 95% bootstrap intervals
and sign-flip p-values) say whether the differences move the score; the differing samples, with both answers, say
where to look (a chat template, an image resize, a sampling default, a tokenizer difference).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from components import atomic
from components.evaluation.intervals import Bootstrap, format_difference, paired_differences

MARKDOWN_SAMPLES = 50  # differing samples shown in agreement.md (agreement.json has all)


def agreement(
    rows_a: Sequence[Mapping[str, Any]],
    rows_b: Sequence[Mapping[str, Any]],
    a: str,
    b: str,
    bootstrap: Bootstrap | None = None,
) -> dict[str, Any]:
    """How far backends `a` and `b` agree on the samples both ran (rows: a bundle's samples.jsonl)."""
    bootstrap = bootstrap or Bootstrap()
    by_uid = {row["uid"]: row for row in rows_b}
    shared = [(row, by_uid[row["uid"]]) for row in rows_a if row["uid"] in by_uid]
    answered = [(x, y) for x, y in shared if x["error"] is None and y["error"] is None]
    differing = [
        {"uid": x["uid"], "task": x["task"], a: x["output"], b: y["output"],
         "scores": {scorer: [x["scores"].get(scorer), y["scores"].get(scorer)] for scorer in x["scores"]}}
        for x, y in answered if x["output"] != y["output"]
    ]  # fmt: skip
    failed = [{"uid": x["uid"], a: x["error"], b: y["error"]} for x, y in shared if x["error"] or y["error"]]
    paired, counts = paired_differences(rows_a, rows_b, a, b, bootstrap)
    same = len(answered) - len(differing)
    return {
        "a": a,
        "b": b,
        "samples": {
            "shared": len(shared),
            "answered_by_both": len(answered),
            "only_a": len(rows_a) - len(shared),
            "only_b": len(rows_b) - len(shared),
            "failed": len(failed),
        },
        "exact_match": {"count": same, "n": len(answered), "rate": same / len(answered) if answered else None},
        "interval_method": bootstrap.record(),
        "paired": paired,
        "paired_samples": counts,
        "differing": differing,
        "failed": failed,
    }


def format_agreement(record: Mapping[str, Any]) -> str:
    """agreement.md: the exact-match rate, the paired differences (overall and categories), the differing samples."""
    a, b = record["a"], record["b"]
    match = record["exact_match"]
    rate = "n/a" if match["rate"] is None else f"{100 * match['rate']:.1f}%"
    lines = [
        f"# Backend agreement: {a} vs {b}",
        "",
        f"Exact match: **{rate}** ({match['count']} of {match['n']} samples both answered the same; "
        f"{record['samples']['failed']} failed on one side or both, {record['samples']['only_a']} only in {a}, "
        f"{record['samples']['only_b']} only in {b}).",
        "",
        f"## Paired score differences ({a} - {b}, x100, 95% interval, p)",
        "",
        "| scorer | level | name | difference |",
        "|---|---|---|---|",
    ]
    lines += [f"| {r['scorer']} | {r['level']} | {r['name']} | {format_difference(r)} |"
              for r in record["paired"] if r["level"] in ("overall", "category")]  # fmt: skip
    differing = record["differing"]
    lines += ["", f"## Samples that differ ({len(differing)})", ""]
    if differing:
        lines += [f"| uid | {a} | {b} | parity {a} / {b} |", "|---|---|---|---|"]
        for row in differing[:MARKDOWN_SAMPLES]:
            parity = row["scores"].get("parity") or [None, None]
            scores = " / ".join("-" if s is None else f"{s:.2f}" for s in parity)
            lines.append(f"| {row['uid']} | {_cell(row[a])} | {_cell(row[b])} | {scores} |")
        if len(differing) > MARKDOWN_SAMPLES:
            lines.append(f"\n{len(differing) - MARKDOWN_SAMPLES} more in agreement.json.")
    if record["failed"]:
        lines += ["", "## Samples without an answer on one side", "", f"| uid | {a} | {b} |", "|---|---|---|"]
        lines += [f"| {row['uid']} | {_cell(row[a] or '')} | {_cell(row[b] or '')} |" for row in record["failed"]]
    return "\n".join(lines) + "\n"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def write_agreement(out: Path, record: Mapping[str, Any]) -> None:
    atomic.write_json(Path(out) / "agreement.json", dict(record))
    atomic.write_text(Path(out) / "agreement.md", format_agreement(record))
