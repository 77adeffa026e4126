"""`demonlab worker` names itself in Prefect: Prefect refuses '/' and '%' in a worker's name, so the default (host
and folder) must never carry the workspace's path, and a bad `--name` is the user's mistake, told in one line."""

import subprocess
import sys
from pathlib import Path

from components.runtime.pipeline_cli import default_worker_name

DEMONLAB = str(Path(sys.executable).with_name("demonlab"))


def test_the_default_name_is_valid_and_unique_per_clone(tmp_path: Path) -> None:
    first, second = tmp_path / "a" / "demonlab", tmp_path / "b" / "demonlab"
    names = {default_worker_name(first), default_worker_name(second)}
    assert len(names) == 2 and all("/" not in name and "%" not in name and "demonlab" in name for name in names)
    assert default_worker_name(first) == default_worker_name(first)


def test_a_name_prefect_refuses_is_a_one_line_error(tmp_path: Path) -> None:
    done = subprocess.run([DEMONLAB, "worker", "--name", "lab/gpu-1"], capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 2 and "cannot be empty or contain '/' or '%'" in done.stderr
    assert "Traceback" not in done.stderr
