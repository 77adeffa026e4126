"""Where demonlab keeps what it makes once and reuses across workspaces (the embedded LLM's plain copy, Prefect's
migrated empty database): $DEMONLAB_CACHE, else ~/.cache/demonlab."""

from __future__ import annotations

import os
from pathlib import Path

DEFAULT_CACHE = Path("~/.cache/demonlab").expanduser()


def cache_root() -> Path:
    return Path(os.environ.get("DEMONLAB_CACHE", DEFAULT_CACHE))
