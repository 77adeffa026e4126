"""`demonlab data ...`: fetch DEMON, build the embedded mini-DEMON, normalize either into the unified schema."""

from __future__ import annotations

import argparse
from pathlib import Path

from components.demon.registry import OFFICIAL_GDRIVE_FOLDER_ID


def split_list(value: str) -> list[str]:
    return [item.strip() for item in value.split(",") if item.strip()]


def register(subparsers: argparse._SubParsersAction) -> None:
    data = subparsers.add_parser("data", help="get and normalize the DEMON benchmark")
    commands = data.add_subparsers(dest="data_command", required=True, metavar="COMMAND")

    fetch = commands.add_parser(
        "fetch",
        help="download DEMON into the official layout",
        description="Fetch DEMON from a source into DEST/<Task>/<split>/ and write DEST/manifest.json. "
        "A second fetch of the same source downloads nothing.",
    )
    fetch.add_argument(
        "--source",
        default=f"gdrive://{OFFICIAL_GDRIVE_FOLDER_ID}",
        help="gdrive://<folder-id> (default: the official folder), https://... or s3://... archive "
        "(append #sha256=<hex> to verify), hf://<owner>/<dataset>, or a local folder or archive",
    )
    fetch.add_argument("--dest", type=Path, required=True, help="destination folder")
    fetch.add_argument("--split", choices=["core", "full"], default="core")
    fetch.add_argument("--tasks", type=split_list, help="comma-separated task folders (default: all)")
    fetch.add_argument("--force", action="store_true", help="fetch again even if the manifest says it is done")
    fetch.set_defaults(handler=run_fetch)

    normalize = commands.add_parser(
        "normalize",
        help="validate a raw DEMON tree and write the unified schema",
        description="Read RAW/<Task>/<split>/<split>.json and its images; write OUT/samples.parquet, "
        "OUT/quarantine.jsonl (every rejected sample with its reason) and OUT/report.json. Exits 0 when the "
        "run completed, even with quarantined samples, unless --strict.",
    )
    normalize.add_argument("--raw", type=Path, required=True, help="raw DEMON folder (official layout)")
    normalize.add_argument("--out", type=Path, required=True, help="output folder")
    normalize.add_argument("--split", choices=["core", "full"], default="core")
    normalize.add_argument("--tasks", type=split_list, help="comma-separated task folders (default: all)")
    normalize.add_argument("--strict", action="store_true", help="fail if any sample is quarantined or task fails")
    normalize.set_defaults(handler=run_normalize)

    mini = commands.add_parser(
        "mini",
        help="render the embedded mini-DEMON (all 29 Core tasks, official format)",
        description="Procedurally render a small DEMON-Core in the exact official on-disk format, with "
        "answers derivable from the pixels. Deterministic for a seed.",
    )
    mini.add_argument("--out", type=Path, required=True, help="output folder")
    mini.add_argument("--per-task", type=int, default=8, help="samples per task (default 8)")
    mini.add_argument("--seed", type=int, default=0)
    mini.set_defaults(handler=run_mini)


def run_fetch(args: argparse.Namespace) -> int:
    from components.demon.acquire import fetch

    manifest = fetch(args.source, args.dest, split=args.split, tasks=args.tasks, force=args.force)
    # fetch() has already said what it did; point at the record of it.
    print(f"{len(manifest['last_fetch']['installed'])} task(s) in {args.dest}; manifest: {args.dest / 'manifest.json'}")
    return 0


def print_report(report: dict, out: Path) -> None:
    print(f"{'task':32} {'input':>7} {'kept':>7} {'quar.':>6}  error")
    for task, counts in report["tasks"].items():
        error = counts["error"] or ""
        print(f"{task:32} {counts['input']:7d} {counts['normalized']:7d} {counts['quarantined']:6d}  {error}")
    totals = report["totals"]
    print(
        f"{'total':32} {totals['input']:7d} {totals['normalized']:7d} {totals['quarantined']:6d}  "
        f"{totals['tasks_failed']} task(s) failed"
    )
    if report["ignored_folders"]:
        print(f"ignored (not DEMON tasks): {', '.join(report['ignored_folders'])}")
    if report["missing_tasks"]:
        print(f"missing tasks: {', '.join(report['missing_tasks'])}")
    if report["tasks_resumed"]:
        print(f"resumed: {report['tasks_resumed']} task(s) taken from an interrupted run's journal")
    print(f"wrote {out / 'samples.parquet'}, {out / 'quarantine.jsonl'}, {out / 'report.json'}")


def run_normalize(args: argparse.Namespace) -> int:
    from components.demon.normalize import normalize

    report = normalize(args.raw, args.out, split=args.split, tasks=args.tasks)
    print_report(report, args.out)
    failed = report["totals"]["quarantined"] or report["totals"]["tasks_failed"]
    return 1 if args.strict and failed else 0


def run_mini(args: argparse.Namespace) -> int:
    from components.demon.mini import build_mini_demon

    result = build_mini_demon(args.out, per_task=args.per_task, seed=args.seed)
    state = "already up to date" if result.get("skipped") else "rendered"
    print(f"mini-DEMON {state}: {len(result['tasks'])} tasks, {result['images']} images in {args.out}")
    return 0
