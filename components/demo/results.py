"""Evaluation bundles in the Results tab: one bundle, or two compared sample by sample.

    read_bundle(folder)  -> results.json + samples.jsonl rows (uid, task, category, output, response, scores, ...)
    results.json data.path (the normalized DEMON folder) -> each sample's instruction and images, by uid
    table(a, b, filters) -> one row per (shared) sample: scores of A and B on one scorer, B - A, filtered and sorted

Per-sample scores are shown x100, as the reports show task scores. Images are read only from inside the dataset
root of the bundle's data (`report.json` `raw_root`): a path in the data that leaves it (`..`, absolute, a symlink
out) is refused, so a crafted data file cannot make the page show other files of the machine.

MLflow: a bundle whose results.json records `provenance.mlflow_run_id` links that run; otherwise the tracking store
(`tracking_uri()`) is searched for runs tagged with the bundle's `demonlab.model_fingerprint` (the evaluate stage
sets it), newest first, and the page links the newest and the search for all of them.
"""

from __future__ import annotations

import html
import re
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from PIL import Image

from components.errors import UserError
from components.evaluation.bundle import RESULTS_FILE, SAMPLES_FILE, read_bundle
from components.evaluation.scorers import SCORERS

FINGERPRINT_TAG = "demonlab.model_fingerprint"  # set by flows/evaluate.py on every evaluate and merge run
SORTS = ("task, sample", "score of A, lowest first", "B - A, largest first", "B - A, smallest first")
ALL = "(all)"


@dataclass
class Bundle:
    folder: Path
    results: dict[str, Any]
    rows: dict[str, dict[str, Any]]  # samples.jsonl rows by uid
    samples: dict[str, dict[str, Any]] = field(default_factory=dict)  # the data's rows by uid (when found)
    image_root: Path | None = None
    note: str = ""  # why instructions and images are missing, when they are
    mlflow: str = ""  # markdown: the MLflow run(s) of this bundle's model

    @property
    def label(self) -> str:
        model = self.results.get("model", {})
        blind = " (blind)" if model.get("blind") else ""
        return f"{model.get('spec', self.folder.name)}{blind}"


def open_bundle(folder: str | Path, mlflow_ui: str) -> Bundle:
    """A bundle with its samples' instructions and images where its data folder is found."""
    from components.demon.normalize import load_samples

    folder = Path(str(folder).strip()).expanduser()
    if not folder.is_dir():
        raise UserError(f"{folder}: no such folder; give a bundle folder (results.json + samples.jsonl)")
    results, rows = read_bundle(folder)
    bundle = Bundle(folder, results, {row["uid"]: row for row in rows})
    data = Path(results.get("data", {}).get("path") or "")
    try:
        frame, root = load_samples(data)
    except (UserError, OSError, ValueError) as error:  # pyarrow's errors on a damaged file are ValueErrors
        bundle.note = f"instructions and images are not shown: the bundle's data {data} cannot be read ({error})"
    else:
        frame = frame[frame["uid"].isin(bundle.rows)]
        bundle.samples = {row["uid"]: row for row in frame.to_dict("records")}
        bundle.image_root = root
    bundle.mlflow = mlflow_markdown(results, mlflow_ui)
    return bundle


def find_bundles(base: Path) -> list[str]:
    """Bundle folders under `base` (e.g. data/eval), sorted."""
    if not base.is_dir():
        return []
    return sorted(str(p.parent) for p in base.rglob(RESULTS_FILE) if (p.parent / SAMPLES_FILE).is_file())


def inside(root: Path, relative: str) -> Path:
    """`root / relative`, refused unless it stays inside `root` once `..` and symlinks are resolved."""
    path = (root / relative).resolve()
    if not path.is_relative_to(root.resolve()):
        raise UserError(f"{relative!r} leaves the bundle's dataset root {root}; not shown")
    return path


def sample_images(bundle: Bundle, uid: str) -> list[tuple[Image.Image, str]]:
    """The sample's images (decoded, so only pixels reach the page), captioned {image#k}."""
    sample = bundle.samples.get(uid)
    if sample is None or bundle.image_root is None:
        return []
    shown = []
    for k, relative in enumerate(sample["images"], 1):
        with Image.open(inside(bundle.image_root, relative)) as image:
            shown.append((image.convert("RGB"), f"{{image#{k}}}"))
    return shown


def _score(row: dict[str, Any] | None, scorer: str) -> float | None:
    value = None if row is None else row.get("scores", {}).get(scorer)
    return None if value is None else round(100 * value, 2)


def table(
    a: Bundle,
    b: Bundle | None,
    scorer: str,
    category: str = ALL,
    task: str = ALL,
    score_range: tuple[float, float] = (0, 100),
    sort: str = SORTS[0],
) -> pd.DataFrame:
    """One row per sample of A (per sample both bundles hold, when comparing), filtered by category, task and A's
    score on `scorer` (x100, inclusive range), sorted as `sort` names."""
    if scorer not in SCORERS:
        raise UserError(f"scorer {scorer!r}: pick one of {list(SCORERS)}")
    low, high = score_range
    records = []
    for uid, row in a.rows.items():
        other = b.rows.get(uid) if b is not None else None
        if b is not None and other is None:
            continue
        if category not in (ALL, row["category"]) or task not in (ALL, row["task"]):
            continue
        score = _score(row, scorer)
        if score is None or not low <= score <= high:
            continue
        record = {"uid": uid, "task": row["task"], "category": row["category"], "A": score}
        if b is not None:
            record["B"] = _score(other, scorer)
            record["B - A"] = None if record["B"] is None else round(record["B"] - score, 2)
        records.append(record)
    columns = ["uid", "task", "category", "A"] + (["B", "B - A"] if b is not None else [])
    frame = pd.DataFrame(records, columns=columns)
    if sort.startswith("B - A") and b is not None:
        return frame.sort_values(
            ["B - A", "uid"], ascending=[sort.endswith("smallest first"), True], na_position="last", ignore_index=True
        )
    if sort.startswith("score of A"):
        return frame.sort_values(["A", "uid"], ignore_index=True)
    return frame.sort_values(["task", "uid"], ignore_index=True)


def choices(bundle: Bundle) -> tuple[list[str], list[str]]:
    """The categories and tasks of a bundle, for the filters."""
    rows = bundle.rows.values()
    return sorted({r["category"] for r in rows}), sorted({r["task"] for r in rows})


def verbatim(text: str) -> str:
    """`text` escaped for markdown, so it shows as written: a model's `<Img>` or `*` is text, not markup."""
    return re.sub(r"([\\`*_{}\[\]()#+\-.!|~])", r"\\\1", html.escape(text, quote=False))


def quoted(text: str) -> str:
    """`text` verbatim in a markdown block quote: it wraps long lines, and a line break stays inside it."""
    return "> " + verbatim(text).replace("\n", "\n> ")


def _prediction(name: str, bundle: Bundle, row: dict[str, Any]) -> list[str]:
    scores = ", ".join(f"{scorer} {_score(row, scorer)}" for scorer in SCORERS)
    lines = [f"**{name}: {bundle.label}** ({scores})", "", quoted(row["output"] or "(no answer)")]
    if row.get("answer") is not None and row.get("answer") != row.get("output"):
        lines.append(f"\nextracted answer: `{row['answer']}` (rule: {row.get('rule')})")
    if row.get("error"):
        lines.append(f"\nerror: {row['error']}")
    if bundle.mlflow:
        lines.append(f"\n{bundle.mlflow}")
    return lines


def sample_markdown(a: Bundle, b: Bundle | None, uid: str) -> str:
    """The sample's instruction, options and ground truth, and each bundle's prediction with both scores."""
    from components.demon.schema import official_prompt

    row = a.rows.get(uid)
    if row is None:
        raise UserError(f"{uid}: not a sample of {a.folder}")
    lines = [f"### {uid}", f"{row['category']} / {row['task']} ({row['question_type']})", ""]
    sample = a.samples.get(uid)
    lines += ["**Instruction** (as the model got it)", "", quoted(official_prompt(sample))] if sample else [a.note]
    if row.get("choice_list"):
        lines.append("**Options:** " + " | ".join(f"`{c}`" for c in row["choice_list"]))
    lines += ["", f"**Ground truth:** {verbatim(row['response'])}", ""]
    lines += _prediction("A", a, row)
    if b is not None and uid in b.rows:
        lines += ["", *_prediction("B", b, b.rows[uid])]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------------ MLflow


def mlflow_markdown(results: dict[str, Any], ui: str) -> str:
    """Links to the bundle's MLflow run: recorded, else found by the model fingerprint tag (see the docstring)."""
    run_id = results.get("provenance", {}).get("mlflow_run_id")
    if run_id:
        return f"MLflow: [run {run_id[:8]}]({ui}/#/runs/{run_id})"
    fingerprint = results.get("model", {}).get("fingerprint")
    if not fingerprint:
        return ""
    search = f"tags.`{FINGERPRINT_TAG}` = '{fingerprint}'"
    experiment, runs = fingerprint_runs(search)
    if experiment is None:
        return f"MLflow: no project runs in the tracking store here; search the MLflow UI for `{search}`"
    link = f"{ui}/#/experiments/{experiment}/runs?searchFilter={urllib.parse.quote(search)}"
    if not runs:
        return f"MLflow: no run is tagged with this model's fingerprint ([search]({link}))"
    return f"MLflow: [run {runs[0][:8]}]({ui}/#/runs/{runs[0]}) (newest of [{len(runs)} with this model]({link}))"


def fingerprint_runs(search: str) -> tuple[str | None, Sequence[str]]:
    """(the project experiment's id, run ids matching `search`, newest first); (None, []) without a store.

    An embedded SQLite store that does not exist is not created: opening the page must not write anything."""
    from components.tracking.runs import EXPERIMENT, tracking_uri

    uri = tracking_uri()
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_file():
        return None, []
    import mlflow

    try:
        client = mlflow.MlflowClient(uri)
        experiment = client.get_experiment_by_name(EXPERIMENT)
        if experiment is None:
            return None, []
        runs = client.search_runs([experiment.experiment_id], search, order_by=["attributes.start_time DESC"])
    except mlflow.exceptions.MlflowException:
        return None, []
    return experiment.experiment_id, [run.info.run_id for run in runs]
