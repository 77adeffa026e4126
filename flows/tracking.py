"""The MLflow run of a stage flow, tagged with the Prefect flow-run it belongs to; and reconciliation: what a killed
run left `Running` in either store, set right.

A flow run records where it runs as tags (the workspace's key, `demonlab-process:host:pid`, `claim_flow_run`), as its
MLflow run does (`components.tracking.runs.start_run`), and a pipeline the lease of the workspace's concurrency slot
it holds. `reconcile` ends what a process killed outright left behind: MLflow runs become KILLED
(`components.tracking.reconcile`), Prefect flow runs still `Running` and their unfinished task runs become `Crashed`,
each saying who found it and why, and the slot a killed pipeline held is freed. Only this workspace's records whose
process on this host has exited: never a live one, never another host's. A pipeline run reconciles when it starts,
a stage when it runs outside a pipeline (plain `dvc repro`), `demonlab doctor` (`python -m flows.tracking`) on demand.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from uuid import UUID

import mlflow
from prefect import get_run_logger
from prefect.client.orchestration import SyncPrefectClient, get_client
from prefect.client.schemas.actions import GlobalConcurrencyLimitUpdate
from prefect.client.schemas.filters import (
    FlowRunFilter,
    FlowRunFilterId,
    FlowRunFilterState,
    FlowRunFilterStateType,
    FlowRunFilterTags,
    TaskRunFilter,
    TaskRunFilterState,
    TaskRunFilterStateType,
)
from prefect.client.schemas.objects import StateType
from prefect.exceptions import ObjectNotFound
from prefect.runtime import flow_run
from prefect.states import Crashed

from components.tracking.reconcile import finding, orphaned, reconcile_runs
from components.tracking.runs import PARENT_RUN_ENV, run_name, stage_run, this_process, workspace_key

PROCESS_TAG = "demonlab-process:"
LEASE_TAG = "demonlab-lease:"
DISPATCH_ENV = "DEMONLAB_DISPATCH"  # the `dvc-stage` flow run (flows.pool) that started this stage on a worker
DISPATCH_TAG = "demonlab-dispatch:"
UNFINISHED = [StateType.SCHEDULED, StateType.PENDING, StateType.RUNNING]


@contextmanager
def tracked_stage(stage: str, params: Mapping, experiment: str | None = None) -> Iterator[mlflow.ActiveRun]:
    claim_flow_run(name=run_name(stage))  # named as its MLflow run, so the Prefect UI reads as clearly
    if PARENT_RUN_ENV not in os.environ:  # a pipeline reconciled when it started
        for line in reconcile(f"stage {stage!r} (flow run {flow_run.get_id()})"):
            get_run_logger().warning("reconciled: %s", line)
    tags = {"prefect.flow_run_id": str(flow_run.get_id() or ""), "demonlab.experiment": experiment or ""}
    with stage_run(stage, params, tags=tags) as run:
        yield run


def claim_flow_run(*tags: str, name: str | None = None) -> None:
    """Tag the current flow run with this workspace, this process and `tags`, so `reconcile` can tell it was left;
    `name` replaces Prefect's generated one (`evaluate vpgc-captions images demon`, not `witty-otter`)."""
    if (run_id := flow_run.get_id()) is None:
        return
    if dispatch := os.environ.get(DISPATCH_ENV):  # so the pipeline can end it if the worker dies
        tags = (*tags, DISPATCH_TAG + dispatch)
    with get_client(sync_client=True) as client:
        tags = (*client.read_flow_run(UUID(run_id)).tags, workspace_key(), PROCESS_TAG + this_process(), *tags)
        client.update_flow_run(UUID(run_id), tags=sorted(set(tags)), name=name)


def reconcile(found_by: str) -> list[str]:
    """End what killed processes of this workspace left running in MLflow and Prefect; one line per record."""
    lines = [f"MLflow run {run.info.run_id} ({run.info.run_name}) -> KILLED" for run in reconcile_runs(found_by)]
    running = FlowRunFilter(
        state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.RUNNING])),
        tags=FlowRunFilterTags(all_=[workspace_key()]),
    )
    with get_client(sync_client=True) as client:
        live_holders = 0
        for run in client.read_flow_runs(flow_run_filter=running):
            process = next(iter(_tagged(run.tags, PROCESS_TAG)), "")
            leases = [UUID(lease) for lease in _tagged(run.tags, LEASE_TAG)]
            if run.start_time is None or not orphaned(process, run.start_time.timestamp()):
                live_holders += bool(leases)
                continue
            message = f"Crashed: {finding(found_by, process)}"
            for lease in leases:  # the server knows it unless restarted since; then `_free_slot`
                client.release_concurrency_slots_with_lease(lease)
            unfinished = client.read_task_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run.id])),
                task_run_filter=TaskRunFilter(state=TaskRunFilterState(type=TaskRunFilterStateType(any_=UNFINISHED))),
            )
            for task_run in unfinished:
                client.set_task_run_state(task_run.id, Crashed(message=message), force=True)
            client.set_flow_run_state(run.id, Crashed(message=message), force=True)
            lines.append(f"Prefect flow run {run.name} ({run.id}) and {len(unfinished)} task run(s) -> Crashed")
        if not live_holders:
            lines += _free_slot(client)
    return lines


def _tagged(tags: list[str], prefix: str) -> list[str]:
    return [tag.removeprefix(prefix) for tag in tags if tag.startswith(prefix)]


def _free_slot(client: SyncPrefectClient) -> list[str]:
    """Free the workspace's pipeline slot when no live run holds it: a server restarted since a pipeline was killed
    holding it has forgotten the lease (Prefect keeps leases in memory), so nothing else would ever free it."""
    try:
        limit = client.read_global_concurrency_limit_by_name(workspace_key())
    except ObjectNotFound:
        return []
    if not limit.active_slots:
        return []
    client.update_global_concurrency_limit(limit.name, GlobalConcurrencyLimitUpdate(active_slots=0))
    return [f"Prefect concurrency limit {limit.name}: {limit.active_slots} slot(s) held by no live run -> freed"]


if __name__ == "__main__":
    lines = reconcile("demonlab doctor")
    print("\n".join(lines) if lines else "nothing to reconcile: no run of this workspace was left running")
