"""Experiment configs (`experiments/<name>.yaml`): one file, one section per concern (`model`, `synth`, `train`,
`eval`), with overrides from `params.yaml` merged on top so `dvc exp run -S` can vary any setting.

Merge rule (`deep_merge`): sections merge key by key, but a mapping that is one value (a data mix, an edit-type
table: `REPLACED_KEYS`) or a component spec switched to another `kind` is replaced whole by its override.

Each package validates its own section against its dataclasses (`components.config_schema`); `load_experiment`
runs every section's validation, so every command that loads an experiment refuses a broken one before it starts.
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
# The sections an experiment may have; each package owns and validates its own (`validate_experiment`).
SECTIONS = ("model", "synth", "train", "eval")


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


def read_experiment(path: str | os.PathLike[str], overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The experiment document with `overrides` merged, not yet validated; a `UserError` naming the file (and the
    line, for YAML errors) when it is missing, unparsable, empty or not a mapping.

    `base: <name>` makes the file a change of `experiments/<name>.yaml` (beside it): the base's document with this
    one merged on top by the merge rule, so an experiment states only how it differs (`small` extends `tiny`)."""
    document = _read_document(Path(path), ())
    return deep_merge(document, overrides or {})


def _read_document(path: Path, seen: tuple[Path, ...]) -> dict[str, Any]:
    """One file with its `base:` chain resolved (`seen`: the files that extend it, to refuse a cycle)."""
    if not path.is_file():
        raise UserError(f"{path}: experiment config not found; pick one of experiments/*.yaml")
    try:
        document = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        reason = " ".join(str(getattr(error, "problem", None) or error).split())
        raise UserError(f"{where}: not valid YAML: {reason}") from None
    if document is None:
        raise UserError(f"{path}: the file is empty; an experiment is a mapping of sections {list(SECTIONS)}")
    if not isinstance(document, dict):
        raise UserError(f"{path}: expected a mapping of sections {list(SECTIONS)}, got a {type(document).__name__}")
    base = document.pop("base", None)
    if base is None:
        return document
    if not isinstance(base, str):
        raise UserError(f"{path}: base: expected an experiment name (experiments/<name>.yaml), got {base!r}")
    base_path = path.parent / f"{base}.yaml"
    if base_path.resolve() in seen or base_path.resolve() == path.resolve():
        raise UserError(f"{path}: base: {base} extends this file again (a cycle); point it at another experiment")
    return deep_merge(_read_document(base_path, (*seen, path.resolve())), document)


def validate_experiment(document: Mapping[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """Each section present built by the package that owns it (None where it has problems), and every problem of
    the document, one line each: unknown sections, each section's schema and cross-field rules."""
    from components.config_schema import ConfigError, unknown_key
    from components.evaluation.settings import eval_settings_from_dict
    from components.synth.config import synth_config_from_dict
    from components.training.config import train_settings_from_dict
    from components.vpgc.config import model_config_from_dict

    builders = {"model": model_config_from_dict, "synth": synth_config_from_dict, "train": train_settings_from_dict,
                "eval": eval_settings_from_dict}  # fmt: skip
    problems = [unknown_key("", key, value, SECTIONS) for key, value in document.items() if key not in SECTIONS]
    built: dict[str, Any] = {}
    for name, build in builders.items():
        if name not in document:
            continue
        try:
            built[name] = build(document[name], name)
        except ConfigError as error:
            problems += error.problems
            built[name] = None
    return built, problems


def load_experiment(path: str | os.PathLike[str], overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The whole experiment document with `overrides` (same nesting, e.g. `{"train": {"vpgc": {"lr": 1e-4}}}`),
    validated: a `ConfigError` lists every problem before anything is loaded or started."""
    from components.config_schema import raise_problems

    document = read_experiment(path, overrides)
    raise_problems(validate_experiment(document)[1], str(path))
    return document


def section(document: Mapping[str, Any], name: str, path: str | os.PathLike[str]) -> dict[str, Any]:
    """One section of an experiment document; a clear error when the experiment lacks it."""
    value = document.get(name)
    if not isinstance(value, Mapping):
        raise UserError(f"{path}: no `{name}:` section; add one (see experiments/tiny.yaml for every key)")
    return dict(value)
