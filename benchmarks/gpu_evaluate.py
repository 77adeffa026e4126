"""GPU benchmark: projected wall time of a whole DEMON-Core evaluation (18,176 instructions) with a 7B-shaped VPG-C
model (experiments/vicuna7b.yaml shapes, random bf16 weights), batched and sorted by length as `demonlab evaluate`
runs it, against the release's way (one instruction per call, in data order, top-p sampling).

Needs only torch, transformers, safetensors and components/vpgc (no tokenizer, no images, no downloads): prompts
are random token ids of DEMON-Core's statistics, images random pixels, and every answer is decoded to a length
drawn for it (random weights never say EOS), so a batch costs what it would with a real model: it runs until its
longest answer. The workload (seeded), drawn per instruction:
- task: the 29 Core tasks in their real proportions (11 open-ended tasks hold 9,176 instructions, 18 option tasks
  9,000);
- images: 1-8 with mean 3.46 (DEMON-Core: 62,813 images / 18,176 instructions); 32 visual tokens each;
- words: log-normal with mean 92.7 (DEMON-Core), x1.3 LLaMA tokens per word, + 12 template tokens;
- answer tokens: `--open-tokens` (default 40) for open-ended tasks, `--option-tokens` (default 8) for option tasks,
  each times a uniform 0.5-1.5 jitter; `--max-new-tokens-run` also times batches decoding the release's full 300.
Image decoding (CPU, overlapped with generation by the runner's prefetch thread) is not included.

    python benchmarks/gpu_evaluate.py [--instructions 256] [--batch-sizes 8,16,32] [--single 24] [--json out.json]

Runs in about 3-5 minutes on one H100 with the defaults; `--device cpu --config experiments/tiny.yaml
--instructions 16 --single 4 --batch-sizes 4` is a dry run of the script itself.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import random
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a bare checkout, without installing the package

from components.vpgc.config import load_config  # noqa: E402
from components.vpgc.generation import GenerationSettings, generate_ids  # noqa: E402
from components.vpgc.model import VPGCModel  # noqa: E402
from components.vpgc.prompts import PromptLayout  # noqa: E402

CORE_INSTRUCTIONS = 18_176
# (task folder, Core instructions, open-ended) from components/demon/tasks.json
CORE_TASKS = [
    ("ALFRED", 2294, True), ("MMCoQA", 2382, True), ("AESOP", 500, True), ("PororoSV", 500, True),
    ("FlintstonesSV", 500, True), ("VIST", 500, True), ("DiDeMoSV", 500, True), ("Spot-the-Diff", 500, True),
    ("CLEVR-Change", 500, True), ("IEdit", 500, True), ("Birds-to-Words", 500, True),
    ("COMICS_Dialogue", 500, False), ("COMICS_Panel", 500, False), ("RecipeQA_TextCloze", 500, False),
    ("RecipeQA_VisualCloze", 500, False), ("WebQA", 500, False), ("TQA", 500, False),
    ("MultiModalQA", 500, False), ("SlideVQA", 500, False), ("OCR-VQA", 500, False), ("DocVQA", 500, False),
    ("nuScenes", 500, False), ("VISION", 500, False), ("Fashion200K", 500, False),
    ("MIT-States_PropertyCoherence", 500, False), ("MIT-States_StateCoherence", 500, False),
    ("RecipeQA_ImageCoherence", 500, False), ("NLVR2", 500, False), ("VizWiz", 500, False),
]  # fmt: skip
# Images per instruction: a distribution over 1-8 with mean 3.46.
IMAGE_COUNTS = {1: 0.12, 2: 0.25, 3: 0.20, 4: 0.15, 5: 0.13, 6: 0.09, 7: 0.02, 8: 0.04}
WORDS_MEAN, WORDS_SIGMA, TOKENS_PER_WORD, TEMPLATE_TOKENS = 92.69, 0.5, 1.3, 12


@dataclasses.dataclass
class Instruction:
    task: str
    images: int
    text_tokens: int
    answer_tokens: int
    open_ended: bool


def workload(n: int, open_tokens: int, option_tokens: int, seed: int) -> list[Instruction]:
    """`n` instructions drawn with DEMON-Core's statistics (module docstring), in a shuffled "data order"."""
    rng = random.Random(seed)
    names, weights = zip(*[(t, n_) for t, n_, _ in CORE_TASKS], strict=True)
    open_ended = {t: o for t, _, o in CORE_TASKS}
    mu = math.log(WORDS_MEAN) - WORDS_SIGMA**2 / 2  # log-normal with this mean
    out = []
    for task in rng.choices(names, weights=weights, k=n):
        words = rng.lognormvariate(mu, WORDS_SIGMA)
        answer = open_tokens if open_ended[task] else option_tokens
        out.append(
            Instruction(
                task=task,
                images=rng.choices(list(IMAGE_COUNTS), weights=list(IMAGE_COUNTS.values()))[0],
                text_tokens=TEMPLATE_TOKENS + round(words * TOKENS_PER_WORD),
                answer_tokens=max(1, round(answer * rng.uniform(0.5, 1.5))),
                open_ended=open_ended[task],
            )
        )
    return out


def layout(item: Instruction, q: int, vocab: int, generator: torch.Generator) -> PromptLayout:
    """Random token ids with `item.images` slots of `q` visual tokens spread through the text."""
    words = torch.randint(3, vocab, (item.text_tokens,), generator=generator).tolist()
    ids, starts, chunk = [1], [], item.text_tokens // (item.images + 1)
    for i in range(item.images):
        ids += words[i * chunk : (i + 1) * chunk]
        starts.append(len(ids))
        ids += [0] * q
    ids += words[item.images * chunk :]
    return PromptLayout(prompt_ids=ids, image_starts=starts, images=[f"random{i}" for i in range(item.images)])


def sync(device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def run(
    model: VPGCModel,
    items: list[Instruction],
    batch_size: int,
    sort: bool,
    sample: bool,
    max_new_tokens: int | None = None,
) -> dict:
    """Time `items` in batches (sorted longest first when `sort`); returns seconds, tokens and peak memory."""
    device, q = model.device, model.vpg.num_query_tokens
    vocab, size = model.llm.config.vocab_size, model.config.vision.image_size
    dtype = next(model.vision.parameters()).dtype
    generator = torch.Generator().manual_seed(0)
    order = sorted(items, key=lambda i: -(i.text_tokens + q * i.images)) if sort else list(items)
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start, tokens = sync(device), 0
    for batch in batches:
        layouts = [layout(item, q, vocab, generator) for item in batch]
        pixels = torch.randn(sum(i.images for i in batch), 3, size, size, device=device, dtype=dtype)
        with torch.inference_mode():
            prompt, features = model.prepare(layouts, pixels, padding_side="left")
            steps = max_new_tokens or max(i.answer_tokens for i in batch)  # the batch runs to its longest answer
            settings = GenerationSettings(max_new_tokens=steps, do_sample=sample, top_p=0.9, ignore_eos=True)
            generate_ids(model, prompt, features, settings)
        tokens += sum(min(steps, max_new_tokens or i.answer_tokens) for i in batch)
    seconds = sync(device) - start
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
    return {"seconds": seconds, "instructions": len(items), "answer_tokens": tokens, "peak_gib": peak}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=ROOT / "experiments" / "vicuna7b.yaml")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float16", "float32"))
    parser.add_argument("--instructions", type=int, default=256, help="instructions per batched measurement")
    parser.add_argument("--single", type=int, default=24, help="instructions for the one-by-one measurement")
    parser.add_argument("--batch-sizes", default="8,16,32")
    parser.add_argument("--open-tokens", type=int, default=40, help="mean answer tokens, open-ended tasks")
    parser.add_argument("--option-tokens", type=int, default=8, help="mean answer tokens, option tasks")
    parser.add_argument("--max-new-tokens-run", type=int, default=2, help="batches timed at the full 300 tokens")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("no CUDA device; use --device cpu --config experiments/tiny.yaml for a dry run")
        return 1

    config = load_config(args.config)
    config = config.replace(
        llm=dataclasses.replace(config.llm, dtype=args.dtype),
        vision=dataclasses.replace(config.vision, dtype=args.dtype),
        checkpoint=None,
    )
    torch.manual_seed(0)
    built = time.perf_counter()
    model = VPGCModel.from_config(config, load_weights=False, device=device, with_tokenizer=False).eval()
    with torch.no_grad():  # a trained VPG-C, so its residual is not zero
        for parameter in model.vpgc.parameters():
            parameter.normal_(0.0, 0.02)
    print(f"{config.name} ({args.dtype}) built on {device} in {time.perf_counter() - built:.1f} s")
    items = workload(max(args.instructions, args.single), args.open_tokens, args.option_tokens, args.seed)
    images = sum(i.images for i in items) / len(items)
    words = sum((i.text_tokens - TEMPLATE_TOKENS) / TOKENS_PER_WORD for i in items) / len(items)
    print(f"workload: {len(items)} instructions, {images:.2f} images and {words:.1f} words per instruction")
    run(model, items[:4], 4, sort=True, sample=False)  # warm-up: kernels, allocator

    results: dict[str, dict] = {}
    single = run(model, items[: args.single], 1, sort=False, sample=True)
    results["release: 1 per call, sampling"] = single
    for size in [int(b) for b in args.batch_sizes.split(",")]:
        try:
            results[f"runner: batch {size}, sorted, greedy"] = run(
                model, items[: args.instructions], size, sort=True, sample=False
            )
        except torch.OutOfMemoryError:
            torch.cuda.empty_cache()
            results[f"runner: batch {size}, sorted, greedy"] = {"oom": True}
    best = min(
        (k for k, v in results.items() if "seconds" in v),
        key=lambda k: results[k]["seconds"] / results[k]["instructions"],
    )
    best_size = 1 if best.startswith("release") else int(best.split("batch ")[1].split(",")[0])
    if args.max_new_tokens_run:
        worst = items[: best_size * args.max_new_tokens_run]
        results[f"runner: batch {best_size}, 300 new tokens each"] = run(
            model, worst, best_size, sort=True, sample=False, max_new_tokens=300
        )

    print(f"\n{'setting':<42}{'s/instr':>10}{'instr/s':>10}{'tokens/s':>10}{'peak GiB':>10}{'DEMON-Core':>14}")
    for name, r in results.items():
        if "oom" in r:
            print(f"{name:<42}{'out of memory':>54}")
            continue
        per = r["seconds"] / r["instructions"]
        r["projected_core_hours"] = per * CORE_INSTRUCTIONS / 3600
        print(
            f"{name:<42}{per:>10.3f}{1 / per:>10.2f}{r['answer_tokens'] / r['seconds']:>10.0f}{r['peak_gib']:>10.1f}"
            f"{r['projected_core_hours']:>12.2f} h"
        )
    speedup = single["seconds"] / single["instructions"] / (results[best]["seconds"] / results[best]["instructions"])
    print(f"\nbest: {best}: {speedup:.1f}x the release's one-by-one throughput")
    if args.json:
        args.json.write_text(json.dumps({"args": vars(args) | {"config": str(args.config), "json": None},
                                         "results": results, "speedup": speedup}, indent=2, default=str))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
