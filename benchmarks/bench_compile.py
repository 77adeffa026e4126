"""Does `torch.compile` of the decoder blocks pay on this machine, and can its cost be paid once for many stages?
(issue 27: the element-wise work left after bf16 is ~55% of a training step; docs/benchmarks.md, "Compiling the
decoder blocks").

One VPG-C training step (forward + backward, 8 samples: 4 difference pairs + 4 captions, bf16 frozen weights, the
real SmolLM2-135M + EfficientNet-Lite0 of experiments/tiny.yaml), three ways, side by side in one run:
1. eager (what the stages run);
2. every decoder block compiled (`torch.compile(dynamic=True)`, inductor), in a fresh process with an empty inductor
   cache: the first step (compile included) and the best later step;
3. the same in a second fresh process that finds the first one's on-disk caches (what a later stage would get from
   a cache shared across stages and runs).
The block VPG-C hooks into stays eager (its pre-hook changes with every batch). Printed: seconds and ratios.

    .venv/bin/python benchmarks/bench_compile.py [--repeats 3] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def step_seconds(compiled: bool, repeats: int) -> dict[str, float]:
    """In this process: the first training step's seconds (compilation included) and the best of `repeats` more."""
    import torch

    sys.path.insert(0, str(ROOT))
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from bench_precision import training_batch, write_images

    from components.experiment import load_experiment, section
    from components.vpgc.config import model_config_from_dict
    from components.vpgc.precision import resolve_precision
    from components.vpgc.vpgc import decoder_layers

    root = Path(tempfile.mkdtemp())
    write_images(root)
    config = model_config_from_dict(section(load_experiment(ROOT / "experiments" / "tiny.yaml"), "model", "tiny"))
    dtype = resolve_precision("auto", torch.device("cpu"))
    model, loss_fn, layouts, pixels = training_batch(config, dtype, root)
    if compiled:
        for index, block in enumerate(decoder_layers(model.llm)):
            if index != config.layer:
                block.compile(dynamic=True)

    def step() -> float:
        start = time.perf_counter()
        loss_fn(layouts, pixels).backward()
        for parameter in model.vpgc.parameters():
            parameter.grad = None
        return time.perf_counter() - start

    first = step()
    return {"first_step_s": first, "step_s": min(step() for _ in range(repeats))}


def in_fresh_process(cache: Path, repeats: int) -> dict[str, float]:
    """`step_seconds(compiled=True)` in a new interpreter whose inductor caches live under `cache`."""
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(cache), "TRITON_CACHE_DIR": str(cache / "triton")}
    command = [sys.executable, __file__, "--child", "--repeats", str(repeats)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(step_seconds(compiled=True, repeats=args.repeats)))
        return 0
    with tempfile.TemporaryDirectory() as cache:
        cold = in_fresh_process(Path(cache), args.repeats)
        warm = in_fresh_process(Path(cache), args.repeats)
    eager = step_seconds(compiled=False, repeats=args.repeats)
    figures = {"eager": eager, "compiled_cold_cache": cold, "compiled_warm_cache": warm}
    print(f"eager: {eager['step_s']:.2f} s a step (first {eager['first_step_s']:.2f} s)")
    for label, run in (("cold cache", cold), ("warm cache", warm)):
        print(f"compiled, {label}: first step {run['first_step_s']:.1f} s, then {run['step_s']:.2f} s a step "
              f"({eager['step_s'] / run['step_s']:.2f}x eager)")  # fmt: skip
    pays_after = (warm["first_step_s"] - eager["step_s"]) / max(eager["step_s"] - warm["step_s"], 1e-9)
    print(f"with a warm cache the compilation is repaid after {pays_after:.0f} steps")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
