"""The MLflow run of a stage flow, tagged with the Prefect flow-run it belongs to."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager

import mlflow
from prefect.runtime import flow_run

from components.tracking.runs import stage_run


@contextmanager
def tracked_stage(stage: str, params: Mapping, experiment: str | None = None) -> Iterator[mlflow.ActiveRun]:
    tags = {"prefect.flow_run_id": str(flow_run.get_id() or ""), "demonlab.experiment": experiment or ""}
    with stage_run(stage, params, tags=tags) as run:
        yield run
