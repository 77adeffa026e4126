"""Thin Prefect flows, one per DVC stage, and the pipeline flow.

`python -m flows.<stage>` runs this first, whoever starts the stage (`demonlab run`, plain `dvc repro`, a Prefect
worker), so here a stage process quiets the tools before Prefect or MLflow is imported, and stops with one line
instead of a traceback when its `python` is not the project's environment (`dvc` from `.venv/bin/` without
`source .venv/bin/activate` runs stages with the system Python). Standard library and `components` only.
"""

import os
import sys
from importlib.util import find_spec

from components.runtime.quiet import quiet
from flows.entry import USER_ERROR_EXIT

quiet(os.environ)

# What every stage imports first; `find_spec` of a top-level name looks at sys.path without importing anything.
_missing = [name for name in ("prefect", "mlflow", "yaml") if find_spec(name) is None]
if _missing:
    print(
        f"error: {sys.executable} lacks demonlab's dependencies ({', '.join(_missing)}): run "
        "`source .venv/bin/activate` first (after `bash scripts/setup.sh`), or use `demonlab run`",
        file=sys.stderr,
    )
    sys.exit(USER_ERROR_EXIT)
