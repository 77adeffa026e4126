"""Normalization cost against its floor: decoding every image once. Same files, one run, side by side.

    .venv/bin/python benchmarks/bench_normalize.py [--per-task 60]

Prints the floor (serial `Image.open(...).load()` of every referenced image), normalization with one worker
(same parallelism as the floor) and with the default pool, their ratios (target: <= 1.25x the floor), and the
projection to DEMON-Core's 62,813 images at this machine's per-image cost.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

from PIL import Image

from components.demon.mini import build_mini_demon
from components.demon.normalize import normalize

DEMON_CORE_IMAGES = 62_813


def decode_floor(raw: Path) -> tuple[float, int]:
    """Seconds to decode every image the task files reference, once each, serially."""
    paths = []
    for core in sorted(raw.glob("*/core/core.json")):
        for sample in json.loads(core.read_text())["data"]:
            paths += [core.parent / "images" / name for name in sample["task_instance"]["images_path"]]
    paths = list(dict.fromkeys(paths))
    start = time.perf_counter()
    for path in paths:
        with Image.open(path) as image:
            image.load()
    return time.perf_counter() - start, len(paths)


def timed_normalize(raw: Path, out: Path, workers: int | None) -> float:
    shutil.rmtree(out, ignore_errors=True)
    start = time.perf_counter()
    normalize(raw, out, workers=workers, progress=False)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--per-task", type=int, default=60)
    parser.add_argument("--repeats", type=int, default=3, help="best of N for each measurement")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        raw, out = Path(tmp) / "raw", Path(tmp) / "out"
        build_mini_demon(raw, per_task=args.per_task, seed=0, progress=False)
        decode_floor(raw)  # warm the page cache so every measurement reads from memory
        floor, n_images = min(decode_floor(raw) for _ in range(args.repeats))
        serial = min(timed_normalize(raw, out, workers=1) for _ in range(args.repeats))
        pooled = min(timed_normalize(raw, out, workers=None) for _ in range(args.repeats))
    per_image = pooled / n_images
    print(f"images: {n_images} ({args.per_task} samples x 29 tasks)")
    print(f"floor (decode each image once, serial): {floor:.3f} s")
    print(f"normalize, 1 worker:                    {serial:.3f} s  ratio {serial / floor:.2f}x")
    print(f"normalize, default pool:                {pooled:.3f} s  ratio {pooled / floor:.2f}x")
    print(
        f"projection for DEMON-Core ({DEMON_CORE_IMAGES:,} images at this per-image cost): "
        f"{per_image * DEMON_CORE_IMAGES:.1f} s"
    )


if __name__ == "__main__":
    main()
