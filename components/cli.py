"""`demonlab`: the command line. Each package contributes its commands through `register(subparsers)`;
handlers import heavy libraries (torch, transformers) only when they run, so `--help` stays instant."""

from __future__ import annotations

import argparse
import sys

from components import check
from components.demo import cli as demo_cli
from components.demon import cli as demon_cli
from components.errors import UserError
from components.evaluation import cli as evaluation_cli
from components.runtime import pipeline_cli
from components.synth import cli as synth_cli
from components.training import cli as training_cli
from components.vpgc import cli as vpgc_cli

COMMAND_GROUPS = (pipeline_cli, check, demon_cli, evaluation_cli, vpgc_cli, training_cli, synth_cli, demo_cli)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="demonlab",
        description="Reproduce, train and evaluate VPG-C on the DEMON benchmark.",
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for group in COMMAND_GROUPS:
        group.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args) or 0
    except UserError as error:
        print(f"demonlab: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("demonlab: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
