"""Test-wide settings (quiet, offline, the environment's executables first), shared server fixtures, and the skip
rule: where skips are not allowed (`DEMONLAB_NO_SKIPS=1`, which `.ci/run` sets itself, or a CI runner's `CI=true`) a
test skipped at run time or a module skipped at collection fails the run; elsewhere the reason says how to install
what is missing."""

import os
import sys
from pathlib import Path

import pytest

from components.runtime.quiet import quiet

quiet(os.environ)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Subprocesses (dvc stages, servers) must run this environment's python, dvc and prefect.
os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
# Under `pytest -n N` each worker (and every process it starts) gets its share of the cores: N workers with one OpenMP
# thread per core each would oversubscribe them N times, and waiting OpenMP threads spin.
if (workers := int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))) > 1:
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // workers)))


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Modules holding slow tests run first, in file order: under `-n 2 --dist loadscope` (README's test command)
    the long modules start at once and the fast ones fill the gaps at the end."""
    slow = {item.module.__name__ for item in items if item.get_closest_marker("slow") and item.module}
    items.sort(key=lambda item: item.module.__name__ not in slow if item.module else True)


@pytest.fixture(scope="session")
def prefect_api(tmp_path_factory: pytest.TempPathFactory):
    """A real Prefect server on 127.0.0.1 for the whole session; yields its API URL."""
    from components.runtime.servers import prefect_server

    with prefect_server(tmp_path_factory.mktemp("prefect")) as url:
        yield url


@pytest.fixture(scope="module")
def one_thread():
    """Two busy cores shared with other jobs: one intra-op thread is several times faster for tiny models.
    A module opts in with `pytestmark = pytest.mark.usefixtures("one_thread")`."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# What .ci/run installs for the tests that drive real system programs; a skip reason naming one gets its command.
INSTALL_HINTS = {
    "Chromium": "apt-get install chromium",
    "PostgreSQL": "apt-get install postgresql (any version)",
}


def _no_skips() -> bool:
    # CI must run every test: a missing program there is a broken CI image, not a reason to pass quietly
    return os.environ.get("DEMONLAB_NO_SKIPS") == "1" or os.environ.get("CI") == "true"


NO_SKIPS_HINT = "skips fail here (DEMONLAB_NO_SKIPS=1 or CI=true); .ci/run installs what the tests need"


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector: pytest.Collector):
    """A module skipped at collection (`pytest.skip(allow_module_level=True)`, `importorskip`) counts as a skip."""
    outcome = yield
    report = outcome.get_result()
    if report.skipped and _no_skips():
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"{collector.nodeid}: skipped at collection ({reason}); {NO_SKIPS_HINT}"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    outcome = yield
    report = outcome.get_result()
    if not report.skipped or hasattr(report, "wasxfail") or not isinstance(report.longrepr, tuple):
        return
    path, line, reason = report.longrepr
    if _no_skips():
        report.outcome = "failed"
        report.longrepr = f"{path}:{line}: skipped ({reason}); {NO_SKIPS_HINT}"
        return
    hints = [hint for name, hint in INSTALL_HINTS.items() if name.lower() in reason.lower() and hint not in reason]
    if hints:
        report.longrepr = (path, line, f"{reason}; to run it: {'; '.join(hints)}")
