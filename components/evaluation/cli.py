"""`demonlab score`: score prediction folders (the release's layout) with the parity or strict scorer.
`demonlab evaluate`: run a model over DEMON into a results bundle; `evaluate merge` / `evaluate compare`."""

from __future__ import annotations

import argparse
from pathlib import Path

from components.evaluation import served_cli

# Kept literal (equal to scorers.SCORERS, checked by the tests) so `--help` imports no numpy.
SCORERS = ("parity", "strict")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "score",
        help="score DEMON predictions (<preds>/<Task>/pred.json) like the official evaluate.py",
        description=(
            "Score predictions in the official layout (<preds>/<Task>/pred.json: a list of {sample_id, "
            "pred_response, gt_response}) against DEMON data. Writes <out>/<Task>/eval.json ({'Rouge-L f'|"
            "'Accuracy': score}), <out>/<Task>/eval_score.json (per-sample scores; strict adds the rule) and "
            "<out>/summary.json (task and category scores beside the paper's). A task with unusable inputs is "
            "reported under 'errors' and the others are still scored."
        ),
    )
    parser.add_argument("--data", type=Path, required=True, help="raw DEMON root or a normalized folder")
    parser.add_argument("--preds", type=Path, required=True, help="folder holding <Task>/pred.json")
    parser.add_argument(
        "--scorer",
        choices=SCORERS,
        default="parity",
        help="parity: the official algorithm; strict: explicit answer extraction (default: parity)",
    )
    parser.add_argument("--out", type=Path, default=None, help="where results go (default: --preds)")
    parser.add_argument("--split", choices=("core", "full"), default="core", help="DEMON split (default: core)")
    parser.set_defaults(handler=run_score)
    register_evaluate(subparsers)
    served_cli.register_agree(subparsers)


def run_score(args: argparse.Namespace) -> int:
    from components.evaluation.report import format_summary
    from components.evaluation.runner import score_directory

    out = args.out if args.out is not None else args.preds
    summary = score_directory(args.data, args.preds, args.scorer, out, args.split)
    print(format_summary(summary))
    print(f"wrote {out / 'summary.json'}")
    return 0


EVALUATE_HELP = """\
Answer DEMON instructions with a model and write a results bundle to --out:
  <out>/<Task>/pred.json (the official layout), samples.jsonl (per sample: prompt hash, raw output, extracted
  answer, scores), results.json (task and category scores, parity and strict, beside the paper's; seeds,
  versions, config and data hashes), report.md and categories.png. How the run went (answers generated and
  cached, seconds, batches) is printed, not written: the same evaluation writes the same bundle.
Answers are cached (SQLite, keyed by model fingerprint, prompt and settings): a killed run resumes where it
stopped and a repeated one is free. Data-parallel: torchrun --nproc_per_node=N -m components.cli evaluate ...

models (--model):
  experiments/<name>.yaml     a VPG-C experiment config (its eval: section sets decoding and batching)
  <checkpoint folder>         weights.safetensors + config.yaml, written by training
  models:/<name>@<alias>      an MLflow model (or runs:/<run id>/<path>)
  hf:<hub id or folder>       a Hugging Face image-text-to-text model with a chat template
  openai:<base url>#<name>    a served model (vLLM, SGLang, llama.cpp, hosted APIs): see "served models" below

subcommands (instead of running a model):
  demonlab evaluate merge --bundle DIR --bundle DIR ... --out DIR     parts of one evaluation -> one bundle
  demonlab evaluate compare --bundle LABEL=DIR ... --out DIR          bundles side by side (ablations)
  demonlab agree --model hf:X --model openai:URL#X --data D --out DIR  two backends of one model, answer by answer
"""


def _on_off(value: str) -> bool:
    if value not in ("on", "off"):
        raise argparse.ArgumentTypeError(f"expected on or off, not {value!r}")
    return value == "on"


def _csv(value: str) -> list[str]:
    return [item.strip() for item in value.split(",") if item.strip()]


def register_evaluate(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "evaluate",
        help="run a model over DEMON: predictions, scores and a report (also: evaluate merge | compare)",
        description=EVALUATE_HELP,
        epilog=served_cli.SERVED_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--model", help="experiment config, checkpoint folder, models:/name@alias or hf:<id>")
    parser.add_argument("--data", type=Path, help="a normalized DEMON folder (samples.parquet + report.json)")
    parser.add_argument("--out", type=Path, help="the bundle folder to write")
    parser.add_argument(
        "--experiment",
        type=Path,
        help="experiments/<name>.yaml whose eval: section to use (default: --model when it is one, else defaults)",
    )
    parser.add_argument("--tasks", type=_csv, help="comma-separated task folders (default: all)")
    parser.add_argument("--categories", type=_csv, help="comma-separated categories, names or slugs")
    parser.add_argument("--limit", type=int, help="at most N samples per task (the first by sample_id)")
    parser.add_argument("--vpgc", type=_on_off, metavar="on|off", help="on|off: switch VPG-C (off = backbone only)")
    parser.add_argument(
        "--blind",
        action="store_true",
        help="the blind control: every image replaced by a blank one of the same size (same prompt, no pixels)",
    )
    parser.add_argument("--batch-size", type=int, help="samples per generate call (default: eval.batch_size)")
    parser.add_argument(
        "--decoding",
        choices=("greedy", "sample"),
        help="greedy (default) or sample: the release's top-p 0.9 / temperature 1.0, seeded per sample",
    )
    parser.add_argument("--max-new-tokens", type=int, help="default: the model's limit (the release: 300)")
    parser.add_argument("--seed", type=int, help="sampling seed (default: eval.seed)")
    parser.add_argument(
        "--image-placement",
        choices=("auto", "interleaved", "first"),
        help="HF models: interleave images, or all first with [Image k] markers (auto: as the chat template allows)",
    )
    parser.add_argument("--device", help="cpu, cuda, cuda:1 (default: cuda:<LOCAL_RANK> when available, else cpu)")
    parser.add_argument("--cache", type=Path, help="response cache file (default: $DEMONLAB_CACHE/eval/...)")
    parser.add_argument("--no-cache", action="store_true", help="neither read nor write the response cache")
    parser.add_argument(
        "--compare-run", action="append", default=[], metavar="RUN_ID", help="an MLflow run to show beside ours"
    )
    served_cli.add_served_arguments(parser)
    parser.set_defaults(handler=run_evaluate)
    commands = parser.add_subparsers(dest="evaluate_command", metavar="{merge,compare}")
    merge = commands.add_parser(
        "merge",
        help="merge bundles of one evaluation (task groups, shards) into one bundle",
        description="Merge bundles written by parts of one evaluation (the same model fingerprint, generation "
        "settings and data) into one bundle with scores and a report, as if it had run at once.",
    )
    merge.add_argument("--bundle", type=Path, action="append", required=True, help="a bundle folder (repeat)")
    merge.add_argument("--out", type=Path, required=True, help="the merged bundle folder")
    merge.set_defaults(handler=run_merge)
    compare = commands.add_parser(
        "compare",
        help="a side-by-side report of several bundles (e.g. the ablation models)",
        description="Write compare.md, compare.png and compare.json: category and task scores of each bundle "
        "(parity and strict) side by side, beside the paper's ablation rows (Table 4).",
    )
    compare.add_argument(
        "--bundle", action="append", required=True, metavar="LABEL=DIR", help="a labelled bundle (repeat)"
    )
    compare.add_argument("--out", type=Path, required=True, help="folder for the report")
    compare.set_defaults(handler=run_compare)


def run_evaluate(args: argparse.Namespace) -> int:
    from components.errors import UserError
    from components.evaluation.evaluate import evaluate
    from components.evaluation.settings import EvalSettings, load_eval_settings
    from components.experiment import load_experiment

    missing = [flag for flag in ("model", "data", "out") if getattr(args, flag) is None]
    if missing:
        raise UserError(f"evaluate needs --{', --'.join(missing)} (see demonlab evaluate --help)")
    experiment = args.experiment
    if experiment is None and Path(args.model).suffix in (".yaml", ".yml") and Path(args.model).is_file():
        experiment = Path(args.model)
    settings = load_eval_settings(load_experiment(experiment), experiment) if experiment else EvalSettings()
    settings = settings.replace(
        batch_size=args.batch_size,
        limit=args.limit,
        decoding=args.decoding,
        max_new_tokens=args.max_new_tokens,
        seed=args.seed,
        image_placement=args.image_placement,
        cache=False if args.no_cache else None,
    )
    results = evaluate(
        served_cli.model_argument(args.model, args, settings.image_placement, args.blind),
        args.data,
        args.out,
        settings,
        tasks=args.tasks,
        categories=args.categories,
        vpgc=args.vpgc,
        blind=args.blind,
        device=args.device,
        cache_path=args.cache,
        compare_runs=args.compare_run,
        experiment=str(experiment) if experiment else None,
    )
    if results is not None:  # rank 0
        _print_results(results, args.out)
        served_cli.print_usage(results)
    return 0


def _print_results(results: dict, out: Path) -> None:
    from components.evaluation.report import format_summary

    counts, run = results["counts"], results["run"]
    print(format_summary(results["scores"]["parity"]))
    if "timing" in run:  # an evaluation (a merge answers nothing): how it went, which the bundle does not keep
        timing = run["timing"]
        ranks = ", ".join(str(r["samples"]) for r in timing["per_rank"])
        print(
            f"{counts['samples']} samples: {run['generated']} generated, {run['cached']} cached, "
            f"{counts['errors']} without an answer; {timing['wall_s']:.1f} s (model load "
            f"{timing['model_load_s']:.1f} s, batches: {timing['batches']}, samples per rank: {ranks})"
        )
        if timing["oom_splits"] or timing["batch_failures"]:
            print(
                f"out-of-memory splits: {timing['oom_splits']}, batches retried one sample at a time: "
                f"{timing['batch_failures']} (samples.jsonl has each sample's error)"
            )
    else:
        print(f"{counts['samples']} samples: {counts['errors']} without an answer")
    print(f"wrote {out / 'results.json'} and {out / 'report.md'}")


def run_merge(args: argparse.Namespace) -> int:
    from components.evaluation.bundle import merge_bundles

    _print_results(merge_bundles(args.bundle, args.out), args.out)
    return 0


def run_compare(args: argparse.Namespace) -> int:
    from components.errors import UserError
    from components.evaluation.bundle_report import compare_bundles

    labeled = []
    for item in args.bundle:
        label, sep, folder = item.partition("=")
        if not sep or not label or not folder:
            raise UserError(f"--bundle {item!r}: expected LABEL=DIR, e.g. --bundle backbone=data/eval/backbone/all")
        labeled.append((label, Path(folder)))
    compare_bundles(labeled, args.out)
    print(f"wrote {args.out / 'compare.md'}")
    return 0
