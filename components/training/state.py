"""Resumable training checkpoints: `DIR/step-XXXXXX/`, written atomically (staging folder, then one rename).

A step folder is a model checkpoint (`weights.safetensors` + `config.yaml`, loadable by `VPGCModel.from_checkpoint`)
plus what resuming needs:

    optimizer.safetensors   AdamW moments and step counts, keyed `<param index>.<name>`
    optimizer.json          the param groups (lr, betas, weight decay, ...)
    scheduler.json          the LR scheduler's state
    rng.safetensors         torch's CPU (and CUDA) generator state of every rank (dropout)
    state.json              step (= the data position, see `data.py`), loss history, held-out loss, settings

Only safetensors and JSON are read back: nothing executes code on load. A folder without `state.json` is never
complete (the rename publishes it whole), so `latest` only trusts folders that have one.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from components.errors import UserError
from components.vpgc.checkpoints import load_checkpoint, save_checkpoint

STEP_DIR = re.compile(r"step-(\d{6})")
STATE_FILE = "state.json"


def step_dir(out: Path, step: int) -> Path:
    return Path(out) / f"step-{step:06d}"


def latest(out: Path) -> Path | None:
    """The newest complete step folder under `out`, or None."""
    out = Path(out)
    if not out.is_dir():
        return None
    done = [p for p in out.iterdir() if STEP_DIR.fullmatch(p.name) and (p / STATE_FILE).is_file()]
    return max(done, key=lambda p: p.name, default=None)


def rng_state(device: torch.device) -> dict[str, torch.Tensor]:
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict[str, torch.Tensor], device: torch.device) -> None:
    torch.set_rng_state(state["cpu"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def save(
    out: Path,
    step: int,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    rng_states: list[dict[str, torch.Tensor]],
    state: dict[str, Any],
    extra_components: tuple[str, ...] = (),
    keep: int = 2,
) -> Path:
    """Write step folder `step` (rank 0 only; `rng_states` holds every rank's) and keep the newest `keep`."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    target = step_dir(out, step)
    staging = Path(tempfile.mkdtemp(dir=out, prefix=f".staging-{target.name}-"))
    try:
        save_checkpoint(model, staging, extra_components)
        optim = optimizer.state_dict()
        tensors = {
            f"{index}.{name}": value.detach().cpu().contiguous()
            for index, values in optim["state"].items()
            for name, value in values.items()
        }
        save_file(tensors, staging / "optimizer.safetensors")
        (staging / "optimizer.json").write_text(json.dumps({"param_groups": optim["param_groups"]}))
        (staging / "scheduler.json").write_text(json.dumps(scheduler.state_dict()))
        save_file(
            {f"{rank}.{name}": t.cpu() for rank, s in enumerate(rng_states) for name, t in s.items()},
            staging / "rng.safetensors",
        )
        (staging / STATE_FILE).write_text(json.dumps({**state, "step": step}, indent=1))
        if target.exists():  # a rerun of the same step after an unclean stop: replace it whole
            shutil.rmtree(target)
        os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    for old in sorted(p for p in out.iterdir() if STEP_DIR.fullmatch(p.name))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return target


def load(
    directory: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    rank: int,
    device: torch.device,
) -> dict[str, Any]:
    """Restore everything `save` wrote into the live objects; returns `state.json` (with `rng_restored`)."""
    directory = Path(directory)
    load_checkpoint(model, directory)
    groups = json.loads((directory / "optimizer.json").read_text())["param_groups"]
    for group in groups:
        group["betas"] = tuple(group["betas"])
    per_param: dict[int, dict[str, torch.Tensor]] = {}
    for key, tensor in load_file(directory / "optimizer.safetensors").items():
        index, name = key.split(".", 1)
        per_param.setdefault(int(index), {})[name] = tensor.to(device) if name != "step" else tensor
    try:
        optimizer.load_state_dict({"state": per_param, "param_groups": groups})
    except ValueError as error:
        raise UserError(
            f"{directory}: its optimizer state does not fit this model ({error}); resume with the same experiment "
            "and stage, or start a fresh --out"
        ) from None
    scheduler.load_state_dict(json.loads((directory / "scheduler.json").read_text()))
    rng = load_file(directory / "rng.safetensors")
    mine = {key.split(".", 1)[1]: value for key, value in rng.items() if key.split(".", 1)[0] == str(rank)}
    if mine:
        set_rng_state(mine, device)
    state = json.loads((directory / STATE_FILE).read_text())
    state["rng_restored"] = bool(mine)
    return state
