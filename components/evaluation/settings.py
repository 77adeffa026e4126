"""The `eval:` section of an experiment config: how a model is run over DEMON (decoding, batching, caching).

    eval:
      prompt: training        # VPG-C models: training (the template training used) | release (the release's chat
                              # prompt byte for byte: `###Human: <context>###Assistant:`; with decoding: sample)
      decoding: greedy        # greedy (deterministic, the default) | sample (the release's top-p sampling)
      max_new_tokens: null    # null: the model's own limit (VPG-C: model.prompt.max_new_tokens; HF models: 300)
      top_p: 0.9              # sample only: the release's values
      temperature: 1.0
      seed: 0                 # sample only: each sample draws from its own generator, seeded from (seed, uid)
      batch_size: 8
      sort_by_length: true    # batch prompts of similar length together (less padding, faster)
      limit: null             # at most this many samples per task (the first by sample_id); null = all
      image_placement: auto   # HF models: interleaved | first (all images first, [Image k] markers) | auto
      cache: true             # reuse responses from the response cache (false: recompute everything)
      precision: auto         # VPG-C models: auto (bfloat16 on bf16 matrix units, components/vpgc/precision.py) |
                              # float32 | bfloat16

The dataclass below is the schema (`components.config_schema`): unknown keys, wrong types and out-of-range values are
errors naming the key, so a typo never falls back to a default silently.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Literal, NotRequired, TypedDict, get_args

from components.config_schema import Bounds, Count, Positive, build

Prompt = Literal["training", "release"]  # components.vpgc.prompts.PRESETS (not imported: it needs torch)
Decoding = Literal["greedy", "sample"]
Placement = Literal["auto", "interleaved", "first"]
Precision = Literal["auto", "float32", "bfloat16"]  # components.vpgc.precision.PRECISIONS
PROMPTS: tuple[str, ...] = get_args(Prompt)


@dataclass(frozen=True)
class EvalSettings:
    prompt: Prompt = "training"
    decoding: Decoding = "greedy"
    max_new_tokens: Count | None = None
    top_p: Annotated[float, Bounds(gt=0, le=1)] = 0.9
    temperature: Positive = 1.0
    seed: int = 0
    batch_size: Count = 8
    sort_by_length: bool = True
    limit: Count | None = None
    image_placement: Placement = "auto"
    cache: bool = True
    precision: Precision = "auto"

    def replace(self, **changes: Any) -> EvalSettings:
        """A copy with `changes` (None values are ignored: an unset command-line option changes nothing)."""
        given = {k: v for k, v in changes.items() if v is not None}
        return eval_settings_from_dict({**dataclasses.asdict(self), **given}, "eval")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class ModelEntry(TypedDict):
    model: str  # a checkpoint folder, models:/<name>@<alias>, hf:<id> or an experiment file
    vpgc: NotRequired[Literal["on", "off"] | bool]


@dataclass(frozen=True)
class BaselineParams:
    """`params.yaml` `baseline:` (flows/score.py)."""

    predictions: str
    kinds: list[str]
    seed: int = 0


@dataclass(frozen=True)
class ScoreParams:
    out: str


@dataclass(frozen=True)
class EvaluateParams:
    """`params.yaml` `evaluate:` (flows/evaluate.py): the models x views x task groups the pipeline evaluates."""

    out: str = "data/eval"
    report: str = "data/report"
    limit: Count | None = None
    batch_size: Count | None = None
    groups: dict[str, Literal["all"] | list[str]] = dataclasses.field(default_factory=dict)
    models: dict[str, str | ModelEntry] = dataclasses.field(default_factory=dict)
    views: list[Literal["images", "blind"]] = dataclasses.field(default_factory=lambda: ["images"])
    contrasts: list[str] | None = None  # `model[view] - model[view]`; null: the ablation's default family


def eval_settings_from_dict(data: Mapping[str, Any] | None, where: str = "eval") -> EvalSettings:
    """Validate an `eval:` mapping (missing keys take the defaults above); a `ConfigError` lists every problem."""
    return EvalSettings() if data is None else build(EvalSettings, data, where)


def load_eval_settings(document: Mapping[str, Any], path: str | os.PathLike[str]) -> EvalSettings:
    """The `eval:` section of a whole experiment document (`components.experiment.load_experiment`); a config
    without one evaluates with the defaults."""
    return eval_settings_from_dict(document.get("eval"), f"{path}: eval")
