"""`params.yaml` is the single home of pipeline parameters (DVC tracks it; `dvc exp run -S` edits it)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from components.errors import UserError

PARAMS = Path("params.yaml")


def load_params(path: Path = PARAMS) -> dict:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def set_params(overrides: Mapping[str, Any], path: Path = PARAMS) -> None:
    """Apply `{"train.max_steps": 20, ...}` to params.yaml as `dvc exp run -S` does (comments kept).

    Only existing keys can be set, so a typo is an error instead of a silently ignored parameter.
    """
    from dvc.utils.serialize import modify_yaml

    with modify_yaml(path) as document:
        for dotted, value in overrides.items():
            *parents, leaf = dotted.split(".")
            node = document
            for key in parents:
                node = node.get(key) if isinstance(node, Mapping) else None
            if not isinstance(node, Mapping) or leaf not in node:
                raise UserError(f"{path}: no parameter `{dotted}`; `dvc params diff` or the file lists them")
            node[leaf] = value
