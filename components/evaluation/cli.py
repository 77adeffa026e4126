"""`demonlab score`: score prediction folders (the release's layout) with the parity or strict scorer."""

from __future__ import annotations

import argparse
from pathlib import Path

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


def run_score(args: argparse.Namespace) -> int:
    from components.evaluation.report import format_summary
    from components.evaluation.runner import score_directory

    out = args.out if args.out is not None else args.preds
    summary = score_directory(args.data, args.preds, args.scorer, out, args.split)
    print(format_summary(summary))
    print(f"wrote {out / 'summary.json'}")
    return 0
