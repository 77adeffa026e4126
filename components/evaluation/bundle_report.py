"""Human-readable reports of evaluation bundles: one bundle beside the paper (and earlier MLflow runs), or several
bundles side by side (the ablation: backbone only, VPG-C on captions, VPG-C with synthetic training).

Scores are x100, category = unweighted mean of its task scores, as the paper reports them; overall = unweighted mean
of the category scores (ours; the paper has none). Every score of ours is shown as `score ± half-width (n)`: n
samples, half the width of its 95% bootstrap interval (`intervals`); comparisons add paired differences. A category
missing tasks is marked `*`: its mean covers the scored tasks only and is not comparable with the paper's number.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from components import atomic
from components.demon.registry import categories
from components.errors import UserError
from components.evaluation.contrasts import contrast_family, contrast_section, resolve_contrasts
from components.evaluation.intervals import Bootstrap, compare_intervals, format_difference, format_interval
from components.evaluation.report import HEADLINE_MODELS, paper_category_scores, paper_task_scores
from components.evaluation.scorers import SCORERS

# Paper rows (Table 4) that correspond to the three ablation models the pipeline evaluates.
ABLATION_ROWS = (
    "Ablation 1: backbone only (Q-Former + LLM)",
    "Ablation 3: + VPG-C trained on captions only",
    "Ablation 4: + synthetic discriminative training (full VPG-C)",
)
MINI_DEMON, DEMON_CORE, UNKNOWN_DATA = "mini-DEMON (procedural)", "DEMON-Core", "DEMON data of unrecorded origin"
Column = tuple[str, Mapping[str, float | str | None]]  # (header, {row key: value x100, a formatted cell, or None})
Bounds = Mapping[str, tuple[float, float]]  # {row key: (ci_low, ci_high)}


def _fmt(value: float | str | None) -> str:
    if isinstance(value, str):
        return value
    return "-" if value is None else f"{value:.2f}"


def markdown_table(
    first: str, rows: Sequence[str], columns: Sequence[Column], labels: Mapping[str, str] | None = None
) -> str:
    """A Markdown table: one row per key (shown as `labels[key]` or the key), one column per (header, values)."""
    labels = labels or {}
    head = f"| {first} | " + " | ".join(h for h, _ in columns) + " |"
    rule = "|---|" + "---:|" * len(columns)
    lines = [head, rule]
    for key in rows:
        lines.append(f"| {labels.get(key, key)} | " + " | ".join(_fmt(values.get(key)) for _, values in columns) + " |")
    return "\n".join(lines)


def category_scores(summary: Mapping) -> dict[str, float | None]:
    return {c: row["score_x100"] for c, row in summary["categories"].items()}


def task_scores(summary: Mapping) -> dict[str, float]:
    return {t: row["score_x100"] for t, row in summary["tasks"].items()}


def _cells(intervals: Sequence[Mapping], scorer: str, model: str | None = None) -> dict[str, str]:
    """{"overall", category or task: `score ± half-width (n)`} of one scorer's (and one model's) records."""
    return {r["name"]: format_interval(r) for r in intervals if r["scorer"] == scorer and r.get("model") == model}


def _bounds(intervals: Sequence[Mapping], scorer: str, model: str | None = None) -> dict[str, tuple[float, float]]:
    return {r["name"]: (r["ci_low"], r["ci_high"]) for r in intervals
            if r["scorer"] == scorer and r.get("model") == model and r["ci_low"] is not None}  # fmt: skip


def data_source(results: Mapping) -> str:
    """Which data a bundle was scored on: as recorded (`data_source`), else told by the data's image root, where the
    mini-DEMON builder leaves its stamp (it never writes into a real DEMON download, so the stamp is reliable)."""
    from components.demon.mini import STAMP

    if "data_source" in results:
        return results["data_source"]
    root = results.get("data", {}).get("image_root")
    if root is None or not Path(root).is_dir():
        return UNKNOWN_DATA
    return MINI_DEMON if (Path(root) / STAMP).is_file() else DEMON_CORE


def describe_data(results: Mapping) -> str:
    """`mini-DEMON (procedural), 8 samples per task` (a range where the tasks' counts differ)."""
    counts = sorted(set(results["counts"]["tasks"].values())) or [0]
    per_task = str(counts[0]) if len(counts) == 1 else f"{counts[0]}-{counts[-1]}"
    return f"{data_source(results)}, {per_task} sample{'' if per_task == '1' else 's'} per task"


def paper_note(sources: Sequence[str]) -> str:
    """What the paper's columns are, said so no one reads them as the same benchmark as ours."""
    if all(source == DEMON_CORE for source in sources):
        return "paper columns: the paper's numbers on DEMON-Core"
    return "paper columns: the paper's numbers on DEMON-Core, not comparable to mini-DEMON scores"


def _category_labels(summary: Mapping) -> dict[str, str]:
    """Category names with the scored-task count, `*` when some are missing."""
    labels = {}
    for category, row in summary["categories"].items():
        done, missing = len(row["tasks_scored"]), len(row["tasks_missing"])
        labels[category] = f"{category} ({done}/{done + missing}){'*' if missing and done else ''}"
    return labels


def run_scores(run_id: str) -> dict[str, dict[str, dict[str, float]]]:
    """Scores of an earlier MLflow run: {scorer: {"categories": {...}, "tasks": {...}}} (x100).

    Reads the metrics an evaluation stage writes (`parity.categories.<category>`, `strict.tasks.<task>`, ...) and
    those of a scoring stage (`categories.<category>`, scorer from its `scorer` parameter).
    """
    import mlflow

    from components.tracking.runs import configure

    configure()
    try:
        run = mlflow.get_run(run_id)
    except mlflow.exceptions.MlflowException as error:
        raise UserError(f"--compare-run {run_id}: no such MLflow run ({str(error).splitlines()[0]})") from None
    found: dict[str, dict[str, dict[str, float]]] = {}
    plain_scorer = run.data.params.get("scorer", "parity")
    for name, value in run.data.metrics.items():
        parts = name.split(".", 2)
        if len(parts) == 3 and parts[0] in SCORERS and parts[1] in ("categories", "tasks"):
            found.setdefault(parts[0], {}).setdefault(parts[1], {})[parts[2]] = value
        elif len(parts) >= 2 and parts[0] in ("categories", "tasks"):
            found.setdefault(plain_scorer, {}).setdefault(parts[0], {})[name.split(".", 1)[1]] = value
    if not found:
        raise UserError(f"--compare-run {run_id}: the run has no category or task scores; pick an evaluate/score run")
    return found


def plot_categories(
    path: Path,
    columns: Sequence[Column],
    title: str,
    bounds: Mapping[str, Bounds] | None = None,
    names: Sequence[str] | None = None,
) -> None:
    """Grouped horizontal bars: one group per category (`names`, default all), one bar per column (missing values
    left out); `bounds` ({column header: {category: (low, high)}}) draws the intervals as error bars."""
    import matplotlib
    import numpy as np

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(names or categories())
    height = 0.8 / max(len(columns), 1)
    figure, axis = plt.subplots(figsize=(9, 1.0 + 0.45 * len(names) * max(1, len(columns) / 3)))
    for k, (label, values) in enumerate(columns):
        ys = [i + k * height for i, c in enumerate(names) if values.get(c) is not None]
        shown = [c for c in names if values.get(c) is not None]
        xs = [values[c] for c in shown]
        xerr = None
        if label in (bounds or {}):  # a bar without an interval gets no error bar (NaN), not a zero-width one
            spans = np.array([bounds[label].get(c, (np.nan, np.nan)) for c in shown]).reshape(-1, 2)
            xerr = np.stack([xs - spans[:, 0], spans[:, 1] - xs])
        axis.barh(ys, xs, height=height, label=label, xerr=xerr, error_kw={"elinewidth": 0.8, "capsize": 2})
    axis.set_yticks([i + 0.4 - height / 2 for i in range(len(names))], names)
    axis.invert_yaxis()
    axis.set_xlabel("score x100")
    axis.set_title(title)
    axis.legend(loc="lower right", fontsize="small")
    figure.tight_layout()
    with atomic.atomic_path(path) as temp:
        figure.savefig(temp, format="png", dpi=110)
    plt.close(figure)


def _describe(results: Mapping) -> list[str]:
    model, gen, data = results.get("model", {}), results.get("generation", {}), results.get("data", {})
    counts, provenance = results["counts"], results.get("provenance", {})
    config = model.get("config", {})
    vpgc = f", VPG-C {'on' if config.get('vpgc_enabled') else 'off'}" if model.get("kind") == "vpgc" else ""
    lines = [
        f"- model: `{model.get('spec')}` ({model.get('kind')}{vpgc}), "
        f"fingerprint `{str(model.get('fingerprint'))[:16]}`",
        f"- decoding: {gen.get('key')}, batch size {gen.get('batch_size')}",
        f"- data: {describe_data(results)}, `{data.get('path')}` "
        f"(samples.parquet sha256 `{str(data.get('samples_sha256'))[:16]}`), "
        f"limit per task: {results.get('selection', {}).get('limit')}",
        f"- samples: {counts['samples']} in {len(counts['tasks'])} tasks; answered {counts['answered']}, "
        f"errors {counts['errors']}, empty answers {counts['empty']}",
        "- versions: " + ", ".join(f"{k} {v}" for k, v in provenance.get("versions", {}).items()),
    ]
    return lines


def _uncertainty_note(method: Mapping) -> str:
    return (
        f"Ours: `score ± half-width (n)`: n samples, half the width of the {method['confidence']:.0%} interval "
        f"({method['interval']}, {method['resamples']:,} resamples, seed {method['seed']}; `n/a`: a task with fewer "
        f"than {method['min_samples']} samples). overall = unweighted mean of the category scores (not in the paper)."
    )


def write_report(out: Path, results: Mapping[str, Any]) -> None:
    """`report.md` and `categories.png` for one bundle: both scorers with intervals beside the paper and any compared
    run."""
    scores, intervals = results["scores"], results["intervals"]
    paper_categories, paper_tasks = paper_category_scores(), paper_task_scores()
    compared = results.get("compare_runs", {})
    ours: list[Column] = [(f"ours ({s})", _cells(intervals, s)) for s in SCORERS]
    runs = [(f"run {run_id[:8]} ({scorer})", run[scorer]) for run_id, run in compared.items() for scorer in SCORERS
            if scorer in run]  # fmt: skip
    run_cat: list[Column] = [(header, run.get("categories", {})) for header, run in runs]
    run_task: list[Column] = [(header, run.get("tasks", {})) for header, run in runs]
    paper_cat = [(label, {c: paper_categories[c].get(m) for c in categories()}) for m, label in
                 HEADLINE_MODELS.items()]  # fmt: skip
    paper_task = [(label, {t: row.get(m) for t, row in paper_tasks.items()}) for m, label in
                  HEADLINE_MODELS.items()]  # fmt: skip
    task_names = sorted(scores["parity"]["tasks"] | scores["strict"]["tasks"])
    lines = [
        f"# DEMON evaluation: `{results.get('model', {}).get('spec')}`",
        "",
        *_describe(results),
        "",
        "## Category scores (x100)",
        "",
        "parity = the official scorer's algorithm (compare with the paper); strict = explicit answer extraction "
        f"(no silent option 0). {_uncertainty_note(results['interval_method'])} Paper: Table 2; "
        f"{paper_note([data_source(results)])}. `*` = tasks missing, not comparable with the paper.",
        "",
        markdown_table(
            "category (tasks)",
            ["overall", *categories()],
            ours + run_cat + paper_cat,
            _category_labels(scores["parity"]),
        ),  # fmt: skip
        "",
        "![category scores](categories.png)",
        "",
        "## Task scores (x100)",
        "",
        markdown_table("task", task_names, ours + run_task + paper_task),
    ]
    errors = {s: e for s, e in results.get("scoring_errors", {}).items() if e}
    if errors:
        lines += ["", "## Tasks that could not be scored", ""]
        lines += [f"- {scorer}: {message}" for scorer, found in errors.items() for message in found.values()]
    if results["sample_errors"]:
        lines += ["", f"## Samples without an answer ({results['counts']['errors']}, scored as empty)", ""]
        lines += [f"- `{e['uid']}`: {e['error']}" for e in results["sample_errors"]]
        if results["counts"]["errors"] > len(results["sample_errors"]):
            lines.append("- ... the rest are in samples.jsonl (`error` field)")
    atomic.write_text(Path(out) / "report.md", "\n".join(lines) + "\n")
    plot_columns = [(f"ours ({s})", category_scores(scores[s])) for s in SCORERS] + run_cat + paper_cat
    bounds = {f"ours ({s})": _bounds(intervals, s) for s in SCORERS}
    plot_categories(Path(out) / "categories.png", plot_columns, "DEMON category scores", bounds)


def _pairing_notes(counts: Sequence[Mapping]) -> list[str]:
    return [f"- {c['a']} - {c['b']}: {c['shared']} shared samples; not paired: {c['dropped_a']} only in {c['a']}, "
            f"{c['dropped_b']} only in {c['b']}" for c in counts if c["dropped_a"] or c["dropped_b"]]  # fmt: skip


def compare_bundles(
    labeled: Sequence[tuple[str, Path]],
    out: Path,
    floors: Mapping[str, Mapping[str, float]] | None = None,
    data_label: str | None = None,
    bootstrap: Bootstrap | None = None,
    contrasts: Sequence[str] | None = None,
    where: str = "compare",
) -> dict:
    """A side-by-side report of several bundles (`compare.md`, `compare.png`, `compare.json`): it opens with the
    answers to the declared contrasts (`contrasts`: `a[view] - b[view]` strings, None: the ablation's default family;
    `where` names their source in errors), Holm-adjusted as one family; then each model's scores with intervals
    and, as exploratory and unadjusted, the paired difference of every pair, beside the paper's ablation rows;
    returns compare.json's content. Categories no model was scored on are left out.

    `floors`: {floor name: {category: score x100}} (chance, copying the context, ...) listed per category in the
    header table. `data_label` overrides the data description read from the bundles. `bootstrap`: resamples,
    confidence and seed of intervals and tests (default `intervals.Bootstrap()`).
    """
    from components.evaluation.bundle import read_bundle

    if len(labeled) < 1:
        raise UserError("compare: give at least one --bundle LABEL=DIR")
    labels = [label for label, _ in labeled]
    if len(set(labels)) != len(labels):
        raise UserError(f"compare: labels must differ, got {labels}")
    bootstrap = bootstrap or Bootstrap()
    asked = resolve_contrasts(contrasts, labels, where)
    bundles = {label: read_bundle(folder) for label, folder in labeled}
    loaded = {label: results for label, (results, _) in bundles.items()}
    uncertainty = compare_intervals({label: rows for label, (_, rows) in bundles.items()}, bootstrap)
    intervals, paired = uncertainty["intervals"], uncertainty["paired"]
    family = contrast_family(asked, paired, declared=contrasts is not None, alpha=1 - bootstrap.confidence)
    evaluated = [c for c in categories() if any(r["level"] == "category" and r["name"] == c for r in intervals)]
    described = {label: describe_data(results) for label, results in loaded.items()}
    distinct = set(described.values())
    data = data_label or (
        distinct.pop() if len(distinct) == 1 else "; ".join(f"{k}: {v}" for k, v in described.items())
    )
    paper = paper_category_scores()
    ablations: list[Column] = [
        (f"paper: {row.split(':')[0]}", {c: paper[c].get(row) for c in evaluated}) for row in ABLATION_ROWS
    ]
    references: list[Column] = [(f"floor: {name}", values) for name, values in (floors or {}).items()] + ablations
    record: dict[str, Any] = {
        "bundles": {label: str(folder) for label, folder in labeled},
        "data": data,
        "floors": {name: dict(values) for name, values in (floors or {}).items()},
        "scores": {},
        "contrasts": family,
        **uncertainty,
    }
    lines = ["# DEMON: side-by-side", "", f"Data: {data}.", "", *contrast_section(family), "", "## Models", ""]
    lines += [f"- **{label}**: `{folder}` (model `{loaded[label].get('model', {}).get('spec')}`, "
              f"{loaded[label]['counts']['samples']} samples)" for label, folder in labeled]  # fmt: skip
    lines += ["", _uncertainty_note(uncertainty["interval_method"]), "", "## Reference points per category (x100)", "",
              f"Paper ablation rows (Table 4): {'; '.join(ABLATION_ROWS)}; "
              f"{paper_note([data_source(r) for r in loaded.values()])}.", "",
              markdown_table("category", evaluated, references), "", "![categories](compare.png)"]  # fmt: skip
    pairs = list(itertools.combinations(labels, 2))
    for scorer in SCORERS:
        cat_columns: list[Column] = [(label, category_scores(loaded[label]["scores"][scorer])) for label in labels]
        task_columns: list[Column] = [(label, task_scores(loaded[label]["scores"][scorer])) for label in labels]
        tasks = sorted({t for _, values in task_columns for t in values})
        record["scores"][scorer] = {
            "categories": {label: values for label, values in cat_columns},
            "tasks": {label: values for label, values in task_columns},
        }
        cells = [(label, _cells(intervals, scorer, label)) for label in labels]
        lines += ["", f"## Categories, {scorer} (x100)", "",
                  markdown_table("category", ["overall", *evaluated], cells)]  # fmt: skip
        if pairs:
            # one row per pair, one column per level: as many columns as scored levels, however many models
            names = list(dict.fromkeys(r["name"] for r in paired if r["scorer"] == scorer))
            differences = [(name, {f"{r['a']} - {r['b']}": format_difference(r, bold=False) for r in paired
                            if (r["scorer"], r["name"]) == (scorer, name)}) for name in names]  # fmt: skip
            lines += ["", f"## Exploratory, unadjusted: paired differences, {scorer} (x100)", "",
                      f"Every pair at every level, {len(pairs)} pairs x {len(names)} levels: a - b on the samples both "
                      f"answered, diff [low, high] of the {bootstrap.confidence:.0%} paired bootstrap interval, p of a "
                      "two-sided sign-flip permutation test, (n). Not adjusted for the number of tests, so none is "
                      "marked: at p < 0.05 about one in twenty differs by chance alone. The answers are the declared "
                      "contrasts above.", *_pairing_notes(uncertainty["paired_samples"]), "",
                      markdown_table("a - b", [f"{a} - {b}" for a, b in pairs], differences)]  # fmt: skip
        lines += ["", f"## Tasks, {scorer} (x100)", "", markdown_table("task", tasks, cells)]
        if scorer == "parity":
            bounds = {label: _bounds(intervals, scorer, label) for label in labels}
            plot_categories(Path(out) / "compare.png", cat_columns + ablations, "DEMON categories (parity)", bounds,
                            evaluated)  # fmt: skip
    atomic.write_text(Path(out) / "compare.md", "\n".join(lines) + "\n")
    atomic.write_json(Path(out) / "compare.json", record)
    return record
