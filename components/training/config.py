"""The `train:` section of `experiments/<name>.yaml`: typed, validated settings for the two training stages.

    train:
      seed: 0
      precision: auto        # auto: bfloat16 on bf16 matrix units (vpgc/precision.py), else float32 | float32
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
from typing import Annotated, Any, Literal, TypedDict

from components.config_schema import Bounds, Count, Fraction, NonNegative, Positive, build, raise_problems, suggest
from components.errors import UserError

STAGES = ("align", "vpgc")
Precision = Literal["auto", "float32", "bfloat16"]  # components.vpgc.precision.PRECISIONS (not imported: torch)
Strategy = Literal["ddp", "fsdp"]


class MixSource(TypedDict):
    """A mix entry that reads its task from its own folder in the unified schema."""

    samples: Count
    data: str


@dataclass(frozen=True)
class StageSettings:
    """One stage's optimisation: AdamW, linear warm-up then cosine decay to `min_lr`, per-step data mix."""

    steps: Count
    mix: dict[str, Count | MixSource]  # task -> samples per global step, or {samples: n, data: folder}
    lr: Positive = 2e-5
    min_lr: Annotated[float, Bounds(ge=0)] = 0.0
    warmup_steps: NonNegative = 0
    weight_decay: Annotated[float, Bounds(ge=0)] = 0.05  # on matrices and queries; never on biases or norms (LAVIS)
    betas: tuple[Fraction, Fraction] = (0.9, 0.999)
    grad_clip: Positive | None = 1.0  # max global grad norm; null = no clipping
    micro_batch: Count = 8  # samples per forward/backward on one rank
    checkpoint_every: Count = 100  # steps; `DIR/step-XXXXXX/`
    keep_checkpoints: Count = 2  # newest step folders kept (the final model is always kept)
    log_every: Count = 1

    @property
    def global_batch(self) -> int:
        return sum(mix_counts(self.mix).values())


@dataclass(frozen=True)
class TrainSettings:
    seed: int = 0
    precision: Precision = "auto"
    strategy: Strategy = "ddp"
    heldout: NonNegative = 8
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


@dataclass(frozen=True)
class TrainParams:
    """`params.yaml` `train:`: where the training stages write, and the ablation's variants (flows/train.py); each
    variant overrides the experiment's `train.vpgc` and is validated as such (`components.params`)."""

    out: str
    max_steps: Count | None = None
    variants: dict[str, dict[str, Any] | None] = dataclasses.field(default_factory=dict)
    registered_variant: str | None = None
    register_as: str | None = None


def mix_counts(mix: dict[str, Any]) -> dict[str, int]:
    """Samples per global step of each task of a (validated) mix."""
    return {task: entry if isinstance(entry, int) else entry["samples"] for task, entry in mix.items()}


def mix_folders(mix: dict[str, Any]) -> dict[str, str]:
    """The tasks of a (validated) mix that name their own data folder, and the folder."""
    return {task: entry["data"] for task, entry in mix.items() if isinstance(entry, dict)}


def mix_tasks() -> tuple[str, ...]:
    """The tasks a mix may name without its own folder: DEMON's (mini-DEMON writes the same) and the synthetic ones."""
    from components.demon.registry import all_tasks
    from components.synth.config import SYNTH_TASKS

    return (*SYNTH_TASKS, *(task.folder for task in all_tasks()))


def stage_problems(settings: StageSettings, where: str) -> list[str]:
    """Rules between a stage's fields: a schedule that fits the run, a mix of tasks that exist."""
    found = []
    if not settings.mix:
        found.append(f"{where}.mix: name at least one task, e.g. {{SynthCaption: 64}}, got {{}}")
    known, folders = mix_tasks(), mix_folders(settings.mix)
    for task in settings.mix:
        if task not in known and task not in folders:
            found.append(f"{where}.mix.{task}: no such task{suggest(task, known)}; use a DEMON or synthetic task, "
                         f"or {{samples: n, data: folder}} for a folder of your own, got {task!r}")  # fmt: skip
    if settings.min_lr > settings.lr:
        found.append(f"{where}.min_lr: must be at most lr ({settings.lr:g}), got {settings.min_lr:g}")
    if settings.warmup_steps >= settings.steps:
        found.append(f"{where}.warmup_steps: the warm-up must be shorter than the run ({settings.steps} steps), "
                     f"got {settings.warmup_steps}")  # fmt: skip
    return found


def train_settings_from_dict(data: Any, where: str = "train") -> TrainSettings:
    """Validate the `train:` mapping (`where`: its key path in errors); a `ConfigError` lists every problem."""
    settings = build(TrainSettings, data, where)
    raise_problems(
        [p for name in STAGES if (stage := getattr(settings, name)) for p in stage_problems(stage, f"{where}.{name}")]
    )
    return settings
