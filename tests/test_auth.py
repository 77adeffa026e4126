"""A team deployment that lets no one in who does not belong: MLflow's basic-auth app and Prefect's auth string.

Real servers on 127.0.0.1: `mlflow server --app-name basic-auth` (its users in SQLite) and `prefect server start`
with `PREFECT_SERVER_API_AUTH_STRING`. Clients take their credentials from the environment or MLflow's
`~/.mlflow/credentials` only; a refused login is one line naming the server and the setting to fix (exit 2), sent
once (counted in the server's access log); and no secret shows up, raw, base64, URL-encoded or hex, in anything a
run writes. The secured run is the pipeline at its smallest, through training, registering the model, evaluating it
and the report.
"""

from __future__ import annotations

import base64
import configparser
import gzip
import io
import os
import re
import subprocess
import sys
import time
import urllib.parse
import uuid
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from unittest import mock

import mlflow
import pandas as pd
import pytest
from mlflow.server.auth.client import AuthServiceClient
from test_orchestration import wait_for_deployment
from workspace import ONE_MODEL, SMALLEST, SMALLEST_EXPERIMENT, own_cache, project_workspace, run

from components import cli
from components.errors import UserError
from components.runtime.servers import (
    background,
    free_port,
    mlflow_server_env,
    prefect_server_command,
    seed_prefect_database,
    server,
)
from components.security import PREFECT_LOGIN, check_exposure, redact
from components.tracking.models import download_checkpoint
from components.tracking.runs import MLFLOW_LOGIN, PARENT_RUN_ENV, loggable_params, stage_run, write_metrics

MLFLOW = str(Path(sys.executable).with_name("mlflow"))
DEMONLAB = str(Path(sys.executable).with_name("demonlab"))
PREFECT = str(Path(sys.executable).with_name("prefect"))
ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def marker(name: str) -> str:
    """A secret no file could hold by chance; `/` and `+` make its URL encoding differ from it."""
    return f"{name}-{uuid.uuid4().hex}/+"


def encodings(secret: str) -> dict[str, bytes]:
    """`secret` as it would appear written raw, URL-encoded, hex, or base64 (standard or URL-safe) inside a longer
    encoded text (an HTTP basic-auth header: base64 of `user:password`), at each of base64's three alignments: the
    characters that depend on the secret's bytes alone."""
    raw = secret.encode()
    forms = {
        "raw": raw,
        "url": urllib.parse.quote(secret, safe="").encode(),
        "url+": urllib.parse.quote_plus(secret).encode(),
    }
    forms |= {"hex": raw.hex().encode(), "HEX": raw.hex().upper().encode()}
    for shift in range(3):  # the secret starts `shift` bytes into a 3-byte group
        encoded = base64.b64encode(b"\0" * shift + raw)
        inner = encoded[-(-4 * shift // 3) : 8 * (shift + len(raw)) // 6]  # characters of the secret's bits only
        forms[f"base64+{shift}"] = inner
        forms[f"base64url+{shift}"] = inner.replace(b"+", b"-").replace(b"/", b"_")
    return forms


def contents(path: Path) -> bytes:
    """A file's bytes, and what a compressed container holds: Parquet columns, gzip, zip members."""
    data = path.read_bytes()
    if data[:4] == b"PAR1":
        data += pd.read_parquet(path).to_csv().encode()
    elif data[:2] == b"\x1f\x8b":
        data += gzip.decompress(data)
    elif data[:4] == b"PK\x03\x04":
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            data += b"".join(archive.read(name) for name in archive.namelist())
    return data


def leaks(data: bytes, secrets: list[str]) -> list[str]:
    return [f"{secret} ({form})" for secret in secrets for form, text in encodings(secret).items() if text in data]


def test_the_leak_search_finds_every_encoding(tmp_path: Path) -> None:
    secret = marker("probe")
    for prefix in ("", "a", "ab"):  # each base64 alignment
        header = f"Authorization: Basic {base64.b64encode(f'{prefix}user:{secret}'.encode()).decode()}"
        assert leaks(header.encode(), [secret]), prefix
        urlsafe = base64.urlsafe_b64encode(f"{prefix}{secret}!".encode())
        assert leaks(urlsafe, [secret]), prefix
    for written in (f"?key={urllib.parse.quote(secret, safe='')}", secret.encode().hex(), f"token={secret}"):
        assert leaks(written.encode(), [secret]), written
    pd.DataFrame({"value": [f"x{secret}y"] * 50}).to_parquet(
        tmp_path / "a.parquet", compression="gzip", write_statistics=False
    )
    (tmp_path / "b.gz").write_bytes(gzip.compress(secret.encode() * 3))
    for name in ("a.parquet", "b.gz"):
        assert secret.encode() not in (tmp_path / name).read_bytes() and leaks(contents(tmp_path / name), [secret])
    assert not leaks(b"nothing secret here " + secret[:-4].encode(), [secret])


@dataclass(frozen=True)
class MlflowServer:
    url: str
    root: Path  # everything the server writes: runs, artifacts, users, its log
    secrets: dict[str, str]  # passwords of admin (creates the others), writer, reader (READ only); csrf key


@pytest.fixture(scope="module")
def mlflow_auth(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    root = tmp_path_factory.mktemp("mlflow-auth")
    shipped = configparser.ConfigParser()  # deploy/'s configuration, its users' database moved under `root`
    shipped.read(ROOT / "deploy" / "basic_auth.ini")
    shipped["mlflow"]["database_uri"] = f"sqlite:///{root / 'users.db'}"
    config = root / "basic_auth.ini"
    with config.open("w") as file:
        shipped.write(file)
    secrets = {name: marker(f"{name}-secret") for name in ("admin", "writer", "reader", "csrf")}
    env = {
        **mlflow_server_env(os.environ),
        "MLFLOW_AUTH_CONFIG_PATH": str(config),
        "MLFLOW_AUTH_ADMIN_PASSWORD": secrets["admin"],
        "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets["csrf"],  # signs the UI's CSRF tokens
    }
    port = free_port()
    command = [MLFLOW, "server", "--app-name", "basic-auth", "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
               "--artifacts-destination", (root / "artifacts").as_uri(), "--host", "127.0.0.1", "--port", str(port),
               "--workers", "1"]  # fmt: skip
    with server(command, f"http://127.0.0.1:{port}/health", root / "server.log", env=env, timeout=120):
        url = f"http://127.0.0.1:{port}"
        admin = {"MLFLOW_TRACKING_USERNAME": "admin", "MLFLOW_TRACKING_PASSWORD": secrets["admin"]}
        with mock.patch.dict(os.environ, admin):  # the admin's client reads its login where every client does
            for user in ("writer", "reader"):
                AuthServiceClient(url).create_user(user, secrets[user])
        yield MlflowServer(url, root, secrets)


def refusals(mlflow: MlflowServer) -> int:
    """Requests the server has answered 401, from its access log (uvicorn's: `"<request line>" 401`)."""
    return len(re.findall(r'" 401\b', (mlflow.root / "server.log").read_text()))


def login(monkeypatch: pytest.MonkeyPatch, user: str | None, password: str | None) -> None:
    for name, value in (("MLFLOW_TRACKING_USERNAME", user), ("MLFLOW_TRACKING_PASSWORD", password)):
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)


def test_a_stage_tracks_with_its_login_and_stops_with_one_line_without(
    mlflow_auth: MlflowServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    url, passwords = mlflow_auth.url, mlflow_auth.secrets
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.mlflow/credentials but the one written below
    monkeypatch.setenv("DEMONLAB_WORKSPACE", str(tmp_path))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
    monkeypatch.delenv(PARENT_RUN_ENV, raising=False)

    def track(user: str | None, password: str | None) -> str:
        """What a stage does with the tracking server: a stage run, a metric; returns the run id."""
        login(monkeypatch, user, password)
        with stage_run("auth-check", {"seed": 0}) as active:
            write_metrics(tmp_path / "metrics.json", {"score": 1.0})
        return active.info.run_id

    logged = [track("writer", passwords["writer"])]
    credentials = tmp_path / ".mlflow" / "credentials"  # MLflow's own secrets file, read when the environment has none
    credentials.parent.mkdir()
    credentials.write_text(
        f"[mlflow]\nmlflow_tracking_username = writer\nmlflow_tracking_password = {passwords['writer']}\n"
    )
    logged.append(track(None, None))
    credentials.unlink()

    wrong = ("writer", "wrong-password", "user 'writer' or its password was not accepted")
    for user, password, tried in ((None, None, "none is set"), wrong):
        before = refusals(mlflow_auth)
        with pytest.raises(UserError) as refused:
            track(user, password)
        assert (
            str(refused.value)
            == f"MLflow server {url} rejected the credentials (HTTP 401): set {MLFLOW_LOGIN} ({tried})"
        )
        time.sleep(1)  # the access log line of a retry, had there been one, is written by now
        assert refusals(mlflow_auth) == before + 1  # the server refused one request: a rejected login is not retried
    with pytest.raises(UserError) as denied:
        track("reader", passwords["reader"])
    assert str(denied.value).startswith(
        f"MLflow server {url} denied the request (HTTP 403): user 'reader' may not do this"
    )

    login(monkeypatch, None, None)  # `demonlab evaluate --model models:/...` downloads through the same login
    with pytest.raises(UserError, match=rf"^MLflow server {url} rejected the credentials \(HTTP 401\)"):
        download_checkpoint("models:/demonlab-tiny-vpgc@candidate")

    login(monkeypatch, "reader", passwords["reader"])  # READ: sees what the writer logged, and only that
    client = mlflow.MlflowClient(url)
    runs = client.search_runs(
        [client.get_experiment_by_name("demonlab").experiment_id], "tags.`demonlab.stage` = 'auth-check'"
    )
    assert sorted(r.info.run_id for r in runs) == sorted(logged)
    assert all(r.data.metrics == {"score": 1.0} and r.info.status == "FINISHED" for r in runs)


def test_secrets_are_redacted_and_refused_as_parameters(monkeypatch: pytest.MonkeyPatch) -> None:
    key = marker("sk")
    monkeypatch.setenv("OPENAI_API_KEY", key)
    assert redact(f"POST https://me:{key}@llm.example.com/v1?api_key={key}&model=x failed ({key})") == (
        "POST https://me:***@llm.example.com/v1?api_key=***&model=x failed (***)"
    )
    assert redact("postgresql+psycopg2://mlflow@db:5432/mlflow s3://bucket/key") == (
        "postgresql+psycopg2://mlflow@db:5432/mlflow s3://bucket/key"  # no secret, nothing masked
    )
    with pytest.raises(UserError) as refused:
        loggable_params({"data": {"source": "https://me:hunter2-hunter2@example.com/demon.zip", "split": "core"}})
    assert "data.source" in str(refused.value) and "hunter2" not in str(refused.value)


def test_servers_stay_on_loopback_unless_a_login_guards_them(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for host in ("127.0.0.1", "::1", "localhost"):
        check_exposure(host, auth_configured=False, insecure=False, service="the demo", how="set X")
    check_exposure("0.0.0.0", auth_configured=True, insecure=False, service="the demo", how="set X")
    with pytest.raises(UserError, match=r"^--host 0\.0\.0\.0 would let anyone .* the demo without logging in: set X"):
        check_exposure("0.0.0.0", auth_configured=False, insecure=False, service="the demo", how="set X")
    check_exposure("10.1.2.3", auth_configured=False, insecure=True, service="the demo", how="set X")
    assert capsys.readouterr().err.startswith("warning: the demo on 10.1.2.3 has no authentication (--insecure)")

    monkeypatch.delenv("PREFECT_SERVER_API_AUTH_STRING", raising=False)
    for command, fix in ((["server"], "PREFECT_SERVER_API_AUTH_STRING"), (["ui"], "add --auth")):
        assert cli.main([*command, "--host", "0.0.0.0"]) == 2  # refused before anything starts
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and fix in err, err


@dataclass(frozen=True)
class SecuredRun:
    """The pipeline deployment, through training, registration, evaluation and the report (one model, its images),
    run through `demonlab worker` against both secured servers, with secrets around."""

    root: Path  # the workspace, the Prefect server's home, the worker's log, the response cache, the DVC remote
    workspace: Path
    env: dict[str, str]
    secrets: dict[str, str]
    refused: list[subprocess.CompletedProcess]  # `demonlab worker` without / with a wrong auth string
    done: subprocess.CompletedProcess  # `prefect deployment run ... --watch`
    worker_log: Path


@pytest.fixture(scope="module")
def secured_run(tmp_path_factory: pytest.TempPathFactory, mlflow_auth: MlflowServer) -> Iterator[SecuredRun]:
    tmp = tmp_path_factory.mktemp("secured")
    auth_string = f"admin:{marker('prefect-auth')}"
    home = tmp / "prefect"
    home.mkdir()
    port = free_port()
    server_env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_SERVER_API_AUTH_STRING": auth_string}
    seed_prefect_database(server_env)
    with server(prefect_server_command(port), f"http://127.0.0.1:{port}/api/health", home / "server.log", server_env):
        ws, env = project_workspace(tmp, f"http://127.0.0.1:{port}/api", SMALLEST, ONE_MODEL, SMALLEST_EXPERIMENT)
        secrets = {
            "OPENAI_API_KEY": marker("openai-key"),
            "AWS_SECRET_ACCESS_KEY": marker("aws-secret"),
            "MLFLOW_TRACKING_PASSWORD": mlflow_auth.secrets["writer"],
            "PREFECT_API_AUTH_STRING": auth_string,
        }
        env |= {"MLFLOW_TRACKING_URI": mlflow_auth.url, "MLFLOW_TRACKING_USERNAME": "writer", **secrets}
        env |= own_cache(tmp)  # the response cache is searched too
        without = {k: v for k, v in env.items() if k != "PREFECT_API_AUTH_STRING"}
        wrong = {**without, "PREFECT_API_AUTH_STRING": "admin:wrong"}
        refused = [run([DEMONLAB, "worker"], ws, e, check=False) for e in (without, wrong)]
        log = tmp / "worker.log"
        polling = {**env, "PREFECT_WORKER_QUERY_SECONDS": "1"}  # pick the run up at once, not within 10-15 s
        with background([DEMONLAB, "worker"], log, env=polling, cwd=ws) as worker:
            wait_for_deployment(ws, env, "demon-pipeline/embedded", worker, log)
            command = [PREFECT, "deployment", "run", "demon-pipeline/embedded", "--watch", "--watch-timeout", "900"]
            done = run(command, ws, env, check=False)
        yield SecuredRun(tmp, ws, env, secrets, refused, done, log)


def test_deployments_run_through_the_worker_with_the_auth_string_only(
    secured_run: SecuredRun, mlflow_auth: MlflowServer
) -> None:
    api = secured_run.env["PREFECT_API_URL"]
    for refused in secured_run.refused:
        assert refused.returncode == 2 and refused.stdout == "", refused.stdout[-2000:]
        assert (
            refused.stderr
            == f"demonlab: error: Prefect server {api} rejected the credentials (HTTP 401): {PREFECT_LOGIN}\n"
        )
    done = secured_run.done
    assert done.returncode == 0 and "Completed" in done.stdout, (
        done.stdout[-3000:] + secured_run.worker_log.read_text()[-3000:]
    )

    writer = {k: secured_run.env[k] for k in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")}
    with mock.patch.dict(os.environ, writer):
        client = mlflow.MlflowClient(mlflow_auth.url)
        runs = client.search_runs(
            [client.get_experiment_by_name("demonlab").experiment_id], "tags.`dvc.stage` = 'acquire'"
        )
        [child] = runs
        parent = client.get_run(child.data.tags["mlflow.parentRunId"])
    assert parent.data.tags["demonlab.stage"] == "pipeline" and parent.data.tags["dvc.out.data/raw"]


def test_no_secret_in_anything_the_run_wrote(secured_run: SecuredRun, mlflow_auth: MlflowServer) -> None:
    """Every file under the run's folders and the MLflow server's (databases, logs, artifacts, the DVC cache, the
    response cache), and the commands' output: no secret in any of the encodings a client or a log might use."""
    files = [p for place in (secured_run.root, mlflow_auth.root) for p in place.rglob("*") if p.is_file()]
    names = {f.name for f in files}
    assert {"dvc.lock", "mlflow.db", "users.db", "prefect.db", "server.log", "worker.log", "responses.sqlite"} <= names
    assert {"weights.safetensors", "results.json", "compare.md", "samples.parquet"} <= names  # trained and evaluated
    secrets = [*secured_run.secrets.values(), *(mlflow_auth.secrets[k] for k in ("admin", "reader", "csrf"))]
    found = [f"{f}: {leak}" for f in files for leak in leaks(contents(f), secrets)]
    output = secured_run.done.stdout + secured_run.done.stderr + "".join(r.stderr for r in secured_run.refused)
    found += [f"output: {leak}" for leak in leaks(output.encode(), secrets)]
    assert not found, found


def test_a_stage_with_a_wrong_password_stops_with_one_line(secured_run: SecuredRun, mlflow_auth: MlflowServer) -> None:
    env = {**secured_run.env, "MLFLOW_TRACKING_PASSWORD": "wrong-password-0"}
    done = run([sys.executable, "-m", "flows.normalize"], secured_run.workspace, env, check=False)
    assert done.returncode == 2, done.stderr[-3000:]
    assert done.stderr.strip().splitlines()[-1] == (
        f"error: MLflow server {mlflow_auth.url} rejected the credentials (HTTP 401): set {MLFLOW_LOGIN} "
        "(user 'writer' or its password was not accepted)"
    )
    output = done.stdout + done.stderr
    assert not [secret for secret in ["wrong-password-0", *secured_run.secrets.values()] if secret in output]
