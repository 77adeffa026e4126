"""Experiment configs (`experiments/<name>.yaml`): one file, one section per concern (`model`, `synth`, `train`,
`eval`), with overrides from `params.yaml` merged on top so `dvc exp run -S` can vary any setting.

Merge rule (`deep_merge`): sections merge key by key, but a mapping that is one value (a data mix, an edit-type
table: `REPLACED_KEYS`) or a component spec switched to another `kind` is replaced whole by its override.

Each package validates its own section (unknown keys are errors there); this module only reads and merges.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from components.errors import UserError


def plain(value: Any) -> Any:
    """Nested dicts/lists/tuples as plain YAML/JSON data (tuples become lists): a config dataclass's `to_dict`."""
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    return value


# Mappings that are one value, not a section of settings: an override states the whole value. A data mix or an
# edit-type table lists what to use (a key left out means "none of it"), so merging `{SynthCaption: 8}` into
# `{SynthDifference: 4, SynthCaption: 4}` would silently keep the synthetic pairs in a captions-only variant.
REPLACED_KEYS = frozenset({"mix", "edit_types"})


def _replaces(key: str, base: Any, override: Mapping[str, Any]) -> bool:
    """Whether `override` replaces `base` whole instead of merging into it: a value mapping (`REPLACED_KEYS`), or
    a component spec switched to another `kind` (a folder source must not inherit the procedural one's keys)."""
    if key in REPLACED_KEYS:
        return True
    return isinstance(base, Mapping) and "kind" in override and override.get("kind") != base.get("kind")


def deep_merge(base: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """`base` with `overrides` applied: sections merge key by key; anything else, and the mappings `_replaces`
    names, is replaced whole."""
    merged = copy.deepcopy(dict(base))
    for key, value in overrides.items():
        current = merged.get(key)
        if isinstance(value, Mapping) and isinstance(current, Mapping) and not _replaces(key, current, value):
            merged[key] = deep_merge(current, value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def load_experiment(path: str | os.PathLike[str], overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The whole experiment document with `overrides` (same nesting, e.g. `{"train": {"vpgc": {"lr": 1e-4}}}`)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: experiment config not found; pick one of experiments/*.yaml")
    try:
        document = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise UserError(f"{path}: not valid YAML ({error})") from None
    if not isinstance(document, dict):
        raise UserError(f"{path}: expected a mapping of sections (model, synth, train, eval)")
    return deep_merge(document, overrides or {})


def section(document: Mapping[str, Any], name: str, path: str | os.PathLike[str]) -> dict[str, Any]:
    """One section of an experiment document; a clear error when the experiment lacks it."""
    value = document.get(name)
    if not isinstance(value, Mapping):
        raise UserError(f"{path}: no `{name}:` section; add one (see experiments/tiny.yaml for every key)")
    return dict(value)
