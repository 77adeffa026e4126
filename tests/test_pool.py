"""Stages across machines (`demonlab run --pool`, `flows.pool`, `components.runtime.remote_stages`): two Prefect process
workers, each in its own clone of the repository (two "machines" sharing no files), an S3 server on 127.0.0.1 as the
DVC remote, one Prefect server and one MLflow server. The toy project of `test_executor` keeps it quick; its stages
record an MLflow run each, as the project's stages do, so the tracking of remote stages is checked too."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import mlflow
import psutil
import pytest
import yaml
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterState, FlowRunFilterStateType
from prefect.client.schemas.objects import StateType
from prefect.exceptions import PrefectHTTPStatusError
from prefect.settings import PREFECT_API_URL, temporary_settings
from test_executor import STAGES, TOY, console_lines, toy_project
from workspace import run

from components.runtime.servers import (
    background,
    free_port,
    mlflow_server_env,
    prefect_server_command,
    prefect_ui_env,
    seed_prefect_database,
    wait_http,
)

pytestmark = pytest.mark.slow  # servers, two workers, pipeline runs

DEMONLAB = str(Path(sys.executable).with_name("demonlab"))
DVC = [sys.executable, "-m", "dvc"]
POOL = "demonlab"
BUCKET = "demon"
AWS = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1"}
# a worker that has lost its credentials: nothing in the environment, no files, no instance metadata to ask
NO_AWS = {
    "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent",
    "AWS_CONFIG_FILE": "/nonexistent",
    "AWS_EC2_METADATA_DISABLED": "true",
}
# quicker to notice a dead worker (3 heartbeats: 30 s; a busy server persists them late) and to pick up a stage:
# Prefect's defaults are 30 s and 10 s
FAST_WORKERS = {"PREFECT_WORKER_HEARTBEAT_SECONDS": "10", "PREFECT_WORKER_QUERY_SECONDS": "1"}
# the toy stage, recorded as an MLflow run as every project stage is (nested under the pipeline's parent run)
TRACKED_TOY = "from components.tracking.runs import stage_run\n\nwith stage_run(__import__('sys').argv[1], {}):\n"
TRACKED_TOY += textwrap.indent(TOY, "    ")
# and a metrics file, which DVC does not cache (it lives in git): a worker hands it back with the lock entry
TRACKED_TOY += """    if name == "right_after":
        Path("metrics.json").write_text('{"seconds": %s}' % seconds)
"""


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """This module's Prefect server (its pool and workers stay its own) and the MLflow server, started side by side:
    on a busy 2-core machine each takes minutes to answer. Their URLs: Prefect's API, MLflow's."""
    folder = tmp_path_factory.mktemp("servers")
    prefect_port, mlflow_port = free_port(), free_port()
    prefect_env = prefect_ui_env({**os.environ, "PREFECT_HOME": str(folder / "prefect")}, "127.0.0.1", prefect_port)
    seed_prefect_database(prefect_env)
    mlflow_command = [str(Path(sys.executable).with_name("mlflow")), "server", "--host", "127.0.0.1"]
    mlflow_command += ["--port", str(mlflow_port), "--backend-store-uri", f"sqlite:///{folder / 'mlflow.db'}"]
    mlflow_command += ["--default-artifact-root", str(folder / "artifacts"), "--workers", "1"]
    prefect_log, mlflow_log = folder / "prefect.log", folder / "mlflow.log"
    with (
        background(prefect_server_command(prefect_port), prefect_log, env=prefect_env) as prefect,
        background(mlflow_command, mlflow_log, env=mlflow_server_env(os.environ)) as mlflow_server,
    ):
        wait_http(f"http://127.0.0.1:{prefect_port}/api/health", prefect, 600, prefect_log)
        wait_http(f"http://127.0.0.1:{mlflow_port}/health", mlflow_server, 600, mlflow_log)
        yield f"http://127.0.0.1:{prefect_port}/api", f"http://127.0.0.1:{mlflow_port}"


@pytest.fixture(scope="module")
def prefect_api(servers: tuple[str, str]) -> str:
    return servers[0]


@pytest.fixture(scope="module")
def s3() -> Iterator[str]:
    """An S3 server on 127.0.0.1 with the bucket; its endpoint."""
    import boto3
    from moto.server import ThreadedMotoServer

    s3 = ThreadedMotoServer(ip_address="127.0.0.1", port=free_port())
    s3.start()
    endpoint = f"http://127.0.0.1:{s3._port}"
    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", **_keys()).create_bucket(Bucket=BUCKET)
    try:
        yield endpoint
    finally:
        s3.stop()


def _keys() -> dict[str, str]:
    return {"aws_access_key_id": "test", "aws_secret_access_key": "test"}


@pytest.fixture(scope="module")
def mlflow_server(servers: tuple[str, str]) -> str:
    return servers[1]


@pytest.fixture
def lab(tmp_path: Path, prefect_api: str, s3: str, mlflow_server: str) -> tuple[Path, dict]:
    """The lab's repository (the pipeline runs here; workers clone it): the toy project with its remote on S3."""
    origin, env = toy_project(tmp_path, prefect_api, "origin")
    env = {**env, **AWS, **FAST_WORKERS, "MLFLOW_TRACKING_URI": mlflow_server}
    (origin / "toy.py").write_text(TRACKED_TOY)
    (origin / "params.yaml").write_text(yaml.safe_dump({"toy": {"seconds": 2}}))
    pipeline = yaml.safe_load((origin / "dvc.yaml").read_text())
    pipeline["stages"]["right_after"]["metrics"] = [{"metrics.json": {"cache": False}}]
    (origin / "dvc.yaml").write_text(yaml.safe_dump(pipeline, sort_keys=False))
    (origin / "metrics.json").write_text("{}")  # git keeps it, as the project keeps metrics/
    run([*DVC, "remote", "add", "-d", "s3", f"s3://{BUCKET}/{tmp_path.name}"], origin, env)
    run([*DVC, "remote", "modify", "s3", "endpointurl", s3], origin, env)
    run(["git", "add", "-A"], origin, env)
    run(["git", "commit", "-qm", "remote"], origin, env)
    return origin, env


def reference_lock(tmp_path: Path, lab: tuple[Path, dict]) -> str:
    """The same project reproduced by plain `dvc repro` on one machine: its dvc.lock."""
    origin, env = lab
    clone = tmp_path / "reference"
    run(["git", "clone", "-q", str(origin), str(clone)], tmp_path, env)
    run([*DVC, "repro"], clone, env)
    return (clone / "dvc.lock").read_text()


@contextmanager
def workers(tmp_path: Path, lab: tuple[Path, dict], names: list[str], env: dict | None = None) -> Iterator[dict]:
    """`demonlab worker` in a fresh clone of the lab's repository per name (one stage at a time each); name ->
    its process, once Prefect lists every one of them online."""
    origin, lab_env = lab
    started = {}
    with ExitStack() as stack:
        for name in names:
            clone = tmp_path / f"machine-{name}"
            run(["git", "clone", "-q", str(origin), str(clone)], tmp_path, lab_env)
            command = [DEMONLAB, "worker", "--name", worker_name(tmp_path, name), "--limit", "1"]
            log = tmp_path / f"worker-{name}.log"
            started[name] = stack.enter_context(background(command, log, env=env or lab_env, cwd=clone))
        wait_online(lab_env["PREFECT_API_URL"], [worker_name(tmp_path, name) for name in names], started, tmp_path)
        yield started


def worker_name(tmp_path: Path, name: str) -> str:
    return f"{tmp_path.name}-{name}"


def wait_online(api: str, names: list[str], processes: dict, tmp_path: Path, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for name, process in processes.items():
            assert process.poll() is None, (tmp_path / f"worker-{name}.log").read_text()[-3000:]
        with temporary_settings({PREFECT_API_URL: api}), get_client(sync_client=True) as client:
            try:
                online = {w.name for w in client.read_workers_for_work_pool(POOL) if w.status.value == "ONLINE"}
            except PrefectHTTPStatusError:  # 404: the first worker has not created the pool yet
                online = set()
        if set(names) <= online:
            return
        time.sleep(1)
    raise TimeoutError(f"workers {names} not online")


def dvc_stage_runs(api: str, tmp_path: Path, stage: str) -> list:
    """This test's flow runs of the `dvc-stage` deployment for `stage` (named `<stage> on <worker>`)."""
    with temporary_settings({PREFECT_API_URL: api}), get_client(sync_client=True) as client:
        runs = client.read_flow_runs()
        flows = {f.id: f.name for f in client.read_flows()}
    return [
        r for r in runs if flows.get(r.flow_id) == "dvc-stage" and r.name.startswith(f"{stage} on {tmp_path.name}-")
    ]


def stage_runs(env: dict) -> list[mlflow.entities.Run]:
    mlflow.set_tracking_uri(env["MLFLOW_TRACKING_URI"])
    return mlflow.search_runs(experiment_names=["demonlab"], output_format="list")


def remote_objects(tmp_path: Path, s3: str) -> set[str]:
    import boto3

    listing = boto3.client("s3", endpoint_url=s3, region_name="us-east-1", **_keys()).list_objects_v2(
        Bucket=BUCKET, Prefix=f"{tmp_path.name}/"
    )
    return {item["Key"].removeprefix(f"{tmp_path.name}/") for item in listing.get("Contents", [])}


def locked_objects(lock: str) -> set[str]:
    """The remote's keys for every output `lock` records (DVC 3's layout: files/md5/<2>/<rest>)."""
    outs = [out for stage in yaml.safe_load(lock)["stages"].values() for out in stage["outs"]]
    hashes = [out["md5"] for out in outs if out["path"] != "metrics.json"]  # not cached: git's
    return {f"files/md5/{h[:2]}/{h[2:]}" for h in hashes}


def nothing_running(api: str, env: dict) -> None:
    assert not [r.info.run_name for r in stage_runs(env) if r.info.status == "RUNNING"]
    running = FlowRunFilter(state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.RUNNING])))
    with temporary_settings({PREFECT_API_URL: api}), get_client(sync_client=True) as client:
        assert not [r.name for r in client.read_flow_runs(flow_run_filter=running)]


def test_stages_fan_out_over_two_workers_and_the_lock_is_a_single_machine_run(
    tmp_path: Path, lab: tuple[Path, dict], s3: str, prefect_api: str
) -> None:
    origin, env = lab
    with workers(tmp_path, lab, ["a", "b"]):
        done = run([DEMONLAB, "run", "--pool", POOL, "--parallel", "2"], origin, env, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert console_lines(done.stdout) == dict.fromkeys(STAGES, "ran"), done.stdout

    # stages ran on both machines, each recorded in MLflow under the pipeline's parent run
    runs = stage_runs(env)
    parent = next(r for r in runs if r.data.tags["demonlab.stage"] == "pipeline")
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert sorted(r.data.tags["demonlab.stage"] for r in children) == sorted(STAGES)
    # each in a worktree of its machine's clone (`.demonlab-stages/machine-a-<id>`)
    machines = {Path(r.data.tags["demonlab.workspace"]).name.rsplit("-", 1)[0] for r in children}
    assert machines == {"machine-a", "machine-b"}, machines
    assert len({r.data.tags["demonlab.process"] for r in children}) == len(STAGES)  # a process of its own each

    # the lock a single machine writes, and the pipeline's workspace holds every output, as after `dvc repro`
    lock = (origin / "dvc.lock").read_text()
    assert lock == reference_lock(tmp_path, lab)
    assert run([*DVC, "status"], origin, env).stdout.strip() == "Data and pipelines are up to date."
    assert remote_objects(tmp_path, s3) == locked_objects(lock)

    # a third machine gets every output from the remote
    run(["git", "add", "dvc.lock", "metrics.json"], origin, env)  # as after `dvc repro`: the lock and git's metrics
    run(["git", "commit", "-qm", "ran on the pool"], origin, env)
    third = tmp_path / "machine-c"
    run(["git", "clone", "-q", str(origin), str(third)], tmp_path, env)
    run([*DVC, "pull"], third, env)
    assert (third / "out/right_after.txt").read_text() == "right_afterrightroot"
    assert (origin / "metrics.json").read_text() == '{"seconds": 2}'  # handed back by the worker
    assert run([*DVC, "status"], third, env).stdout.strip() == "Data and pipelines are up to date."
    nothing_running(prefect_api, env)


def test_a_worker_killed_mid_stage_leaves_nothing_and_the_stage_runs_again_elsewhere(
    tmp_path: Path, lab: tuple[Path, dict], s3: str, prefect_api: str
) -> None:
    origin, env = lab
    log = tmp_path / "pipeline.log"
    with workers(tmp_path, lab, ["a", "b"]) as started:
        with log.open("w") as sink:
            pipeline = subprocess.Popen(
                [DEMONLAB, "run", "--pool", POOL], cwd=origin, env=env, stdout=sink, stderr=subprocess.STDOUT
            )
        try:
            victim = wait_for_stage(prefect_api, tmp_path, env, "left", pipeline, log)
            kill_tree(started[victim.removeprefix(f"{tmp_path.name}-")].pid)  # the machine is gone, mid-stage
            assert pipeline.wait(timeout=300) == 0, log.read_text()[-3000:]
        finally:
            pipeline.kill()
    outcomes = console_lines(log.read_text())
    assert outcomes == dict.fromkeys(STAGES, "ran"), log.read_text()[-3000:]
    assert "stopped sending heartbeats" in log.read_text()

    left = dvc_stage_runs(prefect_api, tmp_path, "left")
    assert sorted(r.state.type.value for r in left) == ["COMPLETED", "CRASHED"]
    finished_on = next(r for r in left if r.state.type == StateType.COMPLETED).name
    assert not finished_on.endswith(victim), "the stage ran again on the other worker"
    killed = [r for r in stage_runs(env) if r.data.tags["demonlab.stage"] == "left" and r.info.status == "KILLED"]
    assert len(killed) == 1 and "stopped sending heartbeats" in killed[0].data.tags["demonlab.reconciled"]

    lock = (origin / "dvc.lock").read_text()
    assert lock == reference_lock(tmp_path, lab)
    assert remote_objects(tmp_path, s3) == locked_objects(lock)  # nothing the killed attempt made reached it
    nothing_running(prefect_api, env)


def wait_for_stage(api: str, tmp_path: Path, env: dict, stage: str, pipeline: subprocess.Popen, log: Path) -> str:
    """Wait until `stage` runs its command on a worker (its MLflow run is RUNNING); that worker's name."""
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        assert pipeline.poll() is None, log.read_text()[-3000:]
        if any(r.data.tags["demonlab.stage"] == stage and r.info.status == "RUNNING" for r in stage_runs(env)):
            running = [r for r in dvc_stage_runs(api, tmp_path, stage) if r.state.type == StateType.RUNNING]
            return running[0].name.split(" on ", 1)[1]
        time.sleep(0.5)
    raise TimeoutError(f"stage {stage} did not start:\n{log.read_text()[-3000:]}")


def kill_tree(pid: int) -> None:
    """SIGKILL a process and everything it started, all at once: a machine that lost power."""
    tree = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
    for process in tree:
        os.kill(process.pid, signal.SIGKILL)


def test_a_worker_without_remote_credentials_fails_the_stage_with_one_line_not_retried(
    tmp_path: Path, lab: tuple[Path, dict], prefect_api: str
) -> None:
    origin, env = lab
    bare = {key: value for key, value in env.items() if not key.startswith("AWS_")} | NO_AWS
    with workers(tmp_path, lab, ["a"], env=bare):
        failed = run([DEMONLAB, "run", "--pool", POOL], origin, env, check=False)
    assert failed.returncode == 2, failed.stdout[-3000:] + failed.stderr[-3000:]
    last = failed.stderr.strip().splitlines()[-1]
    assert last.startswith(
        f"demonlab: error: stage 'root' failed: DVC remote 's3' (s3://{BUCKET}/{tmp_path.name}): no credentials on "
        "this worker: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE) in the worker's environment"
    ), last
    assert "Traceback" not in failed.stdout + failed.stderr
    assert len(dvc_stage_runs(prefect_api, tmp_path, "root")) == 1  # not retried
    assert console_lines(failed.stdout)["root"] == "failed"
    nothing_running(prefect_api, env)


def test_a_sweep_keeps_each_variant_as_a_dvc_experiment_under_one_mlflow_parent_and_compares_them(
    tmp_path: Path, lab: tuple[Path, dict]
) -> None:
    origin, env = lab
    params = (origin / "params.yaml").read_text()
    with workers(tmp_path, lab, ["a", "b"]):
        command = [DEMONLAB, "sweep", "-S", "toy.seconds=1,2", "--name", "pace", "--pool", POOL, "--parallel", "2"]
        done = run(command, origin, env, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    listed = run([*DVC, "exp", "list", "--name-only"], origin, env).stdout.split()
    assert sorted(listed) == ["pace-1", "pace-2"]
    shown = run([*DVC, "exp", "show", "--json"], origin, env).stdout
    assert '"seconds": 1' in shown and '"seconds": 2' in shown  # each experiment's metrics, as DVC recorded them

    runs = stage_runs(env)
    sweep = [r for r in runs if r.data.tags["demonlab.stage"] == "sweep"]
    assert len(sweep) == 1 and sweep[0].info.run_name == "sweep pace"
    pipelines = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == sweep[0].info.run_id]
    assert len(pipelines) == 2 and all(r.data.tags["demonlab.stage"] == "pipeline" for r in pipelines)

    report = (origin / "sweeps/pace.md").read_text()
    assert "| experiment | toy.seconds | metrics.json:seconds |" in report
    assert "| pace-1 | 1 | 1 |" in report and "| pace-2 | 2 | 2 |" in report
    assert report in done.stdout
    mlflow.set_tracking_uri(env["MLFLOW_TRACKING_URI"])
    assert [a.path for a in mlflow.MlflowClient().list_artifacts(sweep[0].info.run_id)] == ["pace.md"]
    assert (origin / "params.yaml").read_text() == params and not (origin / "dvc.lock").exists()  # as before
