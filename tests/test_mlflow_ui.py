"""The MLflow UI, served by `demonlab ui`, shows stage runs and their metrics in a real headless browser
(Debian's Chromium): what a user sees when comparing runs."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import mlflow
import psutil
import pytest

from components.runtime.servers import free_port, server
from components.tracking.runs import stage_run, write_metrics

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (apt-get install chromium)"),
]


def chromium(url: str, *flags: str) -> subprocess.CompletedProcess:
    """Load `url` headless, letting the page's JavaScript run for up to 20 s of virtual time."""
    command = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--hide-scrollbars",
               "--window-size=1600,1100", "--virtual-time-budget=20000", *flags, url]  # fmt: skip
    return subprocess.run(command, capture_output=True, text=True, timeout=120, check=True)


def test_compare_view_shows_the_runs_and_their_metrics(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.delenv("DEMONLAB_PARENT_RUN_ID", raising=False)
    run_ids = []
    for name, score in (("score-parity", 41.25), ("score-strict", 37.5)):
        with stage_run(name, {"scorer": name}) as run:
            write_metrics(tmp_path / f"{name}.json", {"categories": {"Multimodal Cloze": score}})
            run_ids.append(run.info.run_id)
    experiment = mlflow.get_run(run_ids[0]).info.experiment_id

    port = free_port()
    command = [str(Path(sys.executable).with_name("demonlab")), "ui", "--port", str(port)]
    with server(
        command, f"http://127.0.0.1:{port}/health", tmp_path / "ui.log", env=dict(os.environ), timeout=120
    ) as ui:
        # MLflow's job runner (GenAI jobs demonlab never submits: eight processes more) is not started
        started = [" ".join(p.cmdline()) for p in psutil.Process(ui.pid).children(recursive=True)]
        assert started and not [line for line in started if "jobs" in line or "huey" in line], started
        url = f'http://127.0.0.1:{port}/#/compare-runs?runs={json.dumps(run_ids)}&experiments=["{experiment}"]'
        dom = chromium(url, "--dump-dom").stdout
        chromium(url, f"--screenshot={tmp_path / 'compare.png'}")

    assert "Comparing 2 Runs" in dom
    for text in ("score-parity", "score-strict", "categories.Multimodal Cloze", "41.25", "37.5", *run_ids):
        assert text in dom, f"{text!r} not shown in the compare view"
    assert (tmp_path / "compare.png").stat().st_size > 20_000  # a rendered page, not a blank one
