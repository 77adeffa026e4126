"""The comparison a pipeline run ends with, in MLflow: a saved view of the evaluated runs that opens on what differs
between them and their headline score, and the report on the pipeline's parent run.

MLflow's compare-runs page picks its own parallel-coordinates axes (the first three differing params in name order)
and takes none from its URL. Its runs page does take a whole view from the URL: a view state saved as the experiment
tag `mlflow.sharedViewState.<key>` (what its Share button writes), opened with `?viewStateShareKey=<key>`. The view
saved here holds the evaluated runs only, and charts of (1) the params that differ between them against the headline
score and its 95% interval (parallel coordinates), (2) the headline score per run, (3) MLflow's difference view with
"show differences only" on. MLflow draws no error bars; the report's figure (scores with intervals per model) is on
the parent run.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Sequence
from pathlib import Path

import mlflow

from components.tracking.evaluated import HEADLINE, INTERVAL, MODEL_PARAMS

VIEW_TAG = "mlflow.sharedViewState."  # MLflow's prefix for a shared view's experiment tag
REPORT_FILES = ("compare.md", "compare.json", "compare.png")
DESCRIPTION_TAG = "mlflow.note.content"  # a run's description in MLflow's UI


def differing_params(runs: Sequence[mlflow.entities.Run]) -> list[str]:
    """The model and evaluation params (`evaluated.MODEL_PARAMS`) every run has and not all with the same value."""
    shared = set.intersection(*(set(run.data.params) for run in runs)) if runs else set()
    keys = sorted(key for key in shared if key.startswith(MODEL_PARAMS))
    return [key for key in keys if len({run.data.params[key] for run in runs}) > 1]


def share_comparison(experiment_id: str, run_ids: Sequence[str]) -> str:
    """Save the comparison view of `run_ids` in the experiment; the URL path (after the UI's address) opening it.
    The key is a function of the runs, so the same runs reuse one tag."""
    client = mlflow.MlflowClient()
    runs = [client.get_run(run_id) for run_id in run_ids]
    params = differing_params(runs) or ["model.name"]
    names = ("What made the difference", "What differs")
    sections = {name: str(uuid.uuid5(uuid.NAMESPACE_URL, name)) for name in names}

    def card(kind: str, section: str, **fields: object) -> dict:
        return {"uuid": str(uuid.uuid5(uuid.NAMESPACE_URL, section + kind)), "type": kind, "runsCountToCompare": 10,
                "metricSectionId": sections[section], "deleted": False, "isGenerated": False, **fields}  # fmt: skip

    state = {
        "searchFilter": "attributes.run_id IN (" + ", ".join(f"'{run_id}'" for run_id in run_ids) + ")",
        "orderByKey": "attributes.run_name",
        "orderByAsc": True,
        "compareRunSections": [
            {
                "uuid": uid,
                "name": name,
                "display": True,
                "isReordered": False,
                "deleted": False,
                "isGenerated": False,
                "columns": columns,
                "cardHeight": 440,
            }
            for (name, uid), columns in zip(sections.items(), (2, 1), strict=True)
        ],
        "compareRunCharts": [
            card(
                "PARALLEL",
                "What made the difference",
                selectedParams=params,
                selectedMetrics=[INTERVAL[0], HEADLINE, INTERVAL[1]],
                showAllRuns=False,
            ),
            card("BAR", "What made the difference", metricKey=HEADLINE),
            card(
                "DIFFERENCE",
                "What differs",
                compareGroups=["Parameters", "Model metrics"],
                chartName="What differs between the runs",
                showChangeFromBaseline=False,
                showDifferencesOnly=True,
                baselineColumnUuid="",
            ),
        ],
        "isAccordionReordered": True,  # our sections first, MLflow's generated ones after
        "hideEmptyCharts": True,
    }
    key = "demonlab-" + hashlib.sha256(",".join(sorted(run_ids)).encode()).hexdigest()[:16]
    client.set_experiment_tag(experiment_id, VIEW_TAG + key, json.dumps(state, separators=(",", ":")))
    return f"/#/experiments/{experiment_id}/runs?viewStateShareKey={key}&compareRunsMode=CHART"


def finding(record: dict) -> str:
    """compare.json's result in one line: the first declared contrast's answer (the paper's question) and the best
    model's overall score with its interval."""
    from components.evaluation.contrasts import sentences
    from components.evaluation.intervals import format_interval

    overall = [r for r in record.get("intervals", [])
               if (r["scorer"], r["level"]) == ("parity", "overall") and r["score"] is not None]  # fmt: skip
    best = max(overall, key=lambda r: r["score"], default=None)
    answers = sentences(record["contrasts"], figures="parity") if record.get("contrasts") else []
    parts = answers[:1] + ([f"best overall (parity x100): {best['model']} {format_interval(best)}"] if best else [])
    return "; ".join(parts) or "no model was scored"


def publish_report(parent_id: str, folder: Path) -> None:
    """The report's files as artifacts of the pipeline's parent run (`report/`), and its finding as the run's
    description; nothing when the pipeline has no report."""
    if not (Path(folder) / "compare.json").is_file():
        return
    client = mlflow.MlflowClient()
    for name in REPORT_FILES:
        if (Path(folder) / name).is_file():
            client.log_artifact(parent_id, str(Path(folder) / name), "report")
    record = json.loads((Path(folder) / "compare.json").read_text(encoding="utf-8"))
    client.set_tag(parent_id, DESCRIPTION_TAG, finding(record))
