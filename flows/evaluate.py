"""Stages `evaluate`, `merge` and `report`: a model's answers on DEMON, scored by both scorers, one task group
(category) per run; the merge of a model's groups into one bundle; the side-by-side report of several models.

    python -m flows.evaluate group NAME SLUG    -> <evaluate.out>/groups/NAME/SLUG, metrics/evaluate/NAME-SLUG.json
    python -m flows.evaluate merge NAME         -> <evaluate.out>/models/NAME, metrics/evaluate-NAME.json
    python -m flows.evaluate compare            -> <evaluate.report> (every model of evaluate.models, in order)

params.yaml keys read:
  experiment                 experiments/<experiment>.yaml, whose `eval:` section sets decoding and batching
  data.normalized            the normalized DEMON folder
  evaluate.out, evaluate.report
  evaluate.limit             samples per task (null: all), overrides eval.limit
  evaluate.batch_size        overrides eval.batch_size
  evaluate.groups.<GROUP>    the categories of a task group (one DVC stage per model and group)
  evaluate.models.<NAME>     the model spec: a string (experiment config, checkpoint folder, models:/name@alias,
                             hf:<id>) or {model: <spec>, vpgc: on|off, blind: true|false}; blind = the model's
                             blind control (images replaced by blank ones of the same size)
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import mlflow
from prefect import flow

from components.errors import UserError
from components.evaluation.bundle import merge_bundles
from components.evaluation.bundle_report import compare_bundles
from components.evaluation.evaluate import evaluate
from components.evaluation.settings import load_eval_settings
from components.experiment import load_experiment
from components.tracking.runs import write_metrics
from flows.entry import stage_main
from flows.params import load_params
from flows.tracking import tracked_stage

ARTIFACTS = ("results.json", "report.md", "categories.png")


def bundle_metrics(results: dict) -> dict[str, Any]:
    """Category and task scores (x100) of both scorers, plus counts; categories without a scored task left out."""
    metrics: dict[str, Any] = {}
    for scorer, summary in results["scores"].items():
        metrics[scorer] = {
            "categories": {c: r["score_x100"] for c, r in summary["categories"].items() if r["score_x100"] is not None},
            "tasks": {t: r["score_x100"] for t, r in summary["tasks"].items()},
        }
    counts = results["counts"]
    metrics.update(samples=counts["samples"], errors=counts["errors"], empty=counts["empty"], cached=counts["cached"])
    return metrics


def _log_bundle(out: Path, results: dict, metrics: str | None) -> None:
    for name in ARTIFACTS:
        if (out / name).is_file():
            mlflow.log_artifact(str(out / name))
    mlflow.set_tag("demonlab.model_fingerprint", results["model"]["fingerprint"])
    if metrics:
        write_metrics(Path(metrics), bundle_metrics(results))


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
) -> dict:
    """Evaluate `model` on the samples of `data` (only `categories` when given; `group` names them) into the
    bundle `out`; `blind` withholds the images (the blind control); `overrides` are merged into the experiment
    document (e.g. `{"eval": {"limit": 2}}`)."""
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
        _log_bundle(Path(out), results, metrics)
    return results["counts"]


@flow(name="merge-evaluations")
def merge_evaluations(bundles: list[str], out: str, metrics: str | None = None) -> dict:
    """Merge the task-group bundles of one model into one bundle, with its scores tracked."""
    with tracked_stage("evaluate-merge", {"bundles": bundles, "out": out}):
        results = merge_bundles([Path(b) for b in bundles], Path(out))
        _log_bundle(Path(out), results, metrics)
    return results["counts"]


@flow(name="compare-evaluations")
def compare_evaluations(bundles: dict[str, str], out: str) -> dict:
    """A side-by-side report of several models' bundles ({label: folder})."""
    with tracked_stage("evaluate-compare", {"bundles": bundles, "out": out}):
        record = compare_bundles([(label, Path(folder)) for label, folder in bundles.items()], Path(out))
        for name in ("compare.md", "compare.png", "compare.json"):
            mlflow.log_artifact(str(Path(out) / name))
    return record


def model_spec(p: dict, name: str) -> tuple[str, bool | None, bool]:
    """(spec, VPG-C switch, blind) of `evaluate.models.<name>` in params.yaml."""
    models = p.get("evaluate", {}).get("models") or {}
    if name not in models:
        raise UserError(f"params.yaml: no evaluate.models.{name}; known: {sorted(models)}")
    entry = models[name]
    if isinstance(entry, str):
        return entry, None, False
    if isinstance(entry, dict) and isinstance(entry.get("model"), str) and set(entry) <= {"model", "vpgc", "blind"}:
        vpgc, blind = entry.get("vpgc"), entry.get("blind", False)
        if vpgc not in (None, "on", "off", True, False):
            raise UserError(f"params.yaml: evaluate.models.{name}.vpgc must be on or off, not {vpgc!r}")
        if not isinstance(blind, bool):
            raise UserError(f"params.yaml: evaluate.models.{name}.blind must be true or false, not {blind!r}")
        return entry["model"], None if vpgc is None else vpgc in ("on", True), blind
    raise UserError(
        f"params.yaml: evaluate.models.{name} must be a spec string or {{model: SPEC, vpgc: on|off, blind: bool}}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description="Run an evaluation stage with the settings of params.yaml.")
    steps = parser.add_subparsers(dest="step", required=True)
    one = steps.add_parser("group", help="one model (a key of evaluate.models) on one task group (evaluate.groups)")
    one.add_argument("model_name")
    one.add_argument("group")
    steps.add_parser("merge", help="merge a model's group bundles into one").add_argument("model_name")
    steps.add_parser("compare", help="side-by-side report of every model in evaluate.models")
    args = parser.parse_args()
    p = load_params()
    section = p.get("evaluate") or {}
    out = Path(section.get("out", "data/eval"))
    if args.step == "compare":
        names = list(section.get("models") or {})
        compare_evaluations({name: str(out / "models" / name) for name in names}, section.get("report", "data/report"))
    elif args.step == "merge":
        groups = [out / "groups" / args.model_name / name for name in section.get("groups") or {}]
        found = [str(g) for g in groups if (g / "results.json").is_file()]
        merge_evaluations(found, str(out / "models" / args.model_name), f"metrics/evaluate-{args.model_name}.json")
    else:
        spec, vpgc, blind = model_spec(p, args.model_name)
        groups = section.get("groups") or {}
        if args.group not in groups:
            raise UserError(f"params.yaml: evaluate.groups has no {args.group!r}; known: {sorted(groups)}")
        overrides = {"eval": {k: section[k] for k in ("limit", "batch_size") if section.get(k) is not None}}
        evaluate_model(
            spec,
            p["data"]["normalized"],
            str(out / "groups" / args.model_name / args.group),
            experiment=f"experiments/{p['experiment']}.yaml",
            group=args.group,
            categories=list(groups[args.group]),
            vpgc=vpgc,
            blind=blind,
            overrides=overrides,
            metrics=f"metrics/evaluate/{args.model_name}-{args.group}.json",
        )


if __name__ == "__main__":
    stage_main(main)
