"""GPU benchmark of one VPG-C training step at the paper's batch (24 synthetic pairs + 64 captions) on the
7B-shaped model (experiments/vicuna7b.yaml) with random weights in bfloat16.

Needs only torch, transformers, accelerate, safetensors and components/{vpgc,training/loss.py}: no downloads, no
tokenizer (token ids are random). Reports samples/s, step time, peak memory, model FLOPs utilisation (FLOPs of
one step counted by torch.utils.flop_counter, forward + backward, over the device's dense bf16 peak), the
projected wall time of 18k steps, and checks that no autograd graph is built below the VPG-C layer (the frozen
lower half runs without grad; only blocks >= L/2 backpropagate, into VPG-C's residual).

    python benchmarks/gpu_train.py [--micro-batch 44] [--steps 5] [--json out.json]
    python benchmarks/gpu_train.py --device cpu --config experiments/tiny.yaml --steps 1   (dry run)
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
from torch.utils.flop_counter import FlopCounterMode

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a bare checkout, without installing the package

from components.training.loss import ResponseLoss  # noqa: E402
from components.vpgc.config import load_config  # noqa: E402
from components.vpgc.model import VPGCModel, parameter_counts  # noqa: E402
from components.vpgc.prompts import PromptLayout  # noqa: E402
from components.vpgc.vpgc import decoder_layers  # noqa: E402

PEAK_BF16_TFLOPS = {"H100": 989.4, "H200": 989.4, "A100": 312.0}  # dense, SXM
MIX = ((24, 2, 18), (64, 1, 16))  # (samples, images each, target tokens): differences, captions
PROMPT_TEXT = 24  # template + instruction tokens around the images (Vicuna v0: `###Human: ... ###Assistant: `)


def sync(device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def hidden(output: torch.Tensor | tuple) -> torch.Tensor:
    """A decoder block's hidden states (transformers 5 returns the tensor, older versions a tuple)."""
    return output if isinstance(output, torch.Tensor) else output[0]


def random_layouts(model: VPGCModel, generator: torch.Generator) -> list[PromptLayout]:
    """The paper's global batch: 24 two-image difference samples and 64 one-image captions, random token ids."""
    q, vocab = model.vpg.num_query_tokens, model.llm.config.vocab_size
    layouts = []
    for count, images, target in MIX:
        for _ in range(count):
            words = torch.randint(3, vocab, (PROMPT_TEXT + target,), generator=generator).tolist()
            ids, starts = [1] + words[:4], []
            for _ in range(images):
                starts.append(len(ids))
                ids += [0] * q
            ids += words[4:PROMPT_TEXT]
            layouts.append(PromptLayout(ids, starts, [f"random{i}" for i in starts], target_ids=words[PROMPT_TEXT:]))
    return layouts


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=ROOT / "experiments" / "vicuna7b.yaml")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--micro-batch", type=int, default=44, help="samples per forward (88 per step)")
    parser.add_argument("--steps", type=int, default=5, help="timed steps (after one warm-up step)")
    parser.add_argument("--total-steps", type=int, default=18000, help="for the projected wall time")
    parser.add_argument("--peak-tflops", type=float, help="dense bf16 peak; default from the device name")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("no CUDA device: nothing to benchmark (use --device cpu --config experiments/tiny.yaml to dry-run)")
        return 0
    cuda = device.type == "cuda"
    torch.backends.cuda.matmul.allow_tf32 = True  # the float32 Q-Former and VPG-C, as the recipe runs them
    name = torch.cuda.get_device_name(device) if cuda else "cpu"
    peak = args.peak_tflops or next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)

    config = load_config(args.config)
    low = "bfloat16" if cuda else "float32"
    config = config.replace(
        llm=dataclasses.replace(config.llm, dtype=low), vision=dataclasses.replace(config.vision, dtype=low),
        checkpoint=None,
    )  # fmt: skip
    torch.manual_seed(0)
    t0 = time.perf_counter()
    model = VPGCModel.from_config(config, load_weights=False, device=device, with_tokenizer=False)
    model.train(True)
    build_s = time.perf_counter() - t0
    loss_fn = ResponseLoss(model)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=2e-5, betas=(0.9, 0.999), weight_decay=0.05)
    generator = torch.Generator().manual_seed(0)
    layouts = random_layouts(model, generator)
    size = config.vision.image_size
    pixels = [torch.randn(len(x.images), 3, size, size, generator=generator).to(device) for x in layouts]
    targets = sum(len(x.target_ids) for x in layouts)

    # Which blocks build an autograd graph: the frozen lower half must not (nothing there needs a gradient).
    grad_blocks: set[int] = set()
    hooks = [
        block.register_forward_hook(lambda _m, _a, out, i=i: grad_blocks.add(i) if hidden(out).requires_grad else None)
        for i, block in enumerate(decoder_layers(model.llm))
    ]

    def step() -> float:
        start = sync(device)
        for first in range(0, len(layouts), args.micro_batch):
            part = slice(first, first + args.micro_batch)
            with torch.autocast("cuda", dtype=torch.bfloat16) if cuda else torch.autocast("cpu", enabled=False):
                summed = loss_fn(layouts[part], torch.cat(pixels[part]))
            (summed / targets).backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return sync(device) - start

    step()  # warm-up: kernels, allocator; also records which blocks built a graph
    for hook in hooks:
        hook.remove()
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    times = [step() for _ in range(args.steps)]
    seconds = statistics.median(times)
    with FlopCounterMode(display=False) as counter:
        step()
    flops = counter.get_total_flops()
    layer = config.layer
    results = {
        "device": name,
        "torch": torch.__version__,
        "config": str(args.config),
        "build_s": build_s,
        "trainable_parameters": sum(c["trainable"] for c in parameter_counts(model).values()),
        "global_batch": len(layouts),
        "micro_batch": args.micro_batch,
        "tokens_per_step": sum(len(x.prompt_ids) + len(x.target_ids) for x in layouts),
        "step_s": seconds,
        "samples_per_s": len(layouts) / seconds,
        "tflops_per_step": flops / 1e12,
        "achieved_tflops": flops / seconds / 1e12,
        "mfu": flops / seconds / 1e12 / peak if peak else None,
        "projected_hours": seconds * args.total_steps / 3600,
        "peak_memory_gib": torch.cuda.max_memory_allocated(device) / 2**30 if cuda else None,
        "blocks_with_autograd": sorted(grad_blocks),
        "no_autograd_below_vpgc_layer": min(grad_blocks, default=layer) >= layer,
    }
    print(json.dumps(results, indent=2))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0 if results["no_autograd_below_vpgc_layer"] else 1


if __name__ == "__main__":
    sys.exit(main())
