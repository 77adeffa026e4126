"""Data versioning: the default local DVC remote and an S3 remote (moto's S3 server) hold what `dvc repro` made,
and a fresh clone gets it back with `dvc pull`, without re-running anything."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest
from workspace import ROOT, project_workspace, run

from components.runtime.servers import free_port

DVC = [sys.executable, "-m", "dvc"]
pytestmark = pytest.mark.slow  # a pipeline stage and an S3 server


def test_push_to_local_and_s3_remotes_then_pull_into_a_fresh_clone(tmp_path: Path, prefect_api: str) -> None:
    from moto.server import ThreadedMotoServer

    ws, env = project_workspace(tmp_path, prefect_api, {"data": {"mini": {"per_task": 1}}})
    shutil.copy(ROOT / ".dvc/config", ws / ".dvc/config")  # the project's remote settings, as a clone has them
    run([*DVC, "repro", "acquire"], ws, env)
    run([*DVC, "push"], ws, env)  # default remote: the local one, beside the repository
    assert any((ws.parent / ".dvc-storage").rglob("*")), "nothing reached the local remote"

    s3 = ThreadedMotoServer(ip_address="127.0.0.1", port=free_port())
    s3.start()
    try:
        aws = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1"}
        env = {**env, **aws}
        import boto3

        boto3.client("s3", endpoint_url=f"http://127.0.0.1:{s3._port}", region_name="us-east-1",
                     aws_access_key_id="test", aws_secret_access_key="test").create_bucket(Bucket="demon")  # fmt: skip
        # production settings are configuration only: a remote on S3 (local config: not committed)
        run([*DVC, "remote", "add", "--local", "s3", "s3://demon/dvc"], ws, env)
        run([*DVC, "remote", "modify", "--local", "s3", "endpointurl", f"http://127.0.0.1:{s3._port}"], ws, env)
        run([*DVC, "push", "-r", "s3"], ws, env)

        run(["git", "add", "-A"], ws, env)
        run(["git", "commit", "-qm", "acquired"], ws, env)
        clone = tmp_path / "clone"
        run(["git", "clone", "-q", str(ws), str(clone)], tmp_path, env)
        shutil.copy(ws / ".dvc/config.local", clone / ".dvc/config.local")
        run([*DVC, "pull", "-r", "s3", "acquire"], clone, env)
    finally:
        s3.stop()
    original = sorted(p.relative_to(ws) for p in (ws / "data/raw").rglob("*") if p.is_file())
    pulled = sorted(p.relative_to(clone) for p in (clone / "data/raw").rglob("*") if p.is_file())
    assert pulled == original and len(original) > 29
    status = run([*DVC, "status", "acquire"], clone, env).stdout
    assert "up to date" in status or "Data and pipelines are up to date" in status
