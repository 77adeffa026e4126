"""Stages across machines: each stage a flow run of the `dvc-stage` deployment on a Prefect work pool's workers.

The worker's side is the `dvc_stage` flow, run in the worker's own clone of the repository (`demonlab worker`, or a
Docker/Kubernetes job whose image holds the project): a worktree at the pipeline's commit, the stage's inputs pulled
from the DVC remote, the stage run, its outputs pushed, and the stage's `dvc.lock` entry handed back as an artifact of
the flow run (`components.runtime.remote_stages`). A user's mistake on the worker (no remote credentials, a commit not
pushed) ends the flow run Failed with a message that says so, which the pipeline does not retry.

The pipeline's side is `Pool`: it registers the deployment on the pool (named after it, with the pull steps of
`prefect.yaml`), starts one flow run per stage and waits for it. A worker that dies (SIGKILL, a lost machine) stops
sending heartbeats to Prefect; once three are missed (Prefect's own rule for an offline worker) the pipeline ends what
the dead worker left running (the flow run Crashed, the stage's MLflow runs KILLED) and the stage fails as a transient
failure, so the pipeline's retry starts it again, on whichever worker takes it. Nothing reached the remote or `dvc.lock`
from the dead attempt: a worker pushes only after the stage succeeded, the pipeline records only what it fetched
back."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections import deque
from contextlib import chdir
from datetime import UTC, datetime
from pathlib import Path
from uuid import UUID

import mlflow
import yaml
from prefect import flow
from prefect.artifacts import create_markdown_artifact
from prefect.client.orchestration import SyncPrefectClient, get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterType,
    FlowRunFilter,
    FlowRunFilterId,
    FlowRunFilterState,
    FlowRunFilterStateType,
    FlowRunFilterTags,
)
from prefect.client.schemas.objects import FlowRun, StateType, WorkerStatus
from prefect.deployments import run_deployment
from prefect.exceptions import ObjectNotFound
from prefect.runtime import deployment, flow_run
from prefect.states import Crashed, Failed, State
from prefect.utilities.callables import parameter_schema

from components.errors import UserError
from components.runtime.dvc_stages import DvcStages, shell
from components.runtime.lifetime import die_with_parent, dies_with_us
from components.runtime.remote_stages import Handback, check_remote, checkout, git, pull_inputs, push_outputs
from components.security import redact
from components.tracking.reconcile import RECONCILED_TAG
from components.tracking.runs import PARENT_RUN_ENV, run_name, tracking_uri, workspace
from flows.tracking import DISPATCH_ENV, DISPATCH_TAG, claim_flow_run

FLOW = "dvc-stage"
WORKER_ENV = "DEMONLAB_WORKER"  # the worker's name in Prefect, set by `demonlab worker` for its flow runs
WORKER_TAG = "demonlab-worker:"
USER_ERROR = "user error: "  # how a Failed dvc-stage run says the same worker would fail the same way again
MISSED_HEARTBEATS = 3  # Prefect marks a worker offline after as many (`inactivity_heartbeat_multiple`)
POLL_SECONDS = 1.0
# the fenced block of the handback artifact
FENCE_OPEN, FENCE_CLOSE = "```json\n", "\n```"


class RemoteFailed(RuntimeError):
    def __init__(self, message: str, user_error: bool) -> None:
        self.user_error = user_error
        super().__init__(message)


@flow(name=FLOW)
def dvc_stage(stage: str, commit: str, files: dict[str, str | None], parent_run_id: str = "") -> State | None:
    """Run DVC stage `stage` of `commit` here, with `files` (the pipeline's `dvc.lock` and `params.yaml`; None: absent)
    written over the checkout; hand back its `dvc.lock` entry as this flow run's artifact."""
    if deployment.get_id():  # started by a worker: end with it, so a dead worker leaves no stage running
        die_with_parent()
    worker = os.environ.get(WORKER_ENV, "")
    claim_flow_run(*([WORKER_TAG + worker] if worker else []), name=f"{run_name(stage)} on {worker or 'a worker'}")
    try:
        if not os.environ.get("MLFLOW_TRACKING_URI"):
            raise UserError(
                f"worker {worker or workspace()}: MLFLOW_TRACKING_URI is not set: a stage on a pool records to the "
                "team's MLflow server; set it in the worker's environment"
            )
        handback = run_here(stage, commit, files, parent_run_id)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr, flush=True)
        return Failed(message=USER_ERROR + str(error))
    except StageCommandFailed as error:
        return Failed(message=str(error))
    create_markdown_artifact(
        f"`dvc.lock` entry of stage `{stage}` as {worker or 'the worker'} recorded it, and the outputs DVC leaves "
        f"to git (base64):\n\n{FENCE_OPEN}{json.dumps(handback, indent=1)}{FENCE_CLOSE}",
        description=f"dvc-stage handback: {stage}",
    )
    return None


class StageCommandFailed(RuntimeError):
    pass


def run_here(stage: str, commit: str, files: dict[str, str | None], parent_run_id: str) -> Handback:
    """Check out, pull the inputs, run, push the outputs; the handback, with the seconds each step took."""
    seconds: dict[str, float] = {}
    began = time.monotonic()
    with checkout(workspace(), commit, files) as root, chdir(root):  # DVC names stages relative to the folder
        stages = DvcStages(root)
        try:
            check_remote(stages.repo)
            pull_inputs(stages, stage)
            seconds["pull"], began = _lap(began)
            begun, pending = stages.begin(stage)
            if pending is not None:
                env = {**os.environ, "DEMONLAB_WORKSPACE": str(root), DISPATCH_ENV: str(flow_run.get_id() or "")}
                if parent_run_id:
                    env[PARENT_RUN_ENV] = parent_run_id
                commands, env, cwd = stages.commands(pending, env)
                for command in commands:
                    print(f"> {command}", flush=True)
                    status, tail = _run(command, env, cwd)
                    if status:
                        said = [line[7:] for line in tail.splitlines() if line.startswith("error: ")]
                        raise StageCommandFailed("\n".join(said) or f"`{command}` exited with {status}: {tail}")
                stages.finish(pending)
            seconds["run"], began = _lap(began)
            handback = push_outputs(stages, stage)
            seconds["push"], began = _lap(began)
            return {**handback, "seconds": seconds}
        finally:
            stages.close()


def _lap(began: float) -> tuple[float, float]:
    now = time.monotonic()
    return round(now - began, 2), now


def _run(command: str, env: dict[str, str], cwd: str) -> tuple[int, str]:
    """Run a command line as DVC does, its output on this flow run's stdout; its status and last lines."""
    process = subprocess.Popen(
        shell(command), env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, preexec_fn=dies_with_us()
    )
    assert process.stdout is not None
    tail: deque[bytes] = deque(maxlen=64)
    while chunk := process.stdout.read1(65536):
        sys.stdout.buffer.write(chunk)
        sys.stdout.flush()
        tail.append(chunk)
    lines = b"".join(tail).decode(errors="replace").replace("\r", "\n").splitlines()
    return process.wait(), "\n".join(line for line in lines[-25:] if line.strip())


class Pool:
    """The pipeline's side: stages of the workspace `root` run on the workers of work pool `name`."""

    def __init__(self, name: str, root: Path, outputs: set[str]) -> None:
        """`outputs`: the stages' outputs (git keeps those DVC does not cache, metrics: they may differ here)."""
        self.name, self.root, self.outputs = name, root, outputs
        if tracking_uri().startswith(("sqlite:", "file:", "/")) or "://" not in tracking_uri():
            raise UserError(
                f"--pool {name}: MLflow tracks to {redact(tracking_uri())}, which workers on other machines cannot "
                "write to: start an MLflow server and set MLFLOW_TRACKING_URI here and on the workers"
            )
        self.commit = self._commit()
        self.deployment_id = self._deploy()

    def _commit(self) -> str:
        head = git(["rev-parse", "HEAD"], self.root)
        if head.returncode != 0:
            raise UserError(f"--pool {self.name}: {self.root} has no git commit for the workers to check out")
        changed = git(["status", "--porcelain", "--untracked-files=no"], self.root).stdout.splitlines()
        ours = {"dvc.lock", "params.yaml", *self.outputs}  # sent with every stage, or written by one
        differ = [line[3:] for line in changed if not any(line[3:] == p or line[3:].startswith(f"{p}/") for p in ours)]
        if differ:
            raise UserError(
                f"--pool {self.name}: the workers run commit {head.stdout.strip()[:12]}, but {', '.join(differ[:5])}"
                f"{' ...' if len(differ) > 5 else ''} differ from it here: commit and push them first"
            )
        return head.stdout.strip()

    def _deploy(self) -> UUID:
        """Register `dvc-stage/<pool>` (idempotent): this flow, the pull steps of prefect.yaml, on the pool."""
        project = (
            yaml.safe_load((self.root / "prefect.yaml").read_text()) if (self.root / "prefect.yaml").is_file() else {}
        )
        with get_client(sync_client=True) as client:
            try:
                client.read_work_pool(self.name)
            except ObjectNotFound:
                raise UserError(
                    f"--pool {self.name}: no such work pool on {redact(str(client.api_url))}: start workers with "
                    f"`demonlab worker --pool {self.name}` (or create it: `prefect work-pool create {self.name}`)"
                ) from None
            return client.create_deployment(
                flow_id=client.create_flow(dvc_stage),
                name=self.name,
                work_pool_name=self.name,
                entrypoint="flows/pool.py:dvc_stage",
                pull_steps=(project or {}).get("pull") or [],
                parameter_openapi_schema=parameter_schema(dvc_stage).model_dump_for_openapi(),
                description="One DVC stage on a worker, its data through the DVC remote (flows/pool.py)",
            )

    def run(self, stage: str, files: dict[str, str | None], parent_run_id: str) -> Handback:
        """Run `stage` on a worker of the pool and wait for it; its handback. `RemoteFailed` if it failed."""
        parameters = {"stage": stage, "commit": self.commit, "files": files, "parent_run_id": parent_run_id}
        started = run_deployment(self.deployment_id, parameters=parameters, timeout=0)
        with get_client(sync_client=True) as client:
            run = self._wait(client, started.id, stage, parent_run_id)
            state = run.state
            assert state is not None
            if state.type != StateType.COMPLETED:
                message = state.message or state.name
                user_error = message.startswith(USER_ERROR)
                raise RemoteFailed(message.removeprefix(USER_ERROR), user_error and state.type == StateType.FAILED)
            return self._handback(client, run)

    def _wait(self, client: SyncPrefectClient, run_id: UUID, stage: str, parent_run_id: str) -> FlowRun:
        while True:
            run = client.read_flow_run(run_id)
            if run.state is not None and run.state.is_final():
                return run
            worker = next((tag.removeprefix(WORKER_TAG) for tag in run.tags if tag.startswith(WORKER_TAG)), None)
            if run.state is not None and run.state.is_running() and worker and self._gone(client, worker):
                why = f"worker {worker} of pool {self.name} stopped sending heartbeats (found by the pipeline)"
                self._end(client, run, stage, parent_run_id, why)
                raise RemoteFailed(f"{why}; the stage runs again", user_error=False)
            time.sleep(POLL_SECONDS)

    def _gone(self, client: SyncPrefectClient, name: str) -> bool:
        """Whether worker `name` has missed `MISSED_HEARTBEATS` heartbeats (or Prefect says it is offline)."""
        found = [w for w in client.read_workers_for_work_pool(self.name) if w.name == name]
        if not found:
            return False  # not registered yet
        worker = found[0]
        if worker.status == WorkerStatus.OFFLINE:
            return True
        if worker.last_heartbeat_time is None:
            return False
        silent = (datetime.now(UTC) - worker.last_heartbeat_time).total_seconds()
        return silent > MISSED_HEARTBEATS * (worker.heartbeat_interval_seconds or 30)

    def _end(self, client: SyncPrefectClient, run: FlowRun, stage: str, parent_run_id: str, why: str) -> None:
        """End what a dead worker left running for `stage`: its flow runs Crashed, its MLflow runs KILLED."""
        running = FlowRunFilter(
            state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.RUNNING])),
            tags=FlowRunFilterTags(all_=[DISPATCH_TAG + str(run.id)]),
        )
        for left in [run, *client.read_flow_runs(flow_run_filter=running)]:
            client.set_flow_run_state(left.id, Crashed(message=f"Crashed: {why}"), force=True)
        if not parent_run_id:
            return
        tracking = mlflow.MlflowClient()
        experiment = mlflow.get_run(parent_run_id).info.experiment_id
        query = (
            f"tags.mlflow.parentRunId = '{parent_run_id}' and tags.`dvc.stage` = '{stage}' "
            "and attributes.status = 'RUNNING'"
        )
        for left in tracking.search_runs([experiment], query):
            tracking.set_tag(left.info.run_id, RECONCILED_TAG, why)
            tracking.set_terminated(left.info.run_id, "KILLED")

    @staticmethod
    def _handback(client: SyncPrefectClient, run: FlowRun) -> Handback:
        artifacts = client.read_artifacts(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run.id])),
            artifact_filter=ArtifactFilter(type=ArtifactFilterType(any_=["markdown"])),
        )
        for artifact in artifacts:
            text = str(artifact.data)
            if FENCE_OPEN in text:
                return json.loads(text.split(FENCE_OPEN, 1)[1].rsplit(FENCE_CLOSE, 1)[0])
        raise RemoteFailed(f"flow run {run.name} ({run.id}) completed without handing back its dvc.lock entry", False)


def stage_files(root: Path) -> dict[str, str | None]:
    """What a worker writes over its checkout: the pipeline's `dvc.lock` and `params.yaml` as they are now."""
    return {
        name: (root / name).read_text() if (root / name).is_file() else None for name in ("dvc.lock", "params.yaml")
    }
