"""The one reader of DEMON task files (`<Task>/<split>/<split>.json`), shared by acquisition and normalization.

Fetch and normalize must judge a file the same way: a file fetch installs is one normalize can read, and a file
normalize rejects is one fetch reports the same way. So both call `read_task_file`, which accepts what the real
release holds (a UTF-8 BOM before the JSON) and turns every way a file can fail (missing, unreadable, a folder, a
link loop, not UTF-8, not JSON, not the DEMON schema) into a `TaskFileError` whose message says which and why.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from components.errors import UserError


class TaskFileError(UserError):
    """A task file that cannot be used; the message names the file and the fix."""


@dataclass(frozen=True)
class TaskDocument:
    payload: bytes  # the file's bytes, as hashed for provenance
    samples: list  # `data`: one object per instruction (checked one by one by normalize)
    templates: list  # `metadata.task_instruction`
    metadata: dict


def read_task_file(path: Path, label: str) -> TaskDocument:
    """Read and check the outer schema of a task file; `label` names it in messages (e.g. `TQA/core/core.json`)."""
    try:
        payload = path.read_bytes()
    except FileNotFoundError:
        raise TaskFileError(f"{label} is missing; expected the official layout <Task>/<split>/<split>.json") from None
    except OSError as error:  # permission denied, a folder, a link loop
        raise TaskFileError(f"{label} cannot be read ({error.strerror}); fix it or re-download this task") from None
    try:
        document = json.loads(payload.decode("utf-8-sig"))  # some release files start with a UTF-8 BOM
    except (UnicodeDecodeError, ValueError, RecursionError) as error:
        raise TaskFileError(f"{label} is not valid JSON ({error}); re-download this task") from None
    metadata = document.get("metadata") if isinstance(document, dict) else None
    samples = document.get("data") if isinstance(document, dict) else None
    templates = metadata.get("task_instruction") if isinstance(metadata, dict) else None
    if not isinstance(samples, list) or not isinstance(templates, list):
        raise TaskFileError(
            f"{label} does not follow the DEMON schema (expected an object with a 'data' list and a "
            "'metadata.task_instruction' list); re-download this task"
        )
    return TaskDocument(payload, samples, templates, metadata)


def display_name(name: str) -> str:
    """A file name as text that can be printed and written to JSON: bytes that are not UTF-8 shown as `\\xNN`."""
    return os.fsencode(name).decode("utf-8", "backslashreplace")
