"""A throwaway copy of the project (code, dvc.yaml, params.yaml, prefect.yaml) as its own git + DVC repository,
tracking to its own MLflow store and a test Prefect server: what a user has after cloning."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from components.experiment import deep_merge

ROOT = Path(__file__).resolve().parents[1]
# Small enough for a test, the real code path all the same.
TEST_PARAMS: dict[str, Any] = {"data": {"mini": {"per_task": 2}}}
# The whole pipeline at its smallest: a few scenes, two optimizer steps of two samples a model (the ablation's variants
# keep their proportions), one DEMON sample a task evaluated; the upper bound's training split keeps more than the
# held-out samples a task
SMALLEST: dict[str, Any] = {
    "data": {"mini_train": {"per_task": 10}},
    "synth": {"limit": 24},
    "train": {
        "max_steps": 2,
        "variants": {"captions": {"mix": {"SynthCaption": 2}}, "upper-bound": {"mix": {"SynthCaption": 1}}},
    },
    "evaluate": {"limit": 1, "batch_size": 8},
}
# ... and its experiment's steps of two samples, held-out set at 2 a task: every training stage scores the held-out set
# before, after and with swapped images (train@upper-bound in the shipped-graph test, beside a second test: 51 s at 8
# a task, 25 s at 2)
SMALLEST_EXPERIMENT: dict[str, Any] = {
    "train": {
        "heldout": 2,
        "align": {"mix": {"SynthCaption": 2}},
        "vpgc": {"mix": {"SynthDifference": 1, "SynthCaption": 1}},
    }
}
# The graph cut to one model, VPG-C on synthetic data, seeing its images (no declared contrasts: the shipped ones name
# models it leaves out)
ONE_MODEL: dict[str, Any] = {
    "train": {"variants": {"synthetic": {}}},
    "evaluate": {
        "models": {"vpgc-synthetic": "data/checkpoints/vpgc-synthetic/final"},
        "views": ["images"],
        "contrasts": None,
    },
}


def run(cmd: list[str], cwd: Path, env: dict, check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if check:
        assert done.returncode == 0, f"{cmd} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


def project_workspace(
    tmp_path: Path,
    prefect_api: str,
    params: Mapping[str, Any] | None = None,
    graph: Mapping[str, Mapping[str, Any]] | None = None,
    experiment: Mapping[str, Any] | None = None,
) -> tuple[Path, dict]:
    """The copy at `tmp_path/ws`, params.yaml with `params` merged in and `graph`'s keys replacing their section's
    (the maps that define stages: variants, models, views), the experiment it names with `experiment` merged in; its
    environment."""
    ws = tmp_path / "ws"
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info")
    for folder in ("components", "flows", "experiments"):
        shutil.copytree(ROOT / folder, ws / folder, ignore=ignore)
    for name in ("dvc.yaml", ".dvcignore", "prefect.yaml"):
        shutil.copy(ROOT / name, ws / name)
    shutil.copytree(ROOT / "data", ws / "data", ignore=shutil.ignore_patterns(*(p.name for p in ROOT.glob("data/*/"))))
    merged = deep_merge(yaml.safe_load((ROOT / "params.yaml").read_text()), deep_merge(TEST_PARAMS, params or {}))
    for section, values in (graph or {}).items():
        merged[section].update(values)
    (ws / "params.yaml").write_text(yaml.safe_dump(merged, sort_keys=False))
    if experiment:
        config = ws / "experiments" / f"{merged['experiment']}.yaml"
        config.write_text(yaml.safe_dump(deep_merge(yaml.safe_load(config.read_text()), experiment), sort_keys=False))
    env = {**os.environ, "PREFECT_API_URL": prefect_api, "MLFLOW_TRACKING_URI": f"sqlite:///{ws / 'mlflow.db'}"}
    env.pop("DEMONLAB_WORKSPACE", None)
    env.pop("DEMONLAB_PARENT_RUN_ID", None)
    run(["git", "init", "-q"], ws, env)
    run([sys.executable, "-m", "dvc", "init", "-q"], ws, env)
    run(["git", "add", "-A"], ws, env)
    run(["git", "commit", "-qm", "clone"], ws, env)
    return ws, env


def own_cache(tmp_path: Path) -> dict[str, str]:
    """Environment for pipeline stages of one test: a response cache of its own (no answer served from another
    test's run) beside the machine's plain copy of the embedded LLM (made once, ~20 s, then only read), one thread
    per stage."""
    from components.cache_root import cache_root

    shared = cache_root() / "llm"
    shared.mkdir(parents=True, exist_ok=True)
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "llm").symlink_to(shared)
    return {"DEMONLAB_CACHE": str(cache), "OMP_NUM_THREADS": "1"}
