"""Synthetic data generation on the CPU: the offline paths, their throughput, where the time goes, and what the
paper's 64k pairs would take.

    .venv/bin/python benchmarks/bench_synth.py [--items 320] [--photos 32] [--workers 1 2] [--json out.json]

Two offline paths with the embedded model (EfficientNet-Lite0 + the tiny Q-Former of experiments/tiny.yaml):
- `procedural`: the embedded default (rendered scenes, exact masks, template planner, exact re-render, encoder filter);
- `photos`: real photos (scikit-image's, repeated) at 384 px, Felzenszwalb regions, the pixel editor, encoder filter.
For each: pairs/s and items/s end to end (model loading included), the share of each step, and the projection for
64,000 pairs at that rate.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the photo folder helper

from synth_helpers import photo_folder  # noqa: E402

from components.experiment import load_experiment  # noqa: E402
from components.synth.config import synth_config_from_dict  # noqa: E402
from components.synth.pipeline import STEPS, generate  # noqa: E402

PAPER_PAIRS = 64_000


def photos_config(tmp: Path, items: int) -> dict:
    captions = photo_folder(tmp / "photos")
    lines = captions.read_text().splitlines()
    body = lines[1:]
    rows = [body[i % len(body)] for i in range(items)]  # the same photos again: same cost per item
    captions.write_text("\n".join([lines[0], *rows]) + "\n")
    return {
        "count": None,
        "source": {"kind": "folder", "captions": str(captions), "max_side": 384},
        "segmenter": {"kind": "felzenszwalb"},
        "editor": {"kind": "pixel"},
        "filter": {"kind": "encoder", "min_encoder_ratio": 1.0, "min_inside_change": 0.02},
    }


def measure(name: str, synth: dict, model: dict, out: Path, workers: int, limit: int) -> dict:
    config = synth_config_from_dict(synth)
    start = time.perf_counter()
    report = generate(config, model, out, workers=workers, limit=limit, progress=False)
    wall = time.perf_counter() - start
    steps = report["seconds"]
    busy = sum(steps[s] for s in STEPS) or 1.0
    pairs = report["totals"]["pairs"]
    return {
        "path": name,
        "workers": workers,
        "items": report["inputs"]["total"],
        "pairs": pairs,
        "wall_s": round(wall, 2),
        "items_per_s": round(report["inputs"]["total"] / wall, 2),
        "pairs_per_s": round(pairs / wall, 2),
        "step_share": {s: round(steps[s] / busy, 3) for s in STEPS},
        "hours_for_64k_pairs": round(PAPER_PAIRS / max(pairs / wall, 1e-9) / 3600, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=320, help="procedural scenes")
    parser.add_argument("--photos", type=int, default=32, help="real-photo items")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    document = load_experiment(ROOT / "experiments/tiny.yaml")
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        photos = photos_config(tmp, args.photos)
        for workers in args.workers:
            results.append(
                measure("procedural", document["synth"], document["model"], tmp / f"p{workers}", workers, args.items)
            )
            results.append(measure("photos", photos, document["model"], tmp / f"r{workers}", workers, args.photos))
    for r in results:
        shares = ", ".join(f"{s} {100 * v:.0f}%" for s, v in r["step_share"].items() if v >= 0.005)
        print(
            f"{r['path']:<10} workers={r['workers']}  {r['items']} items -> {r['pairs']} pairs in {r['wall_s']} s: "
            f"{r['items_per_s']} items/s, {r['pairs_per_s']} pairs/s; 64k pairs ~ {r['hours_for_64k_pairs']} h"
        )
        print(f"           time per step: {shares}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
        print(yaml.safe_dump({"written": str(args.json)}).strip())


if __name__ == "__main__":
    main()
