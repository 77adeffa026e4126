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
    # not at the top: `flows/__init__` imports this module under any Python
    from components.runtime.lifetime import die_with_parent
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
        end_open_runs()
        sys.exit(128 + signal.SIGINT)
    finally:
        send_prefect_logs()


def send_prefect_logs() -> None:
    """Send the logs still queued for the Prefect API now. Left to `logging.shutdown` at exit, the same drain takes
    ~1.5 s a stage (measured through the fork server; 0.02 s here), one stage after another."""
    if "prefect.logging.handlers" in sys.modules:
        from prefect.logging.handlers import APILogWorker

        APILogWorker.drain_all(timeout=5)  # Prefect's own bound at exit


def end_open_runs() -> None:
    """End this process's MLflow runs still RUNNING as KILLED. An interrupt that lands inside `mlflow.start_run`,
    after the run exists but before its `with` block, leaves a run that no context manager ends."""
    if "mlflow" not in sys.modules:  # nothing tracked yet
        return
    import mlflow

    from components.tracking.runs import PROCESS_TAG, this_process

    query = f"tags.`{PROCESS_TAG}` = '{this_process()}' and attributes.status = 'RUNNING'"
    try:
        for run in mlflow.search_runs(search_all_experiments=True, filter_string=query, output_format="list"):
            mlflow.MlflowClient().set_terminated(run.info.run_id, "KILLED")
    except Exception:  # best effort on the way out: the next run's reconciliation ends whatever is left
        pass
