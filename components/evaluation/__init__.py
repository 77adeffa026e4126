"""Evaluation on DEMON: the official-parity and strict scorers, and score reports.

In-process API (no files): `score_task(task, preds, gts, choices, scorer) -> TaskScore` and
`summarize(task_scores) -> dict`. Folders in the release's layout: `runner.score_directory` / `demonlab score`.
Names are imported on first use, so `demonlab --help` does not pay for numpy.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "normalize": "normalize",
    "summarize": "report",
    "format_summary": "report",
    "SCORERS": "scorers",
    "Scorer": "scorers",
    "ScoringError": "scorers",
    "TaskScore": "scorers",
    "score_task": "scorers",
    "score_directory": "runner",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> object:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
