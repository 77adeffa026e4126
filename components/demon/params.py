"""The `data:` and `normalize:` sections of `params.yaml` (the acquire and normalize stages), as schemas that
`components.params` validates (`components.config_schema`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from components.config_schema import Count


@dataclass(frozen=True)
class MiniParams:
    per_task: Count  # samples rendered per task
    seed: int


@dataclass(frozen=True)
class MiniTrainParams:
    """The upper bound's training split (stage `mini_train`): the same tasks, another seed, disjoint sample ids."""

    out: str
    categories: list[str]  # category slugs or names
    per_task: Count
    seed: int
    first_id: Count


@dataclass(frozen=True)
class DataParams:
    source: str  # mini | gdrive://<id> | https://... | s3://... | hf://... | a folder
    split: Literal["core", "full"]
    raw: str
    normalized: str
    mini: MiniParams
    mini_train: MiniTrainParams | None = None


@dataclass(frozen=True)
class NormalizeParams:
    strict: bool = False  # true: any quarantined sample or failed task fails the stage
