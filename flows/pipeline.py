"""The pipeline flow: every DVC stage in graph order as a Prefect task, inside one MLflow parent run.

DVC decides what is stale (a stage that did not change is skipped by `dvc repro --single-item`), so Prefect result
caching is off. One pipeline runs per workspace at a time (a global concurrency limit named after the workspace).
Each stage's own flow run becomes a child MLflow run through `DEMONLAB_PARENT_RUN_ID`; after it finishes, the
child and the parent are tagged with the DVC hashes of what it read and wrote. Before anything, it reconciles what a
killed run of the workspace left running in MLflow and Prefect (`flows.tracking.reconcile`). Started by `demonlab
run`, it reports progress as events on a pipe (`--events`, `components.console`) while everything else it and the
stages print goes to stdout, which `demonlab run` sends to the run's log file.
"""

from __future__ import annotations

import argparse
import json
import os
import select
import subprocess
import sys
import time
from collections import deque
from pathlib import Path
from typing import IO, Any

import mlflow
from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.client.orchestration import get_client
from prefect.concurrency.context import ConcurrencyContext
from prefect.concurrency.sync import concurrency
from prefect.runtime import deployment, flow_run, task_run

from components.atomic import write_json
from components.console import Events, StageOutput
from components.errors import UserError
from components.lifetime import GRACE, OWNER_ENV, die_with_parent, dies_with_us
from components.tracking.provenance import stage_data_tags
from components.tracking.runs import (
    PARENT_RUN_ENV,
    configure,
    git_commit,
    loggable_params,
    pipeline_run_name,
    start_run,
    workspace,
    workspace_key,
)
from flows.entry import USER_ERROR_EXIT, stage_main
from flows.params import load_params, set_params
from flows.tracking import LEASE_TAG, claim_flow_run, reconcile

RETRIES = 2
EVALUATED = "merge@"  # a merge stage's run holds one model's scores in one view: what a comparison compares
EVENTS = Events()  # `demonlab run`'s progress channel once `main` opens it; none under a worker


class StageFailed(RuntimeError):
    def __init__(self, stage: str, tail: str) -> None:
        self.stage = stage
        # DVC reports the command's own exit status; a user's mistake will fail the same way again
        self.user_error = f"exited with {USER_ERROR_EXIT}" in tail
        # a stage's own one-line message (`flows.entry.stage_main`) says it best; else the end of its output
        message = [line for line in tail.splitlines() if line.startswith("error: ")] or [tail]
        super().__init__(f"stage {stage!r} failed: " + "\n".join(message).removeprefix("error: "))


def stage_order() -> list[str]:
    """DVC stage names (`score@parity` for foreach items) with every stage after the stages it depends on."""
    import networkx as nx
    from dvc.repo import Repo

    with Repo(str(workspace())) as repo:
        position = {stage: i for i, stage in enumerate(repo.index.stages)}  # dvc.yaml order breaks ties
        ordered = nx.lexicographical_topological_sort(repo.index.graph.reverse(), key=position.__getitem__)
        return [stage.addressing for stage in ordered]


def _tee(command: list[str], env: dict[str, str], output: StageOutput) -> tuple[int, str]:
    """Run `command`, echoing its output (progress bars included) to stdout and `output`, and keeping the tail for
    the error message."""
    tail: deque[bytes] = deque(maxlen=64)
    # in this process's group, so a Ctrl-C reaches the stage too (DVC waits for it); ends if this process is killed
    process = subprocess.Popen(
        command,
        env={**env, OWNER_ENV: str(os.getpid())},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        bufsize=0,
        preexec_fn=dies_with_us(),
    )
    assert process.stdout is not None
    try:
        _echo(process.stdout, tail, output)
    except BaseException:  # stopped: show the stage recording itself as stopped before this flow does, for a while
        _echo(process.stdout, tail, output, deadline=time.monotonic() + GRACE)
        raise
    lines = b"".join(tail).decode(errors="replace").replace("\r", "\n").splitlines()
    return process.wait(), "\n".join(line for line in lines[-25:] if line.strip())


def _echo(stream: IO[bytes], tail: deque[bytes], output: StageOutput, deadline: float | None = None) -> None:
    """Copy `stream` to stdout and `output` until it ends (or `deadline` passes), keeping its last chunks in `tail`."""
    while deadline is None or select.select([stream], [], [], max(0.0, deadline - time.monotonic()))[0]:
        if not (chunk := stream.read(65536)):
            return
        sys.stdout.buffer.write(chunk)
        sys.stdout.flush()
        output.feed(chunk)
        tail.append(chunk)


def _transient(task: Any, task_run: Any, state: Any) -> bool:
    error = state.result(raise_on_failure=False)
    return not (isinstance(error, StageFailed) and error.user_error)


@task(name="dvc-stage", retries=RETRIES, retry_delay_seconds=5, retry_condition_fn=_transient, cache_policy=NO_CACHE)
def run_stage(stage: str, env: dict[str, str]) -> None:
    EVENTS.emit("start", stage=stage)
    started, output = time.monotonic(), StageOutput(stage, EVENTS)
    returncode, tail = _tee([sys.executable, "-m", "dvc", "repro", "--single-item", stage], env, output)
    error = StageFailed(stage, tail) if returncode else None
    if error is None:
        outcome = "ran" if output.ran else "unchanged"
    else:
        outcome = "retrying" if not error.user_error and task_run.get_run_count() <= RETRIES else "failed"
    EVENTS.emit("end", stage=stage, outcome=outcome, seconds=round(time.monotonic() - started, 1))
    if error:
        raise error


def tag_stage_runs(parent_id: str, stage: str) -> None:
    """Tag the stage's child runs and the parent with the DVC hashes of the stage's inputs and outputs."""
    tags = stage_data_tags(workspace(), stage, outputs=True)
    client = mlflow.MlflowClient()
    children = client.search_runs(
        [mlflow.get_run(parent_id).info.experiment_id],
        f"tags.mlflow.parentRunId = '{parent_id}' and tags.`dvc.stage` = '{stage}'",
    )
    for run in children:
        for key, value in tags.items():
            client.set_tag(run.info.run_id, key, value)
    for key, value in tags.items():
        if key.startswith("dvc.out."):
            client.set_tag(parent_id, key, value)


def _workspace_limit() -> str:
    name = workspace_key()
    with get_client(sync_client=True) as client:
        client.upsert_global_concurrency_limit_by_name(name, limit=1)
    return name


@flow(name="demon-pipeline")
def demon_pipeline(stages: list[str] | None = None, set: dict[str, Any] | None = None) -> dict[str, Any]:
    """Reproduce the pipeline (or only `stages`, with what they depend on left as DVC has it).

    `set`: parameter overrides, dotted keys of params.yaml (`{"train.max_steps": 20}`), applied before DVC runs.
    """
    logger = get_run_logger()
    if deployment.get_id():  # started by a worker: end with it, as everything `demonlab` starts does
        die_with_parent()
    claim_flow_run()
    for line in reconcile(f"pipeline flow run {flow_run.get_id()}"):
        logger.warning("reconciled: %s", line)
        EVENTS.emit("warning", text=f"reconciled: {line}")
    with concurrency(_workspace_limit(), occupy=1, strict=True):
        if set:
            set_params(set)
        params = load_params()
        name = pipeline_run_name(str(params.get("experiment", "")))
        # the lease, so the next run can free the slot if this one is killed (`flows.tracking.reconcile`)
        claim_flow_run(LEASE_TAG + str(ConcurrencyContext.get().cleanup_lease_ids[-1]), name=name)
        order = stage_order()
        unknown = sorted(s for s in stages or [] if s not in order)
        if unknown:
            raise ValueError(f"unknown stage(s) {unknown}; the pipeline has {order}")
        selected = [s for s in order if stages is None or s in stages]
        EVENTS.emit("plan", stages=selected)
        experiment_id = configure()
        tags = {
            "demonlab.stage": "pipeline",
            "demonlab.experiment": str(params.get("experiment", "")),
            "prefect.flow_run_id": str(flow_run.get_id() or ""),
            "git.commit": git_commit() or "",
        }
        with start_run(run_name=name, tags=tags) as parent:
            mlflow.log_params(loggable_params(params))  # refuses a credential before MLflow sees it
            env = {**os.environ, PARENT_RUN_ENV: parent.info.run_id}
            for index, stage in enumerate(selected, 1):
                logger.info("[%d/%d] %s", index, len(selected), stage)
                run_stage.with_options(name=f"dvc-stage-{stage}")(stage, env)
                tag_stage_runs(parent.info.run_id, stage)
    return {
        "mlflow_run_id": parent.info.run_id,
        "name": name,
        "flow_run_id": str(flow_run.get_id() or ""),
        "stages": selected,
        "experiment_id": experiment_id,
        "evaluated": evaluated_runs(experiment_id, [s for s in order if s.startswith(EVALUATED)]),
    }


def evaluated_runs(experiment_id: str, stages: list[str]) -> list[str]:
    """The newest finished run of each of `stages`: the current models, whether this pipeline redid them or not."""
    client = mlflow.MlflowClient()
    found = (
        client.search_runs(
            [experiment_id],
            f"tags.`dvc.stage` = '{stage}' and attributes.status = 'FINISHED'",
            order_by=["attributes.start_time DESC"],
            max_results=1,
        )
        for stage in stages
    )
    return [runs[0].info.run_id for runs in found if runs]


def main() -> None:
    parser = argparse.ArgumentParser(description="Run the DVC pipeline as one Prefect flow (see `demonlab run`).")
    parser.add_argument("--stages", nargs="*", default=None, help="only these DVC stages (default: all)")
    parser.add_argument("--set", default="{}", help="JSON parameter overrides, e.g. '{\"train.max_steps\": 20}'")
    parser.add_argument("--result", type=Path, default=None, help="write the run's summary (JSON) here")
    parser.add_argument("--events", type=int, default=None, help="write progress events (JSON lines) to this fd")
    args = parser.parse_args()
    if args.events is not None:
        EVENTS.stream = os.fdopen(args.events, "w", encoding="utf-8")
    try:
        result = demon_pipeline(stages=args.stages, set=json.loads(args.set) or None)
    except (StageFailed, UserError) as error:  # Prefect has logged the details; end with the one line that matters
        result = {"error": str(error), "user_error": getattr(error, "user_error", True)}
    if args.result:  # the caller reports it
        write_json(args.result, result)
    elif "error" in result:
        print(f"error: {result['error']}", file=sys.stderr)
    if "error" in result:
        sys.exit(USER_ERROR_EXIT if result["user_error"] else 1)


if __name__ == "__main__":
    stage_main(main)
