"""The `__main__` of a stage flow: a user's mistake exits 2 with one clear line, anything else keeps its traceback."""

from __future__ import annotations

import sys
from collections.abc import Callable

from components.errors import UserError

USER_ERROR_EXIT = 2  # the pipeline does not retry a stage that exited with this


def stage_main(entry: Callable[[], object]) -> None:
    try:
        entry()
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(USER_ERROR_EXIT)
