"""The pipeline flow: every stale DVC stage as a Prefect task, inside one MLflow parent run, up to `slots` at once.

The executor keeps DVC the judge and the record (`components.runtime.dvc_stages`: the steps and calls of `dvc repro
--single-item`, so `dvc.lock` is what it writes) but runs each stage's `python -m flows.<stage>` in a child forked from
a server that imported torch, transformers, Prefect, MLflow and the stage modules once
(`components.runtime.forkserver`): a stage starts in milliseconds instead of ~10 s, still a process of its own (its own
Prefect flow run and MLflow run, its memory returned when it ends). Stages that do not depend on each other run side by
side on `slots` (each slot its own GPU where there are several); a failed stage stops only the stages downstream of it.
Prefect result caching is off: DVC knows what is stale. One pipeline runs per workspace at a time (a global concurrency
limit named after the workspace). Each stage's own flow run becomes a child MLflow run through `DEMONLAB_PARENT_RUN_ID`;
after it finishes, the child and the parent are tagged with the DVC hashes of what it read and wrote. Before anything,
it reconciles what a killed run of the workspace left running in MLflow and Prefect (`flows.tracking.reconcile`).
Started by `demonlab run`, it reports progress as events on a pipe (`--events`, `components.runtime.console`) while
everything else it and the stages print goes to stdout, which `demonlab run` sends to the run's log file."""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import mlflow
from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.client.orchestration import get_client
from prefect.concurrency.context import ConcurrencyContext
from prefect.concurrency.sync import concurrency
from prefect.futures import PrefectFuture, as_completed
from prefect.runtime import deployment, flow_run, task_run

from components.atomic import write_json
from components.errors import UserError
from components.runtime.console import Events, StageOutput
from components.runtime.dvc_stages import DvcStages, python_module, shell
from components.runtime.forkserver import ForkServer
from components.runtime.lifetime import die_with_parent, dies_with_us
from components.runtime.remote_stages import receive
from components.runtime.sweep import SWEEP_RUN_ENV
from components.tracking.compare import publish_report, share_comparison
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
from flows.pool import Pool, RemoteFailed, stage_files
from flows.tracking import LEASE_TAG, claim_flow_run, reconcile

if TYPE_CHECKING:
    from dvc.stage import Stage

RETRIES = 2
EVALUATED = "merge@"  # a merge stage's run holds one model's scores in one view: what a comparison compares
EVENTS = Events()  # `demonlab run`'s progress channel once `main` opens it; none under a worker
# imported once in the fork server besides the stage modules: what every stage loads on its first MLflow call (~1.6 s)
PRELOAD = ["mlflow.store.tracking.sqlalchemy_store", "mlflow.store.model_registry.sqlalchemy_store"]
# Stages that build the experiment's model: when one is selected, the fork server loads its frozen backbones once.
BACKBONE_STAGES = {"flows.train", "flows.evaluate", "flows.synth"}
HOLD_BACKBONES = "flows.params:hold_experiment_backbones"


class StageFailed(RuntimeError):
    def __init__(self, stage: str, status: int, tail: str) -> None:
        self.stage = stage
        self.user_error = status == USER_ERROR_EXIT  # a user's mistake will fail the same way again
        # a stage's own one-line message (`flows.entry.stage_main`) says it best; else the end of its output
        said = [line.removeprefix("error: ") for line in tail.splitlines() if line.startswith("error: ")]
        ended = f"exited with {status}" if status >= 0 else f"killed by signal {-status}"
        self.reason = "; ".join(said) if said else ended  # one line, for the console
        super().__init__(f"stage {stage!r} failed: " + ("\n".join(said) if said else f"({ended}) {tail}"))


@dataclass
class Executor:
    """What the stage tasks share: DVC's bookkeeping, where commands run (the fork server here, or the workers of a
    work pool), and each stage's peak memory."""

    stages: DvcStages
    server: ForkServer | None
    pool: Pool | None = None
    peak_rss_mb: dict[str, int] = field(default_factory=dict)

    def reproduce(self, stage: str, env: dict[str, str], output: StageOutput) -> str:
        """Reproduce `stage` as `dvc repro --single-item` would: "ran", "unchanged" or "restored" (run cache)."""
        begun, pending = self.stages.begin(stage)
        if pending is None:
            return begun
        if self.pool is not None:
            self._on_pool(pending, env)
            return "ran"
        commands, env, cwd = self.stages.commands(pending, env)
        print(f"Running stage '{stage}':", flush=True)  # as DVC says it, for the run's log
        for command in commands:
            print(f"> {command}", flush=True)
            status, tail = self._run(command, env, cwd, output)
            if status:
                raise StageFailed(stage, status, tail)
        self.stages.finish(pending)
        return "ran"

    def _on_pool(self, stage: Stage, env: dict[str, str]) -> None:
        """Run the begun `stage` on a worker of the pool, then record what it pushed, as `finish` records a run here."""
        assert self.pool is not None
        with self.stages.turn():  # dvc.lock between other stages' writes
            files = stage_files(workspace())
        print(f"Running stage '{stage.addressing}' on pool {self.pool.name!r}", flush=True)
        try:
            started = time.monotonic()
            handback = self.pool.run(stage.addressing, files, env.get(PARENT_RUN_ENV, ""))
            received = time.monotonic()
            receive(self.stages, stage, handback)
            steps = "".join(f"{step} {seconds:.2f} s, " for step, seconds in handback.get("seconds", {}).items())
            print(  # for the log and docs/benchmarks.md: where a stage's time on the pool goes
                f"stage '{stage.addressing}' on the pool: {received - started:.2f} s on the worker ({steps}the rest "
                f"starting and handing back), {time.monotonic() - received:.2f} s fetching and recording here",
                flush=True,
            )
        except RemoteFailed as error:
            raise StageFailed(stage.addressing, USER_ERROR_EXIT if error.user_error else 1, f"error: {error}") from None
        except UserError as error:  # the remote refused this workspace, or the run differs from what it would write
            raise StageFailed(stage.addressing, USER_ERROR_EXIT, f"error: {error}") from None

    def _run(self, command: str, env: dict[str, str], cwd: str, output: StageOutput) -> tuple[int, str]:
        """Run one command line, echoing its output (progress bars included) to stdout and `output`; its exit
        status and the tail of its output for the error message."""
        module, read, write = python_module(command), *os.pipe()
        with os.fdopen(read, "rb", buffering=0) as stream:
            try:  # the child holds the writing end; ours closes, so the output ends when the child does
                if module:
                    assert self.server is not None, "a pool runs no command here"
                    ended = self.server.start(module, env, cwd, write)
                else:  # in this process's group, so a Ctrl-C reaches it too; ends if this process is killed
                    process = subprocess.Popen(
                        shell(command), env=env, cwd=cwd, stdout=write, stderr=write, preexec_fn=dies_with_us()
                    )
            finally:
                os.close(write)
            tail = _echo(stream, output)
        if not module:
            status = process.wait()
        else:
            reply = ended.result()
            status = reply["exit"]
            self.peak_rss_mb[output.stage] = max(self.peak_rss_mb.get(output.stage, 0), reply["maxrss_mb"])
        lines = b"".join(tail).decode(errors="replace").replace("\r", "\n").splitlines()
        return status, "\n".join(line for line in lines[-25:] if line.strip())


EXECUTOR: Executor | None = None  # set by the pipeline flow for its stage tasks


def _echo(stream: IO[bytes], output: StageOutput) -> deque[bytes]:
    """Copy `stream` to stdout and `output` until it ends; its last chunks."""
    tail: deque[bytes] = deque(maxlen=64)
    while chunk := stream.read(65536):
        sys.stdout.buffer.write(chunk)
        sys.stdout.flush()
        output.feed(chunk)
        tail.append(chunk)
    return tail


def _transient(task: Any, task_run: Any, state: Any) -> bool:
    error = state.result(raise_on_failure=False)
    return not (isinstance(error, StageFailed) and error.user_error)


@task(name="dvc-stage", retries=RETRIES, retry_delay_seconds=5, retry_condition_fn=_transient, cache_policy=NO_CACHE)
def run_stage(stage: str, env: dict[str, str]) -> str:
    assert EXECUTOR is not None, "run_stage runs inside demon_pipeline"
    EVENTS.emit("start", stage=stage)
    started, output = time.monotonic(), StageOutput(stage, EVENTS)
    try:
        outcome = EXECUTOR.reproduce(stage, env, output)
    except StageFailed as error:
        seconds = _since(started)
        if not error.user_error and task_run.get_run_count() <= RETRIES:  # the user reads why it runs again
            EVENTS.emit("end", stage=stage, outcome="retrying", seconds=seconds, why=error.reason)
        else:  # the one-line error the command ends with says why
            EVENTS.emit("end", stage=stage, outcome="failed", seconds=seconds)
        raise
    EVENTS.emit("end", stage=stage, outcome=outcome, seconds=_since(started))
    return outcome


def _since(started: float) -> float:
    return round(time.monotonic() - started, 1)


def tag_stage_runs(parent_id: str, stage: str, stages: DvcStages) -> None:
    """Tag the stage's child runs and the parent with the DVC hashes of the stage's inputs and outputs."""
    with stages.turn():  # dvc.lock, read between other stages' writes
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
def demon_pipeline(
    stages: list[str] | None = None, set: dict[str, Any] | None = None, slots: int = 1, pool: str | None = None
) -> dict[str, Any]:
    """Reproduce the pipeline (or only `stages`, with what they depend on left as DVC has it).

    `set`: parameter overrides, dotted keys of params.yaml (`{"train.max_steps": 20}`), applied before DVC runs.
    `slots`: how many independent stages may run at once (on a machine with several GPUs, each slot gets its own).
    `pool`: run each stage on a worker of this Prefect work pool, its data through the DVC remote (`flows.pool`).
    """
    logger = get_run_logger()
    if deployment.get_id():  # started by a worker: end with it, as everything `demonlab` starts does
        die_with_parent()
    claim_flow_run()
    with executor(pool, stages) as run:  # first: the fork server imports while the flow reconciles and waits its turn
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
            upstream = run.stages.upstream()
            unknown = sorted(s for s in stages or [] if s not in upstream)
            if unknown:
                raise ValueError(f"unknown stage(s) {unknown}; the pipeline has {list(upstream)}")
            selected = [s for s in upstream if stages is None or s in stages]
            EVENTS.emit("plan", stages=selected)
            experiment_id = configure()
            tags = {
                "demonlab.stage": "pipeline",
                "demonlab.experiment": str(params.get("experiment", "")),
                "prefect.flow_run_id": str(flow_run.get_id() or ""),
                "git.commit": git_commit() or "",
            }
            if sweep := os.environ.get(SWEEP_RUN_ENV):  # one variant of `demonlab sweep`: a child of its run
                tags["mlflow.parentRunId"] = sweep
            with start_run(run_name=name, tags=tags) as parent:
                mlflow.log_params(loggable_params(params))  # refuses a credential before MLflow sees it
                env = {**os.environ, PARENT_RUN_ENV: parent.info.run_id}
                graph = {s: [d for d in upstream[s] if d in selected] for s in selected}
                failures = schedule(graph, env, slots, parent.info.run_id)
                if run.peak_rss_mb:
                    mlflow.log_metric("peak_rss_mb", max(run.peak_rss_mb.values()))
            if failures:
                raise failures[0]
            publish_report(parent.info.run_id, Path((params.get("evaluate") or {}).get("report", "data/report")))
            evaluated = evaluated_runs(experiment_id, [s for s in upstream if s.startswith(EVALUATED)])
    return {
        "mlflow_run_id": parent.info.run_id,
        "name": name,
        "flow_run_id": str(flow_run.get_id() or ""),
        "stages": selected,
        "experiment_id": experiment_id,
        "evaluated": evaluated,
        "compare_view": share_comparison(experiment_id, evaluated) if evaluated else None,  # an MLflow UI path
        "peak_rss_mb": run.peak_rss_mb,  # each stage's; the pipeline's own process holds no stage's data:
        "pipeline_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024,
    }


@contextmanager
def executor(pool: str | None = None, selected: list[str] | None = None) -> Iterator[Executor]:
    """The stage tasks' `Executor` for as long as the block: the fork server preloading every module the `selected`
    stages (default: all) run, started from the flow's own thread, which the server's life is tied to; or, for a work
    pool, its workers."""
    global EXECUTOR
    stages = DvcStages(workspace())
    if pool:
        try:
            with stages.turn():
                outputs = {str(out) for stage in stages.repo.index.stages for out in stage.outs}
            EXECUTOR = Executor(stages, None, Pool(pool, workspace(), outputs))
            yield EXECUTOR
        finally:
            EXECUTOR = None
            stages.close()
        return
    # the project's stage flows, which do their work under `__main__` only; any other module runs fresh in its child.
    # Only the selected stages': `--stages acquire` need not wait for torch and transformers to import.
    lines = stages.command_lines(selected)
    modules = {m[1] for line in lines if (m := python_module(line)) and m[1].startswith("flows.")}
    held = [HOLD_BACKBONES] if modules & BACKBONE_STAGES else []
    try:
        with ForkServer(PRELOAD + sorted(modules) + held, cwd=str(workspace())) as server:
            EXECUTOR = Executor(stages, server)
            yield EXECUTOR
    finally:
        EXECUTOR = None
        stages.close()


def schedule(upstream: dict[str, list[str]], env: dict[str, str], slots: int, parent_id: str) -> list[StageFailed]:
    """Run the stages of `upstream` (each -> the stages it waits for), every stage once those have succeeded, at most
    `slots` at once, in the order given where there is a choice; a failed stage's dependants are skipped. The
    failures, in the order they happened."""
    devices = _devices() if slots > 1 else []
    waiting, running, free = list(upstream), {}, list(range(slots))
    done: set[str] = set()
    failed: set[str] = set()
    failures: list[StageFailed] = []
    while waiting or running:
        for stage in list(waiting):
            if any(dep in failed for dep in upstream[stage]):
                waiting.remove(stage)
                failed.add(stage)
                EVENTS.emit("end", stage=stage, outcome="skipped", seconds=0.0)
            elif free and all(dep in done for dep in upstream[stage]):
                waiting.remove(stage)
                slot = free.pop(0)
                stage_env = {**env, "CUDA_VISIBLE_DEVICES": devices[slot % len(devices)]} if devices else env
                future = run_stage.with_options(name=f"dvc-stage-{stage}").submit(stage, stage_env)
                running[future] = (stage, slot)
        if not running:  # what was left waited for a failed stage
            break
        finished: PrefectFuture = next(as_completed(list(running)))
        stage, slot = running.pop(finished)
        free.append(slot)
        error = finished.result(raise_on_failure=False)
        if isinstance(error, BaseException):
            failed.add(stage)
            failures.append(error if isinstance(error, StageFailed) else StageFailed(stage, 1, repr(error)))
        else:
            done.add(stage)
            tag_stage_runs(parent_id, stage, EXECUTOR.stages)
    return failures


def _devices() -> list[str]:
    """The GPUs the slots share out: CUDA_VISIBLE_DEVICES's list, else every GPU `nvidia-smi` sees, else none."""
    if visible := os.environ.get("CUDA_VISIBLE_DEVICES"):
        return visible.split(",")
    if shutil.which("nvidia-smi") is None:
        return []
    listing = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, check=False).stdout
    return [str(i) for i, line in enumerate(listing.splitlines()) if line.startswith("GPU ")]


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
    parser.add_argument("--parallel", type=int, default=1, help="independent stages run at once (default 1)")
    parser.add_argument("--pool", default=None, help="run the stages on the workers of this Prefect work pool")
    parser.add_argument("--events", type=int, default=None, help="write progress events (JSON lines) to this fd")
    args = parser.parse_args()
    if args.events is not None:
        EVENTS.stream = os.fdopen(args.events, "w", encoding="utf-8")
    try:
        overrides = json.loads(args.set) or None
        result = demon_pipeline(stages=args.stages, set=overrides, slots=args.parallel, pool=args.pool)
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
