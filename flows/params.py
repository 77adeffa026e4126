"""`params.yaml` is the single home of pipeline parameters (DVC tracks it; `dvc exp run -S` edits it)."""

from __future__ import annotations

from pathlib import Path

import yaml


def load_params(path: Path = Path("params.yaml")) -> dict:
    return yaml.safe_load(path.read_text(encoding="utf-8"))
