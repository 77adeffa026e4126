"""Frozen work done once, side by side in one run (experiments/tiny.yaml's real SmolLM2-135M + EfficientNet-Lite0, the
precision `auto` picks; docs/benchmarks.md, "Frozen work once").

Prints:
1. the vision features of an evaluation cell's worth of images (96 distinct 224 px images by default): the encoder in
   NCHW (its layout before session 10), in channels-last (its layout now), through the feature cache with a cold cache
   (each image encoded alone, then stored) and with a warm one (what every later cell of a run does);
2. building the model in a forked child, as a stage under `demonlab run` does: taking the backbones its server holds
   (`hold_backbones`), and loading its own (measured first: a process must not fork once its OpenMP pool runs).

    .venv/bin/python benchmarks/bench_frozen_work.py [--images 96] [--repeats 3] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a bare checkout, without installing the package

from components.vpgc.backbones import hold_backbones  # noqa: E402
from components.vpgc.config import ModelConfig, load_config  # noqa: E402
from components.vpgc.features import FeatureCache  # noqa: E402
from components.vpgc.model import VPGCModel  # noqa: E402
from components.vpgc.precision import resolve_precision  # noqa: E402


def write_images(root: Path, count: int) -> list[str]:
    """`count` distinct random images of 256 x 256 px (resized to 224 by the model's eval transform)."""
    rng = np.random.default_rng(0)
    paths = []
    for i in range(count):
        path = root / f"{i}.png"
        Image.fromarray(rng.integers(0, 256, size=(256, 256, 3), dtype=np.uint8)).save(path)
        paths.append(str(path))
    return paths


def seconds(work) -> float:
    start = time.perf_counter()
    work()
    return time.perf_counter() - start


@torch.no_grad()
def features(config: ModelConfig, dtype: torch.dtype, paths: list[str], cache_root: Path, repeats: int) -> dict:
    model = VPGCModel.from_config(config).use_precision(dtype)
    pixels = model.load_pixels(paths)
    inner = model.vision.model  # EfficientNet itself: its layout can be switched back for the NCHW column

    def nchw() -> None:
        inner.to(memory_format=torch.contiguous_format)
        inner.extract_features(pixels.to(dtype))
        inner.to(memory_format=torch.channels_last)

    model.encode_images(pixels[:4])  # warm-up: oneDNN's kernel choice
    rows = {"nchw_s": min(seconds(nchw) for _ in range(repeats))}
    rows["channels_last_s"] = min(seconds(lambda: model.encode_images(pixels)) for _ in range(repeats))
    cold = []
    for repeat in range(repeats):
        model.feature_cache = FeatureCache(cache_root / str(repeat), max_bytes=2**30)
        cold.append(seconds(lambda: model.encode_images(pixels, cached=True)))
    rows["cache_cold_s"] = min(cold)
    rows["cache_warm_s"] = min(seconds(lambda: model.encode_images(pixels, cached=True)) for _ in range(repeats))
    rows["images"] = len(paths)
    return rows


def build_in_child(config: ModelConfig, take_held: bool) -> float:
    """Seconds a forked child takes to build the model (as `VPGCModel.from_config` in a stage)."""
    read, write = os.pipe()
    if (pid := os.fork()) == 0:
        from components.vpgc import backbones

        if not take_held:
            backbones._HELD.clear()
        os.write(write, str(seconds(lambda: VPGCModel.from_config(config))).encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as reply:
        taken = float(reply.read())
    os.waitpid(pid, 0)
    return taken


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=96)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    config = load_config(ROOT / "experiments" / "tiny.yaml")
    dtype = resolve_precision("auto", torch.device("cpu"))
    results: dict[str, object] = {"threads": torch.get_num_threads(), "dtype": str(dtype)}
    # First, as the fork server does: hold the backbones (one thread), then fork. This process must not have run a
    # parallel region before it forks (the children would wait for ever), so the features come after.
    hold_backbones(config.llm, config.vision)
    held, loaded = [], []
    for _ in range(args.repeats):  # alternating, so load on the machine affects both alike
        held.append(build_in_child(config, take_held=True))
        loaded.append(build_in_child(config, take_held=False))
    results["build"] = build = {"held_s": min(held), "loaded_s": min(loaded)}
    print(json.dumps({"build": build}), flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        paths = write_images(Path(tmp), args.images)
        results["features"] = rows = features(config, dtype, paths, Path(tmp) / "cache", args.repeats)
    results["summary"] = summary = {
        "channels_last_speedup": rows["nchw_s"] / rows["channels_last_s"],
        "warm_cache_speedup": rows["channels_last_s"] / rows["cache_warm_s"],
        "cold_cache_cost": rows["cache_cold_s"] / rows["channels_last_s"],
        "build_saved_s": build["loaded_s"] - build["held_s"],
    }
    print(json.dumps({"features": rows, "summary": summary}, indent=2))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
