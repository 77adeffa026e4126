"""Which data a stage run read and wrote, as DVC knows it: content hashes from `dvc.lock`, for MLflow tags.

A stage's inputs are the outputs of the stages before it, whose hashes `dvc.lock` already holds when the stage
starts (DVC writes a stage's lock entry as soon as it finishes); a stage's own outputs are hashed once it is done.
Code is covered by the `git.commit` tag, so only data (paths some stage outputs) is tagged.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import yaml

LOCK_FILE = "dvc.lock"


def lock_stages(path: Path) -> dict:
    """The stages of a `dvc.lock` ({} when there is none). DVC rewrites the file in place, so a stage starting
    beside another that is being recorded (`demonlab run --parallel`) can catch it half-written: then it reads
    again, a moment later. PyYAML's C loader: DVC's own loader takes ~0.3 s on this project's lock."""
    for _ in range(40):
        try:
            return _stages(path)
        except yaml.YAMLError:
            time.sleep(0.05)
    return _stages(path)


def _stages(path: Path) -> dict:
    lock = yaml.load(path.read_text(encoding="utf-8"), Loader=yaml.CSafeLoader) if path.is_file() else None
    return (lock or {}).get("stages", {})


def _hash(entry: dict) -> str:
    return str(entry.get("md5") or entry.get("hash") or entry.get("etag") or "")


def output_hashes(lock: dict) -> dict[str, str]:
    """Every stage output path -> its content hash (a directory's `.dir` hash)."""
    return {out["path"]: _hash(out) for stage in lock.values() for out in stage.get("outs", [])}


def stage_data_tags(workspace: Path, stage: str, outputs: bool = False) -> dict[str, str]:
    """`dvc.in.<path>` tags for the data `stage` reads (and `dvc.out.<path>` for what it wrote, once done)."""
    lock = lock_stages(workspace / LOCK_FILE)
    entry = lock.get(stage, {})
    produced = output_hashes(lock)
    tags = {f"dvc.in.{d['path']}": produced[d["path"]] for d in entry.get("deps", []) if d["path"] in produced}
    if outputs:
        tags.update({f"dvc.out.{o['path']}": _hash(o) for o in entry.get("outs", [])})
    return tags


def dvc_run_tags(workspace: Path) -> dict[str, str]:
    """Tags for a stage run started by DVC (`DVC_STAGE` is set for every stage command; `DVC_EXP_NAME` under
    `dvc exp run`); nothing outside DVC."""
    stage = os.environ.get("DVC_STAGE")
    if not stage:
        return {}
    tags = {"dvc.stage": stage, **stage_data_tags(workspace, stage)}
    if experiment := os.environ.get("DVC_EXP_NAME"):
        tags["dvc.exp_name"] = experiment
    return tags
