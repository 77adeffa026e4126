"""Stage `acquire`: the raw DEMON tree, rendered (embedded mini-DEMON) or fetched from a real source."""

from __future__ import annotations

from pathlib import Path

from prefect import flow

from components.tracking.runs import write_metrics
from flows.entry import stage_main
from flows.params import load_params
from flows.tracking import tracked_stage

METRICS = Path("metrics/acquire.json")


@flow(name="acquire-demon", retries=2, retry_delay_seconds=10)
def acquire_demon(source: str, dest: str, split: str = "core", per_task: int = 8, seed: int = 0) -> dict:
    """`source` is `mini` for the embedded benchmark, else any `demonlab data fetch` source."""
    params = {"source": source, "dest": dest, "split": split, "per_task": per_task, "seed": seed}
    with tracked_stage("acquire", params):
        if source == "mini":
            from components.demon.mini import build_mini_demon

            result = build_mini_demon(Path(dest), per_task=per_task, seed=seed)
            counts = result["tasks"]
        else:
            from components.demon.acquire import fetch

            result = fetch(source, Path(dest), split=split)
            counts = {task: entry["splits"][split]["samples"] for task, entry in result["tasks"].items()}
        write_metrics(METRICS, {"tasks": len(counts), "samples": sum(counts.values())})
    return result


def main() -> None:
    p = load_params()["data"]
    acquire_demon(p["source"], p["raw"], split=p["split"], per_task=p["mini"]["per_task"], seed=p["mini"]["seed"])


if __name__ == "__main__":
    stage_main(main)
