"""No usage reporting from the tools the pipeline runs: Prefect's server telemetry, MLflow's, DVC's.

Besides sending nothing, this keeps offline machines quiet: Prefect's temporary server logs an ERROR for every
telemetry call it cannot make. One definition for every way a stage starts: `demonlab run` puts it in the
environment it hands down, and `flows/__init__.py` applies it inside each stage process, whoever started it
(plain `dvc repro`, a Prefect worker). Standard library only: it runs before Prefect or MLflow is imported, and
before `flows` checks that they are installed at all.
"""

from __future__ import annotations

from collections.abc import MutableMapping

QUIET = {"PREFECT_SERVER_ANALYTICS_ENABLED": "false", "MLFLOW_DISABLE_TELEMETRY": "true", "DVC_NO_ANALYTICS": "1"}


def quiet(env: MutableMapping[str, str]) -> None:
    """Add the no-reporting settings to `env`; a value the user set, whatever it says, wins."""
    for name, value in QUIET.items():
        env.setdefault(name, value)
