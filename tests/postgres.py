"""A throwaway PostgreSQL cluster on 127.0.0.1 (any installed server version), for the production-tracking test."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from components.runtime.servers import free_port


def server_bin() -> Path | None:
    """The newest installed server's bin folder: Debian keeps one per major version (/usr/lib/postgresql/<N>/bin,
    not on PATH); other systems put `postgres` on PATH."""
    debian = sorted(Path("/usr/lib/postgresql").glob("*/bin/postgres"), key=lambda p: int(p.parts[-3]))
    found = debian[-1] if debian else shutil.which("postgres")
    return Path(found).parent if found else None


def available() -> bool:
    return server_bin() is not None


def _as_postgres(command: list[str]) -> list[str]:
    # PostgreSQL refuses to run as root; CI and these machines run tests as root.
    return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else command


@contextmanager
def postgres_database(name: str) -> Iterator[str]:
    """Start a cluster, create database `name`, yield its SQLAlchemy URL; stop the cluster (pg_ctl) and delete it."""
    bindir = server_bin()
    if bindir is None:
        raise RuntimeError("no PostgreSQL server installed (apt-get install postgresql)")
    root = Path(tempfile.mkdtemp(prefix="demonlab-pg-"))  # not under pytest's 0700 root: postgres must reach it
    data, log = root / "data", root / "server.log"
    if os.geteuid() == 0:
        shutil.chown(root, "postgres")
    port = free_port()
    try:
        subprocess.run(_as_postgres([str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "-A", "trust"]),
                       check=True, capture_output=True)  # fmt: skip
        options = f"-c listen_addresses=127.0.0.1 -p {port} -k {root}"
        subprocess.run(_as_postgres([str(bindir / "pg_ctl"), "-D", str(data), "-l", str(log), "-o", options, "-w",
                                     "start"]), check=True, capture_output=True)  # fmt: skip
        try:
            subprocess.run(_as_postgres([str(bindir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres",
                                         name]), check=True, capture_output=True)  # fmt: skip
            yield f"postgresql+psycopg2://postgres@127.0.0.1:{port}/{name}"
        finally:
            subprocess.run(_as_postgres([str(bindir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"]),
                           capture_output=True)  # fmt: skip
    finally:
        shutil.rmtree(root, ignore_errors=True)
