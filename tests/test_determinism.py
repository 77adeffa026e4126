"""The same training stage with the same inputs writes the same bytes, whatever else the machine is doing (DVC hashes
the outputs: a one-bit difference makes every downstream stage stale), in bf16 as in float32."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from train_helpers import stage, write_experiment, write_synth_folder

from components.training.recipe import SUMMARY, train
from components.vpgc.checkpoints import WEIGHTS_FILE

BURN = "import time\nend = time.time() + 600\nwhile time.time() < end: sum(i * i for i in range(10_000))"


def outputs(folder: Path) -> dict[str, bytes]:
    return {name: (folder / name).read_bytes() for name in (f"final/{WEIGHTS_FILE}", SUMMARY)}


@pytest.mark.slow  # it loads the machine on purpose
@pytest.mark.parametrize("precision", ["bfloat16", "float32"])
def test_a_stage_writes_the_same_bytes_under_another_load(tmp_path, monkeypatch, precision):
    data = write_synth_folder(tmp_path / "data", differences=8, captions=8)
    section = {"heldout": 2, "precision": precision, "vpgc": stage(3, {"SynthDifference": 2, "SynthCaption": 2})}
    experiment = write_experiment(tmp_path / "exp.yaml", train=section)
    # The same relative output folder, as in the pipeline (summary.json names it), in two workspaces.
    for workspace in ("quiet", "busy"):
        (tmp_path / workspace).mkdir()
    monkeypatch.chdir(tmp_path / "quiet")
    train(experiment, "vpgc", data, Path("out"))
    monkeypatch.chdir(tmp_path / "busy")
    burners = [subprocess.Popen([sys.executable, "-c", BURN]) for _ in range(3)]  # more runnable threads than cores
    try:
        train(experiment, "vpgc", data, Path("out"))
    finally:
        for burner in burners:
            burner.kill()
            burner.wait()
    assert outputs(tmp_path / "quiet" / "out") == outputs(tmp_path / "busy" / "out")
