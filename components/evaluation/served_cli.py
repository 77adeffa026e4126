"""Command-line pieces for served models: the request options of `demonlab evaluate` and `demonlab agree` (two
backends of one model on the same samples, and how far their answers agree)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

SERVED_EPILOG = """\
served models (--model openai:<base url>#<model name>, e.g. openai:http://127.0.0.1:8000/v1#Qwen/Qwen2.5-VL-7B-Instruct):
  one chat request per sample, --concurrency in flight, retries with backoff on 429/5xx/timeouts; the API key is
  read from $OPENAI_API_KEY (or --api-key-env NAME), never from the command line. docs/evaluation.md has the
  vllm / sglang / llama.cpp command lines.
"""


def add_served_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("served models (openai:<base url>#<model name>)")
    group.add_argument("--concurrency", type=int, default=16, help="requests in flight (default: 16)")
    group.add_argument("--request-timeout", type=float, default=600.0, help="seconds per request (default: 600)")
    group.add_argument("--max-retries", type=int, default=6, help="retries on 429/5xx/timeouts (default: 6)")
    group.add_argument("--api-key-env", default="OPENAI_API_KEY", help="the variable holding the API key")
    group.add_argument(
        "--image-transport",
        choices=("data", "file"),
        default="data",
        help="data: base64 in the request (default); file: file:// URLs (vLLM: --allowed-local-media-path)",
    )
    group.add_argument("--price-input", type=float, help="USD per million prompt tokens (adds a cost to the usage)")
    group.add_argument("--price-output", type=float, help="USD per million completion tokens")


def serve_options(args: argparse.Namespace) -> Any:
    from components.evaluation.adapters import ServeOptions

    return ServeOptions(
        concurrency=args.concurrency,
        timeout_s=args.request_timeout,
        max_retries=args.max_retries,
        image_transport=args.image_transport,
        api_key_env=args.api_key_env,
        price_input=args.price_input,
        price_output=args.price_output,
    )


def model_argument(spec: str, args: argparse.Namespace, placement: str, blind: bool) -> Any:
    """`spec` as `evaluate` takes it: a served model is built here, with the command line's request options."""
    from components.evaluation.adapters import OPENAI_PREFIX, load_adapter

    if not spec.startswith(OPENAI_PREFIX):
        return spec
    return load_adapter(spec, vpgc=args.vpgc, image_placement=placement, blind=blind, served=serve_options(args))


def print_usage(results: dict) -> None:
    usage = results["model"].get("usage")
    if usage:
        cost = f", ${usage['cost_usd']:.4f}" if usage["cost_usd"] is not None else ""
        print(f"tokens: {usage['prompt_tokens']} prompt + {usage['completion_tokens']} completion over "
              f"{usage['samples']} answers{cost}")  # fmt: skip


def register_agree(subparsers: argparse._SubParsersAction) -> None:
    from components.evaluation.cli import _csv

    parser = subparsers.add_parser(
        "agree",
        help="run one model through two backends (in-process HF vs served, two servers) and compare their answers",
        description="Evaluate the same samples with two model specs (--model twice) into <out>/<label>/ bundles, or "
        "take two existing bundles (--bundle LABEL=DIR twice), and write <out>/agreement.md and agreement.json: the "
        "exact-match rate of the raw answers, paired score differences with 95%% intervals and p-values, and every "
        "sample whose answers differ, with both answers. With --image-placement auto, a served model is sent the "
        "placement the in-process HF model's chat template takes.",
        epilog=SERVED_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--model", action="append", default=[], help="a model spec (twice)")
    parser.add_argument("--label", action="append", default=[], help="a name for each --model (default: a, b)")
    parser.add_argument("--bundle", action="append", default=[], metavar="LABEL=DIR", help="an existing bundle (twice)")
    parser.add_argument("--data", type=Path, help="a normalized DEMON folder (with --model)")
    parser.add_argument("--out", type=Path, required=True, help="folder for the bundles and the agreement report")
    parser.add_argument("--experiment", type=Path, help="experiments/<name>.yaml whose eval: section to use")
    parser.add_argument("--tasks", type=_csv, help="comma-separated task folders (default: all)")
    parser.add_argument("--categories", type=_csv, help="comma-separated categories, names or slugs")
    parser.add_argument("--limit", type=int, help="at most N samples per task")
    parser.add_argument("--decoding", choices=("greedy", "sample"), help="greedy (default) or sample")
    parser.add_argument("--max-new-tokens", type=int, help="default: the model's limit (300)")
    parser.add_argument("--seed", type=int, help="sampling seed")
    parser.add_argument("--image-placement", choices=("auto", "interleaved", "first"), help="as for evaluate")
    parser.add_argument("--device", help="device of an in-process model")
    parser.add_argument("--cache", type=Path, help="response cache file")
    parser.add_argument("--no-cache", action="store_true", help="neither read nor write the response cache")
    add_served_arguments(parser)
    parser.set_defaults(handler=run_agree, vpgc=None)


def _labelled_bundles(args: argparse.Namespace) -> list[tuple[str, Path]]:
    from components.errors import UserError

    pairs = []
    for item in args.bundle:
        label, sep, folder = item.partition("=")
        if not sep or not label or not folder:
            raise UserError(f"--bundle {item!r}: expected LABEL=DIR")
        pairs.append((label, Path(folder)))
    return pairs


def _evaluate_both(args: argparse.Namespace) -> list[tuple[str, Path]]:
    """Evaluate the two --model specs on the same samples and settings; (label, bundle folder) each."""
    from components.errors import UserError
    from components.evaluation.adapters import HF_PREFIX, OPENAI_PREFIX, load_adapter
    from components.evaluation.evaluate import evaluate
    from components.evaluation.settings import EvalSettings, load_eval_settings
    from components.experiment import load_experiment

    labels = args.label or ["a", "b"]
    if len(labels) != 2 or labels[0] == labels[1] or args.data is None:
        raise UserError("agree: give --data and two different --label values (or none)")
    settings = load_eval_settings(load_experiment(args.experiment), args.experiment) if args.experiment else None
    settings = (settings or EvalSettings()).replace(limit=args.limit, decoding=args.decoding, seed=args.seed,
                                                    max_new_tokens=args.max_new_tokens,
                                                    image_placement=args.image_placement,
                                                    cache=False if args.no_cache else None)  # fmt: skip
    placement = {spec: settings.image_placement for spec in args.model}
    if settings.image_placement == "auto":  # a server cannot be asked where its template puts images; HF can
        local = [spec for spec in args.model if spec.startswith(HF_PREFIX)]
        if local:
            interleaves = load_adapter(local[0], image_placement="auto").interleaved
            for spec in args.model:
                if spec.startswith(OPENAI_PREFIX):
                    placement[spec] = "interleaved" if interleaves else "first"
    out = []
    for label, spec in zip(labels, args.model, strict=True):
        folder = args.out / label
        model = model_argument(spec, args, placement[spec], blind=False)
        evaluate(model, args.data, folder, settings.replace(image_placement=placement[spec]), tasks=args.tasks,
                 categories=args.categories, device=args.device, cache_path=args.cache)  # fmt: skip
        out.append((label, folder))
    return out


def run_agree(args: argparse.Namespace) -> int:
    from components.errors import UserError
    from components.evaluation.agreement import agreement, write_agreement
    from components.evaluation.bundle import read_bundle
    from components.evaluation.intervals import format_difference

    if len(args.model) + len(args.bundle) != 2 or (args.model and args.bundle):
        raise UserError("agree: give --model twice (two backends) or --bundle LABEL=DIR twice (two bundles)")
    bundles = _evaluate_both(args) if args.model else _labelled_bundles(args)
    (a, folder_a), (b, folder_b) = bundles
    record = agreement(read_bundle(folder_a)[1], read_bundle(folder_b)[1], a, b)
    write_agreement(args.out, record)
    match = record["exact_match"]
    rate = "n/a" if match["rate"] is None else f"{100 * match['rate']:.1f}%"
    print(f"{a} vs {b}: exact match {rate} ({match['count']} of {match['n']}); {len(record['differing'])} samples "
          f"differ, {record['samples']['failed']} failed on a side")  # fmt: skip
    for r in record["paired"]:
        if r["level"] == "overall":
            print(f"  {r['scorer']}: {a} - {b} = {format_difference(r).replace('**', '')}")
    print(f"wrote {args.out / 'agreement.md'} and {args.out / 'agreement.json'}")
    return 0
