"""Stage `mini_train`: a training split of mini-DEMON tasks (another seed, sample ids from `first_id`), rendered and
normalized: the in-distribution upper bound's data (NOT zero-shot; docs/results.md)."""

from __future__ import annotations

from pathlib import Path

from prefect import flow

from components.tracking.runs import write_metrics
from flows.entry import stage_main
from flows.params import load_params
from flows.tracking import tracked_stage

METRICS = Path("metrics/mini-train.json")


@flow(name="mini-train-split", retries=1)
def mini_train_split(out: str, categories: list[str], per_task: int, seed: int, first_id: int) -> dict:
    """Render `categories`' tasks into `out/raw` and normalize them into `out/normalized`."""
    from components.demon.mini import build_mini_demon
    from components.demon.normalize import normalize
    from components.demon.registry import resolve_categories

    names = resolve_categories(categories)
    params = {"out": out, "categories": names, "per_task": per_task, "seed": seed, "first_id": first_id}
    with tracked_stage("mini-train", params):
        built = build_mini_demon(Path(out) / "raw", per_task=per_task, seed=seed, categories=names, first_id=first_id)
        report = normalize(Path(out) / "raw", Path(out) / "normalized")
        write_metrics(METRICS, {"tasks": built["tasks"], "totals": report["totals"]})
    return report


def main() -> None:
    t = load_params()["data"]["mini_train"]
    mini_train_split(t["out"], t["categories"], t["per_task"], t["seed"], t["first_id"])


if __name__ == "__main__":
    stage_main(main)
