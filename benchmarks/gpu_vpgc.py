"""GPU benchmark: the 7B-shaped model (experiments/vicuna7b.yaml shapes) with random weights, VPG-C on vs off.

Needs only torch, transformers, accelerate, safetensors and components/vpgc: no downloads, no tokenizer (token ids
are random), weights initialised directly on the GPU. Reports prefill tokens/s, decode tokens/s (KV cache, fixed
length) and peak memory, with VPG-C on and off, plus batched vs one-by-one decoding. Runs in about a minute on one
H100; exits early where CUDA is absent unless `--device cpu` is given (a dry run, use `--config
experiments/tiny.yaml`).

    python benchmarks/gpu_vpgc.py [--batch 8] [--prompt-tokens 300] [--new-tokens 128] [--json out.json]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from transformers import DynamicCache

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a bare checkout, without installing the package

from components.vpgc.config import load_config  # noqa: E402
from components.vpgc.generation import GenerationSettings, GenerationStats, generate_ids  # noqa: E402
from components.vpgc.model import VPGCModel, parameter_counts  # noqa: E402
from components.vpgc.prompts import PromptLayout  # noqa: E402

IMAGES_PER_SAMPLE = [4, 3, 2, 4, 1, 4, 3, 5]  # mixed counts, mean 3.25 (DEMON-Core: 3.46)


def sync(device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def build(config_path: Path, device: torch.device, dtype: str) -> VPGCModel:
    """Random weights straight on the device in `dtype` (the Q-Former and VPG-C stay in float32, as in HF)."""
    config = load_config(config_path)
    config = config.replace(
        llm=dataclasses.replace(config.llm, dtype=dtype),
        vision=dataclasses.replace(config.vision, dtype=dtype),
        checkpoint=None,
    )
    torch.manual_seed(0)
    model = VPGCModel.from_config(config, load_weights=False, device=device, with_tokenizer=False)
    with torch.no_grad():  # a trained VPG-C, so its residual is not zero
        for parameter in model.vpgc.parameters():
            parameter.normal_(0.0, 0.02)
    return model


def random_layouts(model: VPGCModel, batch: int, prompt_tokens: int, generator: torch.Generator) -> list[PromptLayout]:
    """`batch` prompts of exactly `prompt_tokens` tokens (BOS, text, Q visual slots per image)."""
    q, vocab = model.vpg.num_query_tokens, model.llm.config.vocab_size
    layouts = []
    for b in range(batch):
        images = IMAGES_PER_SAMPLE[b % len(IMAGES_PER_SAMPLE)]
        text = prompt_tokens - 1 - images * q
        if text < images + 1:
            raise SystemExit(f"--prompt-tokens {prompt_tokens} is too short for {images} images of {q} tokens")
        words = torch.randint(3, vocab, (text,), generator=generator).tolist()
        ids, starts, chunk = [1], [], text // (images + 1)
        for i in range(images):
            ids += words[i * chunk : (i + 1) * chunk]
            starts.append(len(ids))
            ids += [0] * q
        ids += words[images * chunk :]
        layouts.append(PromptLayout(prompt_ids=ids, image_starts=starts, images=[f"random{i}" for i in range(images)]))
    return layouts


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=ROOT / "experiments" / "vicuna7b.yaml")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--prompt-tokens", type=int, default=300)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--single-new-tokens", type=int, default=32, help="steps per one-by-one sequence")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--no-tf32", action="store_true", help="keep float32 matmuls (the Q-Former) exact")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("no CUDA device: nothing to benchmark (use --device cpu --config experiments/tiny.yaml to dry-run)")
        return 0
    # The Q-Former and VPG-C run in float32 (as transformers keeps BLIP-2's Q-Former); TF32 tensor cores
    # speed them up (the release instead runs them under fp16 autocast).
    torch.backends.cuda.matmul.allow_tf32 = not args.no_tf32
    results: dict[str, object] = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "config": str(args.config),
        "dtype": args.dtype,
        "tf32": not args.no_tf32,
    }
    start = time.perf_counter()
    model = build(args.config, device, args.dtype)
    results["build_s"] = sync(device) - start
    results["parameters"] = parameter_counts(model)
    generator = torch.Generator().manual_seed(0)
    layouts = random_layouts(model, args.batch, args.prompt_tokens, generator)
    images = sum(len(item.images) for item in layouts)
    size = model.config.vision.image_size
    pixels = torch.randn(images, 3, size, size, generator=generator)
    print(f"{results['device']}: built {sum(c['total'] for c in results['parameters'].values()) / 1e9:.2f}B "
          f"parameters in {results['build_s']:.1f} s; batch {args.batch}, {images} images, "
          f"{args.prompt_tokens} prompt tokens each, {args.new_tokens} new tokens")  # fmt: skip

    with torch.no_grad():
        t0 = sync(device)
        batch, features = model.prepare(layouts, pixels.to(device))
        results["encode_images_s"] = sync(device) - t0  # ViT + VPG for every image, once

        def prefill(enabled: bool) -> float:
            model.vpgc_enabled = enabled
            t = sync(device)
            model(batch, features, cache=DynamicCache(config=model.llm.config), logits_to_keep=1)
            return sync(device) - t

        prefill(True), prefill(False)  # warm-up (kernels, allocator)
        times: dict[bool, list[float]] = {True: [], False: []}
        for _ in range(args.repeats):
            for enabled in (True, False):
                times[enabled].append(prefill(enabled))
    tokens = int(batch.attention_mask.sum())
    for enabled, label in ((True, "vpgc_on"), (False, "vpgc_off")):
        seconds = statistics.median(times[enabled])
        results[f"prefill_{label}"] = {"seconds": seconds, "tokens_per_s": tokens / seconds}
    ratio = results["prefill_vpgc_on"]["seconds"] / results["prefill_vpgc_off"]["seconds"]
    results["prefill_ratio"] = ratio
    print(f"prefill  {tokens} tokens: VPG-C on {results['prefill_vpgc_on']['tokens_per_s']:,.0f} tok/s, off "
          f"{results['prefill_vpgc_off']['tokens_per_s']:,.0f} tok/s, on/off time {ratio:.3f}")  # fmt: skip

    settings = GenerationSettings(max_new_tokens=args.new_tokens, ignore_eos=True)
    # warm-up at full length: the growing KV cache makes the allocator reserve new block sizes the first time
    generate_ids(model, batch, features, settings)
    for enabled, label in ((True, "vpgc_on"), (False, "vpgc_off")):
        model.vpgc_enabled = enabled
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        stats = GenerationStats()
        ids = generate_ids(model, batch, features, settings, stats)
        peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
        results[f"generate_{label}"] = {
            "prefill_s": stats.prefill_s,
            "decode_s": stats.decode_s,
            "decode_tokens_per_s": stats.decode_steps * args.batch / stats.decode_s,
            "peak_memory_gib": peak,
        }
        rate = results[f"generate_{label}"]["decode_tokens_per_s"]
        print(f"generate VPG-C {'on ' if enabled else 'off'}: decode {rate:,.0f} tok/s "
              f"({stats.decode_steps} steps, {stats.decode_s:.2f} s), peak memory {peak:.1f} GiB")  # fmt: skip
        if enabled:
            batched_ids = ids

    # one by one (VPG-C on), the same prompts, fewer steps (the rate is per step): how much batching buys, and
    # whether greedy outputs agree (random weights give near-flat logits, so in bf16 they rarely do)
    model.vpgc_enabled = True
    alone = GenerationStats()
    short = dataclasses.replace(settings, max_new_tokens=args.single_new_tokens)
    starts = [0]
    for item in layouts:
        starts.append(starts[-1] + len(item.images))
    single_ids = []
    for i, item in enumerate(layouts):
        one, one_features = model.prepare([item], pixels[starts[i] : starts[i + 1]].to(device))
        single_ids += generate_ids(model, one, one_features, short, alone)
    batched_rate = results["generate_vpgc_on"]["decode_tokens_per_s"]
    alone_rate = alone.decode_steps / alone.decode_s
    results["one_by_one"] = {
        "decode_tokens_per_s": alone_rate,
        "decode_speedup_batched": batched_rate / alone_rate,
        "max_new_tokens": args.single_new_tokens,
        "sequences_identical": sum(
            a[: args.single_new_tokens] == b for a, b in zip(batched_ids, single_ids, strict=True)
        ),
    }
    print(f"one by one: decode {alone_rate:,.0f} tok/s -> batched is "
          f"{results['one_by_one']['decode_speedup_batched']:.1f}x; greedy sequences identical to batched: "
          f"{results['one_by_one']['sequences_identical']}/{args.batch} ({args.dtype})")  # fmt: skip
    results["total_s"] = time.perf_counter() - start
    print(f"total {results['total_s']:.1f} s")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
