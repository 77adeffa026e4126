"""Throughput of served-model evaluation: requests/s at concurrency 1 vs 16 against the test server
(`tests/served_server.py --echo`) with a fixed artificial latency per request, side by side in one run.

The server answers every DEMON request after `--latency` seconds with no model behind it, so the figure measures
the client: request building (base64 images), the bounded pool of requests in flight, the per-answer cache writes.
Both runs answer the same mini-DEMON samples (all 29 tasks) without the response cache; the time is the runner's
generate time (requests only, not scoring or the bundle). Goal: >= 10x at concurrency 16.

    .venv/bin/python benchmarks/bench_served.py [--per-task 4] [--latency 0.2] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a bare checkout, without installing the package

from components.demon.mini import build_mini_demon  # noqa: E402
from components.demon.normalize import normalize  # noqa: E402
from components.evaluation.adapters import ServeOptions, load_adapter  # noqa: E402
from components.evaluation.evaluate import evaluate  # noqa: E402
from components.evaluation.settings import EvalSettings  # noqa: E402


def measure(url: str, data: Path, out: Path, concurrency: int) -> dict[str, float]:
    adapter = load_adapter(f"openai:{url}#tiny", served=ServeOptions(concurrency=concurrency))
    results = evaluate(adapter, data, out, EvalSettings(max_new_tokens=8, cache=False), progress=False)
    samples, seconds = results["counts"]["samples"], results["run"]["timing"]["generate_s"]
    assert results["counts"]["errors"] == 0
    return {"concurrency": concurrency, "samples": samples, "seconds": seconds, "requests_per_s": samples / seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--per-task", type=int, default=4)
    parser.add_argument("--latency", type=float, default=0.2, help="seconds the server waits per request")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        build_mini_demon(root / "raw", per_task=args.per_task, seed=0, progress=False)
        normalize(root / "raw", root / "data", progress=False)
        server = subprocess.Popen([sys.executable, str(ROOT / "tests" / "served_server.py"), "--echo", "--latency",
                                   str(args.latency)], stdout=subprocess.PIPE, text=True)  # fmt: skip
        try:
            url = f"http://127.0.0.1:{int(server.stdout.readline().split()[1])}/v1"
            runs = [measure(url, root / "data", root / f"c{c}", c) for c in (1, 16)]
        finally:
            os.kill(server.pid, signal.SIGTERM)
            server.wait()
    ratio = runs[1]["requests_per_s"] / runs[0]["requests_per_s"]
    for r in runs:
        print(f"concurrency {r['concurrency']:>2}: {r['samples']} requests in {r['seconds']:.2f} s = "
              f"{r['requests_per_s']:.1f} requests/s")  # fmt: skip
    print(f"latency {args.latency} s per request; concurrency 16 vs 1: {ratio:.1f}x (goal >= 10x)")
    if args.json:
        args.json.write_text(json.dumps({"latency_s": args.latency, "runs": runs, "ratio": ratio}, indent=2))


if __name__ == "__main__":
    main()
