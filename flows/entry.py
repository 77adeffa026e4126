"""The `__main__` of a stage flow: a user's mistake exits 2 with one clear line, anything else keeps its traceback;
the process ends with whoever started it (DVC, `demonlab run`), and Ctrl-C ends it quietly (Prefect and MLflow have
recorded the run as stopped by then)."""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable

from components.errors import UserError

USER_ERROR_EXIT = 2  # the pipeline does not retry a stage that exited with this


def stage_main(entry: Callable[[], object]) -> None:
    from components.lifetime import die_with_parent  # not at the top: `flows/__init__` imports this under any Python
    from components.security import check_prefect_login

    die_with_parent()
    try:
        if api := os.environ.get("PREFECT_API_URL"):  # a secured server refusing us: one line, not a traceback
            check_prefect_login(api, os.environ.get("PREFECT_API_AUTH_STRING"))
        entry()
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(USER_ERROR_EXIT)
    except KeyboardInterrupt:
        sys.exit(128 + signal.SIGINT)
