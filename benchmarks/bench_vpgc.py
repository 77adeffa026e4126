"""CPU benchmark of the embedded default (experiments/tiny.yaml, real SmolLM2 + EfficientNet-Lite0).

Prints, from one run:
1. prefill time with VPG-C on vs off (target: on/off <= 1.2x);
2. VPG-C's extra FLOPs for the 7B config (analytic, components/vpgc/flops.py) vs the LLM prefill's;
3. batched (8) vs one-by-one greedy generation throughput (target: >= 4x), and that the outputs are equal.

    .venv/bin/python benchmarks/bench_vpgc.py [--repeats 5] [--new-tokens 24] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a bare checkout, without installing the package

from components.demon.schema import to_parts  # noqa: E402
from components.vpgc.config import load_config  # noqa: E402
from components.vpgc.flops import llm_prefill_flops, vpgc_flops  # noqa: E402
from components.vpgc.generation import GenerationSettings, GenerationStats  # noqa: E402
from components.vpgc.model import VPGCModel  # noqa: E402
from components.vpgc.prompts import Turn  # noqa: E402

QUESTIONS = [
    ("{image#1}{image#2} What is different between the two images?", 2),
    ("Describe {image#1} in one sentence.", 1),
    ("Here are three pictures: {image#1} {image#2} {image#3}. Which one is brightest?", 3),
    ("What is the capital of France?", 0),
    ("{image#1} Is this indoors or outdoors?", 1),
    ("Compare {image#1} and {image#2}. Which shows more detail?", 2),
    ("Write a short title for {image#1}.", 1),
    ("{image#1}{image#2}{image#3}{image#4} Order these images by colour.", 4),
]


def write_images(folder: Path, count: int) -> list[str]:
    rng = np.random.default_rng(0)
    paths = []
    for i in range(count):
        gradient = np.linspace(0, 255, 160, dtype=np.float32)[None, :, None] * rng.uniform(0.3, 1.0, size=(1, 1, 3))
        noise = rng.normal(0, 20, size=(120, 160, 3))
        pixels = np.clip(gradient + noise, 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"img{i}.jpg")
        paths.append(str(folder / f"img{i}.jpg"))
    return paths


def interleaved_medians(first, second, repeats: int) -> tuple[float, float]:
    """Median wall time of two functions timed alternately, so load from other processes hits both alike."""
    first(), second()  # warm-up
    times: tuple[list[float], list[float]] = ([], [])
    for _ in range(repeats):
        for function, bucket in ((first, times[0]), (second, times[1])):
            start = time.perf_counter()
            function()
            bucket.append(time.perf_counter() - start)
    return statistics.median(times[0]), statistics.median(times[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--new-tokens", type=int, default=48)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    torch.manual_seed(0)
    results: dict[str, object] = {"torch_threads": torch.get_num_threads()}

    model = VPGCModel.from_config(load_config(ROOT / "experiments" / "tiny.yaml"))
    with torch.no_grad():  # a trained VPG-C: non-zero weights (the timing does not depend on the values)
        for parameter in model.vpgc.parameters():
            parameter.normal_(0.0, 0.02)
    folder = Path(tempfile.mkdtemp(prefix="bench-vpgc-"))
    paths = write_images(folder, 4)
    conversations = [[Turn(to_parts(q, paths[:n]))] for q, n in QUESTIONS]

    # 1. prefill, VPG-C on vs off, on the same prepared batch (images encoded once, as in generation)
    layouts = model.layouts(conversations)
    pixels = model.load_pixels([p for item in layouts for p in item.images])
    with torch.no_grad():
        batch, features = model.prepare(layouts, pixels)

        def prefill(enabled: bool) -> None:
            model.vpgc_enabled = enabled
            model(batch, features, logits_to_keep=1)

        on, off = interleaved_medians(lambda: prefill(True), lambda: prefill(False), args.repeats)
    model.vpgc_enabled = True
    tokens = batch.attention_mask.shape[1]
    results["prefill"] = {
        "batch": len(conversations),
        "images": int(features.shape[0]),
        "tokens_per_sequence": tokens,
        "vpgc_on_s": on,
        "vpgc_off_s": off,
        "ratio": on / off,
    }
    print(f"prefill  batch {len(conversations)}, {features.shape[0]} images, {tokens} tokens/sequence (padded)")
    print(f"         VPG-C on {on * 1000:.1f} ms, off {off * 1000:.1f} ms, ratio {on / off:.3f} (target <= 1.2)")

    # 2. the 7B config, analytically: a DEMON-like prompt of 4 images (3.46 on average) and ~300 tokens
    big = load_config(ROOT / "experiments" / "vicuna7b.yaml")
    extra, base = vpgc_flops(big, 1, 4, 257), llm_prefill_flops(big, 1, 300)
    results["flops_7b"] = {"vpgc": extra, "llm_prefill": base, "ratio": extra / base}
    print(f"7B FLOPs one prompt, 4 images, 300 tokens: VPG-C {extra / 1e9:.1f} GFLOP vs LLM prefill "
          f"{base / 1e12:.2f} TFLOP -> +{100 * extra / base:.2f}%")  # fmt: skip

    # 3. generation: batch of 8 vs one by one, greedy; the decode phase is where batching pays
    settings = GenerationSettings(max_new_tokens=args.new_tokens)
    together, alone = GenerationStats(), GenerationStats()
    batched = model.generate(conversations, settings=settings, stats=together)
    singles = [model.generate([c], settings=settings, stats=alone)[0] for c in conversations]
    total = together.prefill_s + together.decode_s, alone.prefill_s + alone.decode_s
    results["generation"] = {
        "batch": len(conversations),
        "max_new_tokens": args.new_tokens,
        "new_tokens": together.new_tokens,
        "batched": vars(together),
        "one_by_one": vars(alone),
        "speedup_end_to_end": total[1] / total[0],
        "speedup_decode": (together.new_tokens / together.decode_s) / (alone.new_tokens / alone.decode_s),
        "outputs_equal": batched == singles,
    }
    gen = results["generation"]
    print(f"generate batch 8, <= {args.new_tokens} new tokens each ({together.new_tokens} in all); outputs equal: "
          f"{batched == singles}")  # fmt: skip
    print(f"         batched: prefill {together.prefill_s:.2f} s + decode {together.decode_s:.2f} s "
          f"({together.new_tokens / together.decode_s:.1f} tok/s); one by one: prefill {alone.prefill_s:.2f} s + "
          f"decode {alone.decode_s:.2f} s ({alone.new_tokens / alone.decode_s:.1f} tok/s)")  # fmt: skip
    print(f"         speedup: end to end {gen['speedup_end_to_end']:.2f}x, decode throughput "
          f"{gen['speedup_decode']:.2f}x (target >= 4)")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
