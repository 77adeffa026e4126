"""`params.yaml` is the single home of pipeline parameters (DVC tracks it; `dvc exp run -S` edits it)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from components.errors import UserError

PARAMS = Path("params.yaml")


def load_params(path: Path = PARAMS) -> dict:
    """params.yaml, validated with every experiment its stages use (`components.params`): a stage refuses a broken
    pipeline configuration before it touches any model, data or server."""
    from components.params import validate_params

    try:
        params = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        raise UserError(f"{path}: not valid YAML: {' '.join(str(error).split())}") from None
    validate_params(params, str(path))
    return params


def set_params(overrides: Mapping[str, Any], path: Path = PARAMS) -> None:
    """Apply `{"train.max_steps": 20, ...}` to params.yaml as `dvc exp run -S` does (comments kept)."""
    from dvc.utils.serialize import modify_yaml

    from components.params import apply_assignments

    with modify_yaml(path) as document:
        apply_assignments(document, overrides, str(path))


def hold_experiment_backbones() -> None:
    """For a fork server (`flows.params:hold_experiment_backbones`): load the frozen backbones of params.yaml's
    experiment once, so the stages it forks take them instead of loading their own (`backbones.hold_backbones`)."""
    from components.params import experiment_path
    from components.vpgc.backbones import hold_backbones
    from components.vpgc.config import load_config

    config = load_config(experiment_path(load_params()["experiment"]))
    hold_backbones(config.llm, config.vision)
