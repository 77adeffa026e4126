"""Production tracking: a stage run against an MLflow tracking server on PostgreSQL with an S3 object store.

Real processes only: PostgreSQL (Debian package) and `mlflow server` on 127.0.0.1, moto's S3 server as the object
store, the `normalize` stage flow run as DVC would run it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import boto3
import mlflow
import postgres
import pytest
import yaml

from components.demon.mini import build_mini_demon
from components.runtime.servers import free_port, mlflow_server_env, server

ROOT = Path(__file__).resolve().parents[1]
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not postgres.available(), reason="PostgreSQL (Debian package) is not installed"),
]


def test_stage_tracks_to_an_mlflow_server_on_postgresql_and_s3(tmp_path: Path, prefect_api: str) -> None:
    from moto.server import ThreadedMotoServer

    s3 = ThreadedMotoServer(ip_address="127.0.0.1", port=free_port())
    s3.start()
    s3_url = f"http://127.0.0.1:{s3._port}"
    aws = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1"}
    try:
        boto3.client("s3", endpoint_url=s3_url, **_boto(aws)).create_bucket(Bucket="mlflow-artifacts")
        with postgres.postgres_database("mlflow") as database:
            port = free_port()
            env = mlflow_server_env({**os.environ, **aws, "MLFLOW_S3_ENDPOINT_URL": s3_url})
            command = [str(Path(sys.executable).with_name("mlflow")), "server", "--backend-store-uri", database,
                       "--artifacts-destination", "s3://mlflow-artifacts/", "--host", "127.0.0.1",
                       "--port", str(port), "--workers", "1"]  # fmt: skip
            with server(command, f"http://127.0.0.1:{port}/health", tmp_path / "mlflow.log", env=env, timeout=120):
                tracking = f"http://127.0.0.1:{port}"
                workspace = _normalize_workspace(tmp_path / "ws")
                stage_env = {**env, "MLFLOW_TRACKING_URI": tracking, "PREFECT_API_URL": prefect_api}
                done = subprocess.run([sys.executable, "-m", "flows.normalize"], cwd=workspace, env=stage_env,
                                      capture_output=True, text=True)  # fmt: skip
                assert done.returncode == 0, done.stderr[-3000:]

                client = mlflow.MlflowClient(tracking_uri=tracking)
                runs = client.search_runs([client.get_experiment_by_name("demonlab").experiment_id])
                assert [r.data.tags["demonlab.stage"] for r in runs] == ["normalize"]
                written = json.loads((workspace / "metrics/normalize.json").read_text())
                assert runs[0].data.metrics["totals.normalized"] == written["totals"]["normalized"] > 0
                # the artifact went through the server into the object store, not onto this disk
                keys = [o["Key"] for o in boto3.client("s3", endpoint_url=s3_url, **_boto(aws))
                        .list_objects_v2(Bucket="mlflow-artifacts").get("Contents", [])]  # fmt: skip
                assert any(key.endswith(f"{runs[0].info.run_id}/artifacts/report.json") for key in keys), keys
            # and the run lives in PostgreSQL
            query = ["psql", database.replace("+psycopg2", ""), "-tAc", "select status from runs"]
            rows = subprocess.run(query, capture_output=True, text=True, check=True).stdout.split()
            assert rows == ["FINISHED"]
    finally:
        s3.stop()


def _boto(aws: dict[str, str]) -> dict[str, str]:
    return {
        "aws_access_key_id": aws["AWS_ACCESS_KEY_ID"],
        "aws_secret_access_key": aws["AWS_SECRET_ACCESS_KEY"],
        "region_name": aws["AWS_DEFAULT_REGION"],
    }


def _normalize_workspace(ws: Path) -> Path:
    """A folder the `normalize` stage can run in: params.yaml, the experiments it names and a one-sample-per-task
    mini DEMON."""
    shutil.copytree(ROOT / "experiments", ws / "experiments")
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    build_mini_demon(ws / params["data"]["raw"], per_task=1, seed=0)
    (ws / "params.yaml").write_text(yaml.safe_dump(params))
    return ws
