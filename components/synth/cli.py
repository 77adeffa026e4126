"""`demonlab synth generate`: synthetic discriminative pairs + captions in the unified sample schema."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    synth = subparsers.add_parser("synth", help="generate synthetic discriminative training data")
    commands = synth.add_subparsers(dest="synth_command", required=True, metavar="COMMAND")
    generate = commands.add_parser(
        "generate",
        help="edit images where the VPG does not look; write (original, edited) pairs and captions",
        description="For each source image: find its objects, rank them by the VPG's cross-attention, plan an "
        "edit (modify, swap, delete, add) of a least-attended one, apply it, filter it; write OUT/samples.parquet "
        "(tasks SynthDifference and SynthCaption, unified schema), OUT/images/, OUT/edits.jsonl, OUT/report.json "
        "and OUT/contact_sheet.png. The `synth:` section of the config chooses every step. A killed run resumes "
        "where it stopped; --workers gives the same output as serial.",
    )
    generate.add_argument("--config", type=Path, required=True, help="experiments/<name>.yaml (model: and synth:)")
    generate.add_argument("--out", type=Path, required=True, help="output folder")
    generate.add_argument("--limit", type=int, help="use at most N source items (default: synth.count)")
    generate.add_argument("--seed", type=int, help="default: synth.seed")
    generate.add_argument("--workers", type=int, default=1, help="processes (default 1)")
    generate.add_argument(
        "--vpg-checkpoint",
        type=Path,
        help="a trained checkpoint folder (weights.safetensors + config.yaml) whose "
        "VPG gives the attention maps; default: the config's model",
    )
    generate.add_argument("--quiet", action="store_true", help="no progress bar")
    generate.set_defaults(handler=run_generate)


def run_generate(args: argparse.Namespace) -> int:
    from components.synth.pipeline import generate_from_experiment

    report = generate_from_experiment(
        args.config,
        args.out,
        limit=args.limit,
        seed=args.seed,
        workers=args.workers,
        vpg_checkpoint=args.vpg_checkpoint,
        progress=not args.quiet,
    )
    summary = {
        "pairs": report["totals"]["pairs"],
        "captions": report["totals"]["captions"],
        "inputs": report["inputs"],
        "edits": {t: {k: v[k] for k in ("tried", "kept", "rejected")} for t, v in report["edits"].items()},
        # how the run went: printed here, not kept in report.json
        "seconds": report["seconds"],
        "chunks_resumed": report["chunks_resumed"],
    }
    print(json.dumps(summary, indent=2))
    print(f"wrote {args.out}/samples.parquet, report.json, edits.jsonl, contact_sheet.png")
    return 0
