"""Test-wide settings (quiet, offline, the environment's executables first) and shared server fixtures."""

import os
import sys
from pathlib import Path

import pytest

from components.quiet import quiet

quiet(os.environ)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Subprocesses (dvc stages, servers) must run this environment's python, dvc and prefect.
os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"


@pytest.fixture(scope="session")
def prefect_api(tmp_path_factory: pytest.TempPathFactory):
    """A real Prefect server on 127.0.0.1 for the whole session; yields its API URL."""
    from components.servers import prefect_server

    with prefect_server(tmp_path_factory.mktemp("prefect")) as url:
        yield url
