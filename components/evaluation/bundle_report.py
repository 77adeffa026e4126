"""Human-readable reports of evaluation bundles: one bundle beside the paper (and earlier MLflow runs), or several
bundles side by side (the ablation: backbone only, VPG-C on captions, VPG-C with synthetic training).

Scores are x100, category = unweighted mean of its task scores, as the paper reports them. A category missing
tasks is marked `*`: its mean covers the scored tasks only and is not comparable with the paper's number.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from components import atomic
from components.demon.registry import categories
from components.errors import UserError
from components.evaluation.report import HEADLINE_MODELS, paper_category_scores, paper_task_scores
from components.evaluation.scorers import SCORERS

# Paper rows (Table 4) that correspond to the three ablation models the pipeline evaluates.
ABLATION_ROWS = (
    "Ablation 1: backbone only (Q-Former + LLM)",
    "Ablation 3: + VPG-C trained on captions only",
    "Ablation 4: + synthetic discriminative training (full VPG-C)",
)
Column = tuple[str, Mapping[str, float | None]]  # (header, {row key: value x100 or None})


def _fmt(value: float | None) -> str:
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


def plot_categories(path: Path, columns: Sequence[Column], title: str) -> None:
    """Grouped horizontal bars: one group per category, one bar per column (missing values left out)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(categories())
    height = 0.8 / max(len(columns), 1)
    figure, axis = plt.subplots(figsize=(9, 1.0 + 0.45 * len(names) * max(1, len(columns) / 3)))
    for k, (label, values) in enumerate(columns):
        ys = [i + k * height for i, c in enumerate(names) if values.get(c) is not None]
        xs = [values[c] for c in names if values.get(c) is not None]
        axis.barh(ys, xs, height=height, label=label)
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
        f"- data: `{data.get('path')}` (samples.parquet sha256 `{str(data.get('samples_sha256'))[:16]}`), "
        f"limit per task: {results.get('selection', {}).get('limit')}",
        f"- samples: {counts['samples']} in {len(counts['tasks'])} tasks; answered {counts['answered']}, "
        f"errors {counts['errors']}, empty answers {counts['empty']}; cached {counts['cached']}, "
        f"generated {counts['generated']}",
        f"- git commit `{provenance.get('git_commit')}`; versions: "
        + ", ".join(f"{k} {v}" for k, v in provenance.get("versions", {}).items()),
    ]
    return lines


def write_report(out: Path, results: Mapping[str, Any]) -> None:
    """`report.md` and `categories.png` for one bundle: both scorers beside the paper and any compared run."""
    scores = results["scores"]
    paper_categories, paper_tasks = paper_category_scores(), paper_task_scores()
    compared = results.get("compare_runs", {})
    cat_columns: list[Column] = [(f"ours ({s})", category_scores(scores[s])) for s in SCORERS]
    task_columns: list[Column] = [(f"ours ({s})", task_scores(scores[s])) for s in SCORERS]
    for run_id, run in compared.items():
        for scorer in SCORERS:
            if scorer in run:
                cat_columns.append((f"run {run_id[:8]} ({scorer})", run[scorer].get("categories", {})))
                task_columns.append((f"run {run_id[:8]} ({scorer})", run[scorer].get("tasks", {})))
    paper_cat = [(label, {c: paper_categories[c].get(m) for c in categories()}) for m, label in
                 HEADLINE_MODELS.items()]  # fmt: skip
    paper_task = [(label, {t: row.get(m) for t, row in paper_tasks.items()}) for m, label in
                  HEADLINE_MODELS.items()]  # fmt: skip
    task_names = sorted(scores["parity"]["tasks"] | scores["strict"]["tasks"])
    task_labels = {t: f"{t} ({scores['parity']['tasks'].get(t, scores['strict']['tasks'].get(t))['n']})" for t in
                   task_names}  # fmt: skip
    lines = [
        f"# DEMON evaluation: `{results.get('model', {}).get('spec')}`",
        "",
        *_describe(results),
        "",
        "## Category scores (x100)",
        "",
        "parity = the official scorer's algorithm (compare with the paper); strict = explicit answer extraction "
        "(no silent option 0). Paper: Table 2. `*` = tasks missing, not comparable with the paper.",
        "",
        markdown_table(
            "category (tasks)", list(categories()), cat_columns + paper_cat, _category_labels(scores["parity"])
        ),
        "",
        "![category scores](categories.png)",
        "",
        "## Task scores (x100)",
        "",
        markdown_table("task (n)", task_names, task_columns + paper_task, task_labels),
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
    plot_categories(Path(out) / "categories.png", cat_columns + paper_cat, "DEMON category scores")


def compare_bundles(labeled: Sequence[tuple[str, Path]], out: Path) -> dict:
    """A side-by-side report of several bundles (`compare.md`, `compare.png`, `compare.json`) beside the paper's
    ablation rows; returns compare.json's content."""
    from components.evaluation.bundle import read_bundle

    if len(labeled) < 1:
        raise UserError("compare: give at least one --bundle LABEL=DIR")
    labels = [label for label, _ in labeled]
    if len(set(labels)) != len(labels):
        raise UserError(f"compare: labels must differ, got {labels}")
    loaded = {label: read_bundle(folder)[0] for label, folder in labeled}
    paper = paper_category_scores()
    ablations: list[Column] = [
        (f"paper: {row.split(':')[0]}", {c: paper[c].get(row) for c in categories()}) for row in ABLATION_ROWS
    ]
    record: dict[str, Any] = {"bundles": {label: str(folder) for label, folder in labeled}, "scores": {}}
    lines = ["# DEMON: side-by-side", ""]
    lines += [f"- **{label}**: `{folder}` (model `{loaded[label].get('model', {}).get('spec')}`, "
              f"{loaded[label]['counts']['samples']} samples)" for label, folder in labeled]  # fmt: skip
    lines += ["", "Paper ablation rows (Table 4): " + "; ".join(ABLATION_ROWS) + ".", "", "![categories](compare.png)"]
    for scorer in SCORERS:
        cat_columns: list[Column] = [(label, category_scores(loaded[label]["scores"][scorer])) for label in labels]
        task_columns: list[Column] = [(label, task_scores(loaded[label]["scores"][scorer])) for label in labels]
        tasks = sorted({t for _, values in task_columns for t in values})
        record["scores"][scorer] = {
            "categories": {label: values for label, values in cat_columns},
            "tasks": {label: values for label, values in task_columns},
        }
        lines += ["", f"## Categories, {scorer} (x100)", "", markdown_table("category", list(categories()),
                  cat_columns + (ablations if scorer == "parity" else []))]  # fmt: skip
        lines += ["", f"## Tasks, {scorer} (x100)", "", markdown_table("task", tasks, task_columns)]
        if scorer == "parity":
            plot_categories(Path(out) / "compare.png", cat_columns + ablations, "DEMON categories (parity)")
    atomic.write_text(Path(out) / "compare.md", "\n".join(lines) + "\n")
    atomic.write_json(Path(out) / "compare.json", record)
    return record
