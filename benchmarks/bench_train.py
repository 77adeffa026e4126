"""CPU benchmark of the training recipe on the embedded default (experiments/tiny.yaml: SmolLM2-135M + EfficientNet-
Lite0 + the small Q-Former): steps/s and samples/s of stage align and stage vpgc, held-out loss before/after,
and the process's peak memory. Data: the procedural synthetic folder of the tests (tests/train_helpers.py).

    .venv/bin/python benchmarks/bench_train.py [--steps 5] [--full] [--json out.json]

`--full` runs the config's own step counts (the embedded pipeline's training, ~6 minutes on 2 idle cores).
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a bare checkout, without installing the package
sys.path.insert(0, str(ROOT / "tests"))

from train_helpers import write_synth_folder  # noqa: E402

from components.training.recipe import train  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=ROOT / "experiments" / "tiny.yaml")
    parser.add_argument("--steps", type=int, default=5, help="steps per stage (schedule shortened to fit)")
    parser.add_argument("--full", action="store_true", help="the config's own step counts")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    results: dict[str, object] = {"config": str(args.config)}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        data = write_synth_folder(work / "data", differences=300, captions=300)
        for stage, init in (("align", None), ("vpgc", work / "align")):
            start = time.perf_counter()
            result = train(
                args.config, stage, data, work / stage, init=init, max_steps=None if args.full else args.steps
            )
            results[stage] = {
                "steps": result.steps,
                "steps_per_s": result.steps / result.seconds,
                "samples_per_s": result.samples_per_s,
                "heldout_loss_before": result.heldout_loss_before,
                "heldout_loss_after": result.heldout_loss_after,
                "wall_s": time.perf_counter() - start,  # model load + held-out loss twice + the loop
            }
            print(stage, json.dumps(results[stage]), flush=True)
    results["peak_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(json.dumps(results, indent=2))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
