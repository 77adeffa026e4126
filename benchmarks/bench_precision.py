"""Compute against the machine's own limits, float32 beside bfloat16 in one run (experiments/tiny.yaml's real
SmolLM2-135M + EfficientNet-Lite0; docs/benchmarks.md, "Precision").

Prints:
1. the machine's limits, measured here: the best float32 and bfloat16 matmul rates over square and model-shaped GEMMs,
   and the memory copy bandwidth;
2. one VPG-C training step (forward + backward, 8 samples: 4 difference pairs + 4 captions) in float32 and bf16, the
   ratio, and the step's MFU: its matmul FLOPs (counted by torch's FLOP counter on the same step) per second against
   the bf16 peak of (1);
3. one evaluation batch (prefill + 16 greedy tokens, 8 prompts of 2 images) in float32 and bf16, the ratio;
4. greedy decoding at batch 1 in bf16: tokens/s against the bandwidth bound (weights read once per token / (1)'s
   bandwidth).

    .venv/bin/python benchmarks/bench_precision.py [--repeats 3] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a bare checkout, without installing the package
sys.path.insert(0, str(ROOT / "tests"))

from train_helpers import draw  # noqa: E402

from components.experiment import load_experiment, section  # noqa: E402
from components.training.loss import ResponseLoss  # noqa: E402
from components.vpgc.config import ModelConfig, model_config_from_dict  # noqa: E402
from components.vpgc.generation import GenerationSettings, GenerationStats, generate, generate_ids  # noqa: E402
from components.vpgc.model import VPGCModel  # noqa: E402
from components.vpgc.prompts import Turn  # noqa: E402

GEMMS = [(1024, 1024, 1024), (2048, 2048, 2048), (2048, 576, 1536), (4096, 576, 1536), (2048, 1536, 576)]


def best_seconds(work: Callable[[], object], repeats: int) -> float:
    work()  # warm-up: kernel selection, allocator
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        work()
        times.append(time.perf_counter() - start)
    return min(times)


def matmul_peaks(repeats: int) -> dict[str, float]:
    """GFLOP/s of the best GEMM per dtype (operands already in that dtype)."""
    peaks = {}
    for dtype in (torch.float32, torch.bfloat16):
        rates = []
        for m, k, n in GEMMS:
            a, b = torch.randn(m, k, dtype=dtype), torch.randn(k, n, dtype=dtype)
            rates.append(2 * m * k * n / best_seconds(lambda a=a, b=b: a @ b, repeats) / 1e9)
        peaks[str(dtype).removeprefix("torch.")] = max(rates)
    return peaks


def copy_bandwidth(repeats: int) -> float:
    """GB/s of a 256 MiB copy (read + write)."""
    source = torch.empty(64 * 2**20, dtype=torch.float32)
    target = torch.empty_like(source)
    return 2 * source.numel() * 4 / best_seconds(lambda: target.copy_(source), repeats) / 1e9


def difference_turn(first: str, second: str) -> list[Turn]:
    parts = [("text", "What changed between"), ("image", first), ("text", "and"), ("image", second), ("text", "?")]
    return [Turn(user=[{"type": kind, ("path" if kind == "image" else "text"): value} for kind, value in parts])]


PAIRS = [difference_turn(f"{i}a.png", f"{i}b.png") for i in range(4)]  # over `write_images`' files
EVAL = GenerationSettings(max_new_tokens=16, ignore_eos=True)
DECODE = GenerationSettings(max_new_tokens=32, ignore_eos=True)


def write_images(root: Path) -> None:
    """The benchmarks' four image pairs (`<i>a.png`, `<i>b.png`, 224 px) in `root`."""
    for i, colour in enumerate(("red", "green", "blue", "yellow")):
        draw("circle", colour, "white", 224).save(root / f"{i}a.png")
        draw("square", colour, "grey", 224).save(root / f"{i}b.png")


def training_batch(
    config: ModelConfig, dtype: torch.dtype, root: Path
) -> tuple[VPGCModel, ResponseLoss, list, torch.Tensor]:
    """The model in `dtype` with a trained-looking VPG-C, its loss and one training batch over `write_images`'
    images: 4 difference pairs + 4 captions; pixels (12, 3, 224, 224)."""
    captions = [[Turn(user=[{"type": "image", "path": f"{i}a.png"}, {"type": "text", "text": "Describe it."}])]
                for i in range(4)]  # fmt: skip
    targets = ["The circle turned into a grey square."] * 4 + ["A red circle on a white background."] * 4
    torch.manual_seed(0)
    model = VPGCModel.from_config(config).use_precision(dtype)
    with torch.no_grad():  # a trained VPG-C (non-zero projections): the backward reaches every trainable tensor
        for parameter in model.vpgc.parameters():
            parameter.normal_(0.0, 0.02)
    loss_fn = ResponseLoss(model.train(True))
    layouts = model.layouts(PAIRS + captions, targets)
    return model, loss_fn, layouts, model.load_pixels([p for item in layouts for p in item.images], root)


def measure(config: ModelConfig, dtype: torch.dtype, root: Path, repeats: int, bandwidth: float) -> dict[str, float]:
    """One precision's figures on the same inputs (images in `root`, written by `main`)."""
    model, loss_fn, layouts, pixels = training_batch(config, dtype, root)

    def step() -> None:
        loss_fn(layouts, pixels).backward()
        for parameter in model.vpgc.parameters():
            parameter.grad = None

    with FlopCounterMode(display=False) as counter:
        step()
    figures = {"train_step_s": best_seconds(step, repeats), "train_step_gflop": counter.get_total_flops() / 1e9}
    model.train(False)
    prompts = model.layouts(PAIRS * 2)
    eval_pixels = model.load_pixels([p for item in prompts for p in item.images], root)
    one = model.layouts(PAIRS[:1])
    one_pixels = model.load_pixels(list(one[0].images), root)

    @torch.inference_mode()
    def answer() -> None:
        generate(model, *model.prepare(prompts, eval_pixels, padding_side="left"), EVAL)

    @torch.inference_mode()
    def decode_rate() -> float:
        stats = GenerationStats()
        generate_ids(model, *model.prepare(one, one_pixels, padding_side="left"), DECODE, stats)
        return stats.decode_steps / stats.decode_s

    decode_rate()
    weight_bytes = sum(p.numel() * p.element_size() for p in model.llm.parameters())
    return figures | {
        "eval_batch_s": best_seconds(answer, repeats),
        "decode_tokens_s": max(decode_rate() for _ in range(repeats)),
        "decode_bound_tokens_s": bandwidth * 1e9 / weight_bytes,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    results: dict[str, object] = {"threads": torch.get_num_threads()}
    results["matmul_gflops"] = peaks = matmul_peaks(args.repeats)
    results["copy_gb_s"] = bandwidth = copy_bandwidth(args.repeats)
    print(json.dumps({"limits": {"matmul_gflops": peaks, "copy_gb_s": bandwidth}}), flush=True)
    config = model_config_from_dict(section(load_experiment(ROOT / "experiments" / "tiny.yaml"), "model", "tiny"))
    rows: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_images(root)
        for name, dtype in (("float32", torch.float32), ("bfloat16", torch.bfloat16)):
            rows[name] = measure(config, dtype, root, args.repeats, bandwidth)
            print(name, json.dumps(rows[name]), flush=True)
    fp32, bf16 = rows["float32"], rows["bfloat16"]
    results["rows"] = rows
    results["summary"] = summary = {
        "train_step_speedup": fp32["train_step_s"] / bf16["train_step_s"],
        "eval_batch_speedup": fp32["eval_batch_s"] / bf16["eval_batch_s"],
        "mfu_bf16": bf16["train_step_gflop"] / bf16["train_step_s"] / peaks["bfloat16"],
        "mfu_fp32_vs_fp32_peak": fp32["train_step_gflop"] / fp32["train_step_s"] / peaks["float32"],
        "decode_fraction_of_bound_bf16": bf16["decode_tokens_s"] / bf16["decode_bound_tokens_s"],
    }
    print(json.dumps(summary, indent=2))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
