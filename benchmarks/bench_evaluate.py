"""CPU benchmark of the evaluation runner on the embedded default (experiments/tiny.yaml: SmolLM2-135M +
EfficientNet-Lite0) over a mini-DEMON.

Prints, from one run on the same samples:
1. the release's way: one sample per call, in data order, top-p sampling (0.9, temperature 1.0), vs our runner:
   greedy, batches sorted by prompt length (target: >= 4x samples/s);
2. the cost per sample of a repeated evaluation answered from the response cache (lookups + bundle + scoring).

Both generate at most the config's `max_new_tokens` (64 for tiny) and read images from disk inside the timing.

    .venv/bin/python benchmarks/bench_evaluate.py [--per-task 2] [--batch-size 16] [--threads N] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a bare checkout, without installing the package

from components.demon.mini import build_mini_demon  # noqa: E402
from components.demon.normalize import load_samples, normalize  # noqa: E402
from components.demon.schema import sample_parts  # noqa: E402
from components.evaluation.adapters import VPGCAdapter  # noqa: E402
from components.evaluation.evaluate import evaluate  # noqa: E402
from components.evaluation.inference import select_samples  # noqa: E402
from components.evaluation.settings import load_eval_settings  # noqa: E402
from components.experiment import load_experiment  # noqa: E402
from components.vpgc.config import load_config  # noqa: E402
from components.vpgc.generation import GenerationSettings, GenerationStats  # noqa: E402
from components.vpgc.model import VPGCModel  # noqa: E402
from components.vpgc.prompts import Turn  # noqa: E402


def official_loop(model: VPGCModel, rows: list[dict], root: Path, max_new_tokens: int) -> tuple[float, int]:
    """The release's inference: one sample per call, in data order, nucleus sampling. Returns (seconds, tokens)."""
    stats = GenerationStats()
    start = time.perf_counter()
    for k, row in enumerate(rows):
        settings = GenerationSettings(
            max_new_tokens=max_new_tokens,
            do_sample=True,
            top_p=0.9,
            temperature=1.0,
            seed=k,
            stop=model.config.prompt.stop,
        )
        model.generate([[Turn(user=sample_parts(row))]], root, settings, stats)
    return time.perf_counter() - start, stats.new_tokens


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=ROOT / "experiments" / "tiny.yaml")
    parser.add_argument("--per-task", type=int, default=2, help="mini-DEMON samples per task (29 tasks; default 2)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's; 1 on a busy machine)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    work = Path(tempfile.mkdtemp(prefix="bench-evaluate-"))
    build_mini_demon(work / "raw", per_task=args.per_task, seed=0, progress=False)
    data = work / "normalized"
    normalize(work / "raw", data, progress=False)
    samples, root = load_samples(data)
    rows = select_samples(samples).to_dict("records")
    settings = load_eval_settings(load_experiment(args.config), args.config).replace(batch_size=args.batch_size)

    torch.manual_seed(0)
    model = VPGCModel.from_config(load_config(args.config)).eval()
    adapter = VPGCAdapter(str(args.config), model)
    limit = settings.max_new_tokens or model.config.prompt.max_new_tokens
    print(
        f"{len(rows)} samples of {len(samples['task'].unique())} tasks, {sum(len(r['images']) for r in rows)} images; "
        f"max_new_tokens {limit}; torch threads {torch.get_num_threads()}; load {os.getloadavg()[0]:.1f}"
    )

    # Warm-up (allocator, first-call overheads) on two samples, untimed.
    official_loop(model, rows[:2], root, 4)

    loop_s, loop_tokens = official_loop(model, rows, root, limit)
    print(
        f"release-style one-by-one sampling: {loop_s:.1f} s, {len(rows) / loop_s:.2f} samples/s, "
        f"{loop_tokens / loop_s:.1f} new tokens/s"
    )

    runner_out = evaluate(adapter, data, work / "runner", settings.replace(cache=False), progress=False)
    generated = runner_out["run"]["generated"]
    assert generated == len(rows)
    runner_s = runner_out["run"]["timing"]["wall_s"]
    tokenizer = model.tokenizer
    answers = [json.loads(line) for line in (work / "runner" / "samples.jsonl").read_text().splitlines()]
    runner_tokens = sum(len(tokenizer(a["output"] or "", add_special_tokens=False).input_ids) for a in answers)
    print(
        f"runner, greedy, batch {settings.batch_size} sorted by length: {runner_s:.1f} s for {generated} samples, "
        f"{generated / runner_s:.2f} samples/s, {runner_tokens / runner_s:.1f} new tokens/s"
    )
    speedup = loop_s / runner_s
    print(f"speed-up (samples/s): {speedup:.2f}x (target >= 4x)")

    cache = work / "responses.sqlite"
    evaluate(adapter, data, work / "fill", settings, cache_path=cache, progress=False)
    start = time.perf_counter()
    hit = evaluate(adapter, data, work / "hit", settings, cache_path=cache, progress=False)
    hit_s = time.perf_counter() - start
    assert hit["run"]["cached"] == hit["counts"]["samples"]
    lookup_s = hit["run"]["timing"]["wall_s"]
    per_sample_ms = 1000 * hit_s / hit["counts"]["samples"]
    print(
        f"repeat from the cache: {per_sample_ms:.1f} ms per sample end to end (lookups, bundle, both scorers); "
        f"lookups alone {1000 * lookup_s / hit['counts']['samples']:.2f} ms per sample "
        f"(fingerprint of {sum(p.numel() for p in model.parameters()) / 1e6:.0f}M weights included once)"
    )

    figures = {
        "samples": len(rows),
        "max_new_tokens": limit,
        "batch_size": settings.batch_size,
        "official_samples_per_s": len(rows) / loop_s,
        "official_new_tokens_per_s": loop_tokens / loop_s,
        "runner_samples_per_s": generated / runner_s,
        "runner_new_tokens_per_s": runner_tokens / runner_s,
        "speedup": speedup,
        "cache_hit_ms_per_sample": per_sample_ms,
        "cache_lookup_ms_per_sample": 1000 * lookup_s / hit["counts"]["samples"],
        "threads": torch.get_num_threads(),
        "load_average": os.getloadavg()[0],
    }
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
