"""The skip rule of tests/conftest.py, run on sample test files in a real pytest process: where skips are not
allowed (as `.ci/run` sets it) a skip at run time and a module skipped at collection both fail the run."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = {
    "runtime": "import pytest\n\ndef test_needs_chromium():\n    pytest.skip('Chromium not installed')\n",
    "collection": "import pytest\n\npytest.skip('PostgreSQL not installed', allow_module_level=True)\n",
    "import": "import pytest\n\npytest.importorskip('no_such_module_here')\n\ndef test_x():\n    pass\n",
}


def run_sample(tmp_path: Path, body: str, no_skips: bool) -> subprocess.CompletedProcess:
    sample = tmp_path / "test_sample.py"
    sample.write_text(body)
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "DEMONLAB_NO_SKIPS")}
    env |= {"DEMONLAB_NO_SKIPS": "1"} if no_skips else {}
    command = [sys.executable, "-m", "pytest", "-p", "tests.conftest", "-p", "no:cacheprovider", "-q", str(sample)]
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("kind", sorted(SAMPLES))
def test_a_skip_fails_where_skips_are_not_allowed(kind, tmp_path):
    strict = run_sample(tmp_path, SAMPLES[kind], no_skips=True)
    assert strict.returncode != 0, strict.stdout
    assert "skips fail here" in strict.stdout and "skipped" in strict.stdout
    relaxed = run_sample(tmp_path, SAMPLES[kind], no_skips=False)
    # a module skipped whole leaves nothing run: pytest's "no tests collected", not a failure
    assert relaxed.returncode in (pytest.ExitCode.OK, pytest.ExitCode.NO_TESTS_COLLECTED), relaxed.stdout
    assert " skipped" in relaxed.stdout and "skips fail here" not in relaxed.stdout


def test_ci_sets_the_rule_itself():
    assert "export DEMONLAB_NO_SKIPS=1" in (ROOT / ".ci/run").read_text().splitlines()
