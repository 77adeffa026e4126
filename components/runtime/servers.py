"""Local servers (Prefect, MLflow, test stand-ins) on 127.0.0.1, started and stopped by process id by whoever
needs them: `demonlab run`, the `demonlab server`/`worker`/`ui` commands, and the tests."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from importlib.metadata import version
from pathlib import Path

from components.atomic import atomic_path
from components.cache_root import cache_root
from components.errors import UserError
from components.runtime.lifetime import child
from components.runtime.quiet import quiet

TIMEOUT_SETTING = "DEMONLAB_SERVER_TIMEOUT"  # seconds a server we start may take to answer
# MLflow's server starts a job runner for its GenAI features (judges, trace roll-ups): eight more processes, each
# importing MLflow. demonlab submits no jobs; measured on 2 cores, `mlflow ui` with it: 10 processes, 27.7 s of CPU,
# 2.3 GB; without: 2 processes, 6.9 s, 0.5 GB.
MLFLOW_SERVER_SETTINGS = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_http(url: str, process: subprocess.Popen, timeout: float, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    # A busy machine, not a bug: one line with the way forward (a first start also migrates the database).
    raise UserError(
        f"{url} did not answer within {timeout:.0f} s (the server's log: {log}); on a busy machine allow longer, "
        f"e.g. {TIMEOUT_SETTING}=300"
    )


@contextmanager
def background(command: list[str], log: Path, env: dict | None = None, cwd: Path | None = None):
    """Run `command` in its own session, tied to this process (`lifetime.tied`), until the block ends; then stop its
    tree (SIGINT, then SIGKILL)."""
    with (
        log.open("w") as sink,
        child(command, session=True, stdout=sink, stderr=subprocess.STDOUT, env=env, cwd=cwd) as process,
    ):
        yield process


@contextmanager
def server(command: list[str], health_url: str, log: Path, env: dict | None = None, timeout: float | None = None):
    """A `background` server, ready once `health_url` answers (within `timeout`, default $DEMONLAB_SERVER_TIMEOUT
    or 90 s)."""
    with background(command, log, env) as process:
        wait_http(health_url, process, timeout or float(os.environ.get(TIMEOUT_SETTING, 90)), log)
        yield process


def prefect_server_command(port: int, host: str = "127.0.0.1") -> list[str]:
    prefect = Path(sys.executable).with_name("prefect")  # this environment's, whatever PATH says
    return [str(prefect), "server", "start", "--host", host, "--port", str(port)]


def mlflow_server_env(env: Mapping[str, str]) -> dict[str, str]:
    """`env` for an MLflow server demonlab starts: without the job runner (a value the user set wins)."""
    return {**MLFLOW_SERVER_SETTINGS, **env}


def listen_url(host: str, port: int) -> str:
    """The address a browser uses for a server bound to `host`: a wildcard bind answers on this machine's name."""
    if host in ("0.0.0.0", "::", ""):
        host = socket.gethostname()
    return f"http://{f'[{host}]' if ':' in host else host}:{port}"


def prefect_ui_env(env: dict[str, str], host: str, port: int) -> dict[str, str]:
    """`env` for a Prefect server on host:port whose UI calls its own API: Prefect's UI would call PREFECT_API_URL,
    else port 4200, whatever port it is served on. A UI API URL the user set (a proxy's) wins."""
    if "PREFECT_SERVER_UI_API_URL" in env or "PREFECT_UI_API_URL" in env:
        return env
    return {**env, "PREFECT_SERVER_UI_API_URL": f"{listen_url(host, port)}/api"}


def seed_prefect_database(env: Mapping[str, str]) -> None:
    """Give a new Prefect home (`env`'s PREFECT_HOME, Prefect's default SQLite file) a copy of an empty database this
    Prefect version has migrated once (kept in demonlab's cache): a new workspace's first server would otherwise run
    the same migrations again (8 of its 12 s of CPU on this project's machines). A configured database is left alone,
    and where the template cannot be made the server migrates its own, as without this."""
    if "PREFECT_API_DATABASE_CONNECTION_URL" in env or "PREFECT_SERVER_DATABASE_CONNECTION_URL" in env:
        return
    database = Path(env["PREFECT_HOME"]) / "prefect.db"
    if database.exists() or (template := _migrated_template(env)) is None:
        return
    with atomic_path(database) as partial:
        shutil.copyfile(template, partial)


def _migrated_template(env: Mapping[str, str]) -> Path | None:
    """The empty database of this Prefect version, migrated to its head; made on first use (atomically: two
    processes may both make it, the last rename wins)."""
    folder = cache_root() / "prefect"
    template = folder / f"empty-{version('prefect')}.db"
    if template.exists():
        return template
    upgrade = [str(Path(sys.executable).with_name("prefect")), "server", "database", "upgrade", "-y"]
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=folder) as scratch:
            if subprocess.run(upgrade, env={**env, "PREFECT_HOME": scratch}, capture_output=True).returncode != 0:
                return None
            os.replace(Path(scratch) / "prefect.db", template)
    except OSError:  # a cache that cannot be written (read-only home, full disk): the server migrates its own
        return None
    return template


@contextmanager
def prefect_server(home: Path) -> Iterator[str]:
    """A Prefect API server with its own SQLite database under `home`; yields its API URL."""
    home.mkdir(parents=True, exist_ok=True)
    port = free_port()
    env = prefect_ui_env({**os.environ, "PREFECT_HOME": str(home)}, "127.0.0.1", port)
    quiet(env)
    seed_prefect_database(env)
    command = prefect_server_command(port)
    with server(command, f"http://127.0.0.1:{port}/api/health", home / "server.log", env=env):
        yield f"http://127.0.0.1:{port}/api"
