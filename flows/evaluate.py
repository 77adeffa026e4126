"""Stages `evaluate`, `merge` and `report`: a model's answers on DEMON, scored by both scorers, one task group
(category) per run; the merge of a model's groups into one bundle; the side-by-side report of several models.

    python -m flows.evaluate group NAME VIEW GROUP -> <evaluate.out>/groups/NAME/VIEW/GROUP,
                                                      metrics/evaluate/NAME-VIEW-GROUP.json
    python -m flows.evaluate merge NAME VIEW       -> <evaluate.out>/models/NAME/VIEW, metrics/evaluate-NAME-VIEW.json
    python -m flows.evaluate compare               -> <evaluate.report>: every model of evaluate.models in every view

params.yaml keys read:
  experiment                 experiments/<experiment>.yaml, whose `eval:` section sets decoding and batching
  data.normalized            the normalized DEMON folder
  evaluate.out, evaluate.report
  evaluate.limit             samples per task (null: all), overrides eval.limit
  evaluate.batch_size        overrides eval.batch_size
  evaluate.groups.<GROUP>    the categories of a task group (one DVC stage per model and group); `all`: every one
  evaluate.models.<NAME>     the model spec: a string (experiment config, checkpoint folder, models:/name@alias,
                             hf:<id>) or {model: <spec>, vpgc: on|off}
  evaluate.views             `images` (the model as it is) and `blind` (its control: every image replaced by a
                             blank one of the same size); each model is evaluated, merged and reported per view
  evaluate.contrasts         the comparisons the report answers, `model[view] - model[view]`, Holm-adjusted as one
                             family (null: each VPG-C variant - backbone, synthetic - captions, each model - blind)
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import mlflow
from prefect import flow

from components.errors import UserError
from components.evaluation.bundle import merge_bundles
from components.evaluation.bundle_report import compare_bundles
from components.evaluation.contrasts import label
from components.evaluation.evaluate import evaluate
from components.evaluation.settings import load_eval_settings
from components.experiment import load_experiment
from components.params import eval_overrides
from components.tracking.evaluated import track_evaluation
from components.tracking.runs import write_metrics
from flows.entry import stage_main
from flows.params import load_params
from flows.tracking import tracked_stage

ARTIFACTS = ("results.json", "report.md", "categories.png")
VIEWS = ("images", "blind")


def bundle_metrics(results: dict) -> dict[str, Any]:
    """Category and task scores (x100) of both scorers, plus counts; categories without a scored task left out.
    Beside them the overall score and the 95% interval bounds (`parity.overall_ci.low`,
    `parity.categories_ci.<category>.high`, ...) where an interval is defined."""
    metrics: dict[str, Any] = {}
    for scorer, summary in results["scores"].items():
        metrics[scorer] = {
            "categories": {c: r["score_x100"] for c, r in summary["categories"].items() if r["score_x100"] is not None},
            "tasks": {t: r["score_x100"] for t, r in summary["tasks"].items()},
            "categories_ci": {},
        }
    for r in results["intervals"]:
        bounds = {"low": r["ci_low"], "high": r["ci_high"]} if r["ci_low"] is not None else None
        if r["level"] == "overall":
            metrics[r["scorer"]].update(overall=r["score"], **({"overall_ci": bounds} if bounds else {}))
        elif r["level"] == "category" and bounds:
            metrics[r["scorer"]]["categories_ci"][r["name"]] = bounds
    counts = results["counts"]
    metrics.update(samples=counts["samples"], errors=counts["errors"], empty=counts["empty"])
    return metrics


def run_metrics(run: dict) -> dict[str, float]:
    """How an evaluation went (`results["run"]`), for MLflow only: answers generated and cached, `timing.<key>`.
    Not DVC metrics: they differ between two runs of the same evaluation, whose outputs must not."""
    numbers = {key: run[key] for key in ("generated", "cached") if key in run}
    timing = run.get("timing", {})
    return numbers | {f"timing.{key}": value for key, value in timing.items() if isinstance(value, int | float)}


def _log_bundle(out: Path, results: dict, metrics: str | None, name: str | None, attach: bool) -> None:
    """The bundle's files, scores and what it evaluated on the active run; `attach`: its headline scores on the
    model's logged model too (one model's whole evaluation in one view: a merged bundle)."""
    for artifact in ARTIFACTS:
        if (out / artifact).is_file():
            mlflow.log_artifact(str(out / artifact))
    mlflow.set_tag("demonlab.model_fingerprint", results["model"]["fingerprint"])
    mlflow.log_dict(results["run"], "run.json")  # when, commit, command, timing per rank: kept out of the bundle
    if numbers := run_metrics(results["run"]):
        mlflow.log_metrics(numbers)
    scores = bundle_metrics(results)
    if metrics:
        write_metrics(Path(metrics), scores)
    track_evaluation(results, name, scores if attach else None)


@flow(name="evaluate-model")
def evaluate_model(
    model: str,
    data: str,
    out: str,
    experiment: str | None = None,
    group: str | None = None,
    categories: list[str] | None = None,
    vpgc: bool | None = None,
    blind: bool = False,
    overrides: dict | None = None,
    metrics: str | None = None,
    name: str | None = None,
) -> dict:
    """Evaluate `model` on the samples of `data` (only `categories` when given; `group` names them) into the
    bundle `out`; `blind` withholds the images (the blind control); `overrides` are merged into the experiment
    document (e.g. `{"eval": {"limit": 2}}`); `name`: the model's name in evaluate.models, for MLflow."""
    params = {"model": model, "data": data, "out": out, "experiment": experiment, "group": group,
              "categories": categories, "vpgc": vpgc, "blind": blind}  # fmt: skip
    with tracked_stage("evaluate", {**params, "overrides": overrides or {}}, experiment=experiment):
        document = load_experiment(experiment, overrides) if experiment else dict(overrides or {})
        settings = load_eval_settings(document, experiment or "overrides")
        results = evaluate(
            model,
            Path(data),
            Path(out),
            settings,
            categories=categories,
            vpgc=vpgc,
            blind=blind,
            experiment=experiment,
        )
        _log_bundle(Path(out), results, metrics, name, attach=False)
    return results["counts"]


@flow(name="merge-evaluations")
def merge_evaluations(bundles: list[str], out: str, metrics: str | None = None, name: str | None = None) -> dict:
    """Merge the task-group bundles of one model (`name` in evaluate.models) into one bundle, with its scores
    tracked on the run and on the model's logged model."""
    with tracked_stage("evaluate-merge", {"bundles": bundles, "out": out}):
        results = merge_bundles([Path(b) for b in bundles], Path(out))
        _log_bundle(Path(out), results, metrics, name, attach=True)
    return results["counts"]


@flow(name="compare-evaluations")
def compare_evaluations(
    bundles: dict[str, str],
    out: str,
    floors: dict[str, dict[str, float]] | None = None,
    contrasts: list[str] | None = None,
) -> dict:
    """A side-by-side report of several models' bundles ({label: folder}), with the baselines' category scores
    ({baseline: {category: x100}}) as the floors to read them against, led by the answers to `contrasts`
    (`model[view] - model[view]`; None: the ablation's default family)."""
    with tracked_stage("evaluate-compare", {"bundles": bundles, "out": out, "contrasts": contrasts}):
        labeled = [(name, Path(folder)) for name, folder in bundles.items()]
        record = compare_bundles(
            labeled, Path(out), floors=floors, contrasts=contrasts, where="params.yaml evaluate.contrasts"
        )
        for name in ("compare.md", "compare.png", "compare.json"):
            mlflow.log_artifact(str(Path(out) / name))
    return record


def model_spec(p: dict, name: str) -> tuple[str, bool | None]:
    """(spec, vpgc switch) of `evaluate.models.<name>` in params.yaml."""
    models = p.get("evaluate", {}).get("models") or {}
    if name not in models:
        raise UserError(f"params.yaml: no evaluate.models.{name}; known: {sorted(models)}")
    entry = models[name]
    if isinstance(entry, str):
        return entry, None
    if isinstance(entry, dict) and isinstance(entry.get("model"), str) and set(entry) <= {"model", "vpgc"}:
        vpgc = entry.get("vpgc")
        if vpgc not in (None, "on", "off", True, False):
            raise UserError(f"params.yaml: evaluate.models.{name}.vpgc must be on or off, not {vpgc!r}")
        return entry["model"], None if vpgc is None else vpgc in ("on", True)
    raise UserError(f"params.yaml: evaluate.models.{name} must be a spec string or {{model: SPEC, vpgc: on|off}}")


def baseline_floors(p: dict) -> dict[str, dict[str, float]]:
    """{baseline kind: {category: parity score x100}} from the score stages' summaries (absent ones left out)."""
    floors = {}
    for kind in (p.get("baseline") or {}).get("kinds") or []:
        summary = Path(p["score"]["out"]) / kind / "parity" / "summary.json"
        if summary.is_file():
            categories = json.loads(summary.read_text(encoding="utf-8"))["categories"]
            floors[kind] = {name: row["score_x100"] for name, row in categories.items()
                            if row["score_x100"] is not None}  # fmt: skip
    return floors


def main() -> None:
    parser = argparse.ArgumentParser(description="Run an evaluation stage with the settings of params.yaml.")
    steps = parser.add_subparsers(dest="step", required=True)
    one = steps.add_parser("group", help="one model (evaluate.models) in one view on one task group")
    one.add_argument("model_name")
    one.add_argument("view", choices=VIEWS)
    one.add_argument("group")
    merge = steps.add_parser("merge", help="merge a model's group bundles of one view into one")
    merge.add_argument("model_name")
    merge.add_argument("view", choices=VIEWS)
    steps.add_parser("compare", help="side-by-side report of every model in evaluate.models, in every view")
    args = parser.parse_args()
    p = load_params()
    section = p.get("evaluate") or {}
    out = Path(section.get("out", "data/eval"))
    if args.step == "compare":
        bundles = {label(name, view): str(out / "models" / name / view) for view in section.get("views") or ["images"]
                   for name in section.get("models") or {}}  # fmt: skip
        compare_evaluations(
            bundles, section.get("report", "data/report"), floors=baseline_floors(p), contrasts=section.get("contrasts")
        )
    elif args.step == "merge":
        groups = [out / "groups" / args.model_name / args.view / name for name in section.get("groups") or {}]
        found = [str(g) for g in groups if (g / "results.json").is_file()]
        merged = out / "models" / args.model_name / args.view
        merge_evaluations(found, str(merged), f"metrics/evaluate-{args.model_name}-{args.view}.json", args.model_name)
    else:
        spec, vpgc = model_spec(p, args.model_name)
        groups = section.get("groups") or {}
        if args.group not in groups:
            raise UserError(f"params.yaml: evaluate.groups has no {args.group!r}; known: {sorted(groups)}")
        overrides = eval_overrides(section)
        evaluate_model(
            spec,
            p["data"]["normalized"],
            str(out / "groups" / args.model_name / args.view / args.group),
            experiment=f"experiments/{p['experiment']}.yaml",
            group=args.group,
            categories=None if groups[args.group] == "all" else list(groups[args.group]),
            vpgc=vpgc,
            blind=args.view == "blind",
            overrides=overrides,
            metrics=f"metrics/evaluate/{args.model_name}-{args.view}-{args.group}.json",
            name=args.model_name,
        )


if __name__ == "__main__":
    stage_main(main)
