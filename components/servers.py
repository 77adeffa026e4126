"""Local servers (Prefect, MLflow, test stand-ins) on 127.0.0.1, started and stopped by process id by whoever
needs them: `demonlab run`, the `demonlab server`/`worker`/`ui` commands, and the tests."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from components.quiet import quiet


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
    raise TimeoutError(f"{url} not ready after {timeout}s:\n{log.read_text()[-3000:]}")


@contextmanager
def background(command: list[str], log: Path, env: dict | None = None, cwd: Path | None = None):
    """Run `command` in its own process group until the block ends; stop the group (SIGINT, then SIGKILL)."""
    with log.open("w") as sink:
        process = subprocess.Popen(
            command, stdout=sink, stderr=subprocess.STDOUT, env=env, cwd=cwd, start_new_session=True
        )
    try:
        yield process
    finally:
        for sig, wait in ((signal.SIGINT, 10), (signal.SIGKILL, 5)):
            if process.poll() is not None:
                break
            os.killpg(process.pid, sig)
            try:
                process.wait(wait)
            except subprocess.TimeoutExpired:
                continue


@contextmanager
def server(command: list[str], health_url: str, log: Path, env: dict | None = None, timeout: float = 90):
    """A `background` server, ready once `health_url` answers."""
    with background(command, log, env) as process:
        wait_http(health_url, process, timeout, log)
        yield process


def prefect_server_command(port: int) -> list[str]:
    prefect = Path(sys.executable).with_name("prefect")  # this environment's, whatever PATH says
    return [str(prefect), "server", "start", "--host", "127.0.0.1", "--port", str(port)]


@contextmanager
def prefect_server(home: Path) -> Iterator[str]:
    """A Prefect API server with its own SQLite database under `home`; yields its API URL."""
    home.mkdir(parents=True, exist_ok=True)
    port = free_port()
    env = {**os.environ, "PREFECT_HOME": str(home)}
    quiet(env)
    command = prefect_server_command(port)
    with server(command, f"http://127.0.0.1:{port}/api/health", home / "server.log", env=env):
        yield f"http://127.0.0.1:{port}/api"
