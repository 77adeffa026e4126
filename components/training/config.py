"""The `train:` section of `experiments/<name>.yaml`: typed, validated settings for the two training stages.

    train:
      seed: 0
      precision: auto        # auto = bfloat16 autocast on CUDA, float32 on CPU | float32 | bfloat16
      strategy: ddp          # under torchrun: ddp (replicate) | fsdp (also shard the frozen decoder blocks)
      heldout: 8             # samples per task kept out of training: held-out loss before vs after
      align: {...}           # optional: train the VPG on captions (embedded default only)
      vpgc: {...}            # train VPG-C on synthetic pairs mixed with captions

Each stage section is a `StageSettings`. `mix` is the mixing rule: samples of each task in every global step
(e.g. `{SynthDifference: 24, SynthCaption: 64}`, the paper's 24 + 64); the global batch is their sum, split over
ranks and then into micro-batches of `micro_batch` samples (gradient accumulation). A task read from another
folder in the unified schema than `--data` names it: `SynthCaption: {samples: 64, data: data/cc3m-captions}` (the
paper's caption stream is its own 500K CC3M pairs, not the synthetic source's captions). Unknown keys are errors.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from components.errors import UserError

STAGES = ("align", "vpgc")
PRECISIONS = ("auto", "float32", "bfloat16")
STRATEGIES = ("ddp", "fsdp")


@dataclass(frozen=True)
class StageSettings:
    """One stage's optimisation: AdamW, linear warm-up then cosine decay to `min_lr`, per-step data mix."""

    steps: int
    mix: dict[str, int | dict[str, Any]]  # task -> samples per global step, or {samples: n, data: folder}
    lr: float = 2e-5
    min_lr: float = 0.0
    warmup_steps: int = 0
    weight_decay: float = 0.05  # on matrices and queries; never on biases or norms (LAVIS's rule)
    betas: tuple[float, float] = (0.9, 0.999)
    grad_clip: float | None = 1.0  # max global grad norm; null = no clipping
    micro_batch: int = 8  # samples per forward/backward on one rank
    checkpoint_every: int = 100  # steps; `DIR/step-XXXXXX/`
    keep_checkpoints: int = 2  # newest step folders kept (the final model is always kept)
    log_every: int = 1

    @property
    def global_batch(self) -> int:
        return sum(mix_counts(self.mix).values())


@dataclass(frozen=True)
class TrainSettings:
    seed: int = 0
    precision: str = "auto"
    strategy: str = "ddp"
    heldout: int = 8
    align: StageSettings | None = None
    vpgc: StageSettings | None = None

    def stage(self, name: str, where: str) -> StageSettings:
        settings = getattr(self, name)
        if settings is None:
            raise UserError(
                f"{where}: no `train.{name}:` section, so this experiment has no {name} stage"
                + ("; its VPG comes from released weights (model.vpg.weights / model.checkpoint)" * (name == "align"))
            )
        return settings

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def mix_counts(mix: dict[str, Any]) -> dict[str, int]:
    """Samples per global step of each task of a (validated) mix."""
    return {task: entry if isinstance(entry, int) else entry["samples"] for task, entry in mix.items()}


def mix_folders(mix: dict[str, Any]) -> dict[str, str]:
    """The tasks of a (validated) mix that name their own data folder, and the folder."""
    return {task: entry["data"] for task, entry in mix.items() if isinstance(entry, dict)}


def _mix_entry(entry: Any) -> bool:
    """A valid mix value: samples > 0, or {samples: > 0, data: a folder}."""
    if isinstance(entry, dict):
        return set(entry) == {"samples", "data"} and isinstance(entry["data"], str) and _mix_entry(entry["samples"])
    return isinstance(entry, int) and not isinstance(entry, bool) and entry > 0


def _check_keys(cls: type, data: Any, where: str) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise UserError(f"{where}: expected a mapping, got {type(data).__name__}")
    allowed = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise UserError(f"{where}: unknown key(s) {unknown}; allowed: {sorted(allowed)}")
    return dict(data)


def _stage(data: Any, where: str) -> StageSettings:
    values = _check_keys(StageSettings, data, where)
    for required in ("steps", "mix"):
        if required not in values:
            raise UserError(f"{where}: missing `{required}`")
    mix = values["mix"]
    if not isinstance(mix, dict) or not mix or not all(_mix_entry(entry) for entry in mix.values()):
        raise UserError(
            f"{where}.mix: expected {{task: samples per step > 0}} (or {{task: {{samples: n, data: folder}}}}), "
            f"e.g. {{SynthCaption: 64}}; got {mix}"
        )
    if "betas" in values:
        values["betas"] = tuple(values["betas"])
    settings = StageSettings(**values)
    positive = ("steps", "micro_batch", "checkpoint_every", "keep_checkpoints", "log_every")
    for name in positive:
        if getattr(settings, name) < 1:
            raise UserError(f"{where}.{name}: must be >= 1, got {getattr(settings, name)}")
    if settings.lr <= 0 or settings.min_lr < 0 or settings.min_lr > settings.lr:
        raise UserError(f"{where}: need 0 <= min_lr <= lr and lr > 0 (lr {settings.lr}, min_lr {settings.min_lr})")
    if not 0 <= settings.warmup_steps <= settings.steps:
        raise UserError(f"{where}.warmup_steps: must be within 0..steps ({settings.steps})")
    return settings


def train_settings_from_dict(data: Any, where: str = "train") -> TrainSettings:
    """Validate the `train:` mapping; `where` (e.g. `experiments/tiny.yaml: train`) names the source in errors."""
    values = _check_keys(TrainSettings, data, where)
    for name in STAGES:
        if values.get(name) is not None:
            values[name] = _stage(values[name], f"{where}.{name}")
    settings = TrainSettings(**values)
    if settings.precision not in PRECISIONS:
        raise UserError(f"{where}.precision: {settings.precision!r} is not one of {list(PRECISIONS)}")
    if settings.strategy not in STRATEGIES:
        raise UserError(f"{where}.strategy: {settings.strategy!r} is not one of {list(STRATEGIES)}")
    if settings.heldout < 0:
        raise UserError(f"{where}.heldout: must be >= 0")
    return settings
