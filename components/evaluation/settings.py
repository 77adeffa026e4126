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

Unknown keys and wrong types are `UserError`s naming the key, so a typo never falls back to a default silently.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from components.errors import UserError

Prompt = Literal["training", "release"]
Decoding = Literal["greedy", "sample"]
Placement = Literal["auto", "interleaved", "first"]
PROMPTS: tuple[str, ...] = ("training", "release")  # components.vpgc.prompts.PRESETS (not imported: it needs torch)
DECODINGS: tuple[str, ...] = ("greedy", "sample")
PLACEMENTS: tuple[str, ...] = ("auto", "interleaved", "first")


@dataclass(frozen=True)
class EvalSettings:
    prompt: Prompt = "training"
    decoding: Decoding = "greedy"
    max_new_tokens: int | None = None
    top_p: float = 0.9
    temperature: float = 1.0
    seed: int = 0
    batch_size: int = 8
    sort_by_length: bool = True
    limit: int | None = None
    image_placement: Placement = "auto"
    cache: bool = True

    def replace(self, **changes: Any) -> EvalSettings:
        """A copy with `changes` (None values are ignored: an unset command-line option changes nothing)."""
        given = {k: v for k, v in changes.items() if v is not None}
        return eval_settings_from_dict({**dataclasses.asdict(self), **given}, "eval")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# (allowed types, check, what a valid value looks like)
_CHECKS: dict[str, tuple[tuple[type, ...], Any, str]] = {
    "prompt": ((str,), lambda v: v in PROMPTS, f"one of {list(PROMPTS)}"),
    "decoding": ((str,), lambda v: v in DECODINGS, f"one of {list(DECODINGS)}"),
    "max_new_tokens": ((int, type(None)), lambda v: v is None or v > 0, "a positive integer or null"),
    "top_p": ((int, float), lambda v: 0 < v <= 1, "a number in (0, 1]"),
    "temperature": ((int, float), lambda v: v > 0, "a positive number"),
    "seed": ((int,), lambda v: True, "an integer"),
    "batch_size": ((int,), lambda v: v > 0, "a positive integer"),
    "sort_by_length": ((bool,), lambda v: True, "true or false"),
    "limit": ((int, type(None)), lambda v: v is None or v > 0, "a positive integer or null"),
    "image_placement": ((str,), lambda v: v in PLACEMENTS, f"one of {list(PLACEMENTS)}"),
    "cache": ((bool,), lambda v: True, "true or false"),
}


def eval_settings_from_dict(data: Mapping[str, Any] | None, where: str = "eval") -> EvalSettings:
    """Validate an `eval:` mapping (missing keys take the defaults above)."""
    if data is None:
        return EvalSettings()
    if not isinstance(data, Mapping):
        raise UserError(f"{where}: expected a mapping of evaluation settings, got {type(data).__name__}")
    unknown = sorted(set(data) - set(_CHECKS))
    if unknown:
        raise UserError(f"{where}: unknown key(s) {unknown}; allowed: {sorted(_CHECKS)}")
    for key, value in data.items():
        types, check, expected = _CHECKS[key]
        is_bool = isinstance(value, bool)
        if (is_bool and bool not in types) or not isinstance(value, types) or not check(value):
            raise UserError(f"{where}.{key}: {value!r} is not {expected}")
    return EvalSettings(**data)


def load_eval_settings(document: Mapping[str, Any], path: str | os.PathLike[str]) -> EvalSettings:
    """The `eval:` section of a whole experiment document (`components.experiment.load_experiment`); a config
    without one evaluates with the defaults."""
    return eval_settings_from_dict(document.get("eval"), f"{path}: eval")
