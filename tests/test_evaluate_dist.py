"""Data-parallel evaluation: a real `torchrun --nproc_per_node=2` (gloo) gives the same bundle as one process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from evaluate_helpers import mini_normalized, tiny_experiment

from components.evaluation.bundle import read_bundle
from components.evaluation.evaluate import evaluate
from components.evaluation.settings import load_eval_settings
from components.experiment import load_experiment

ROOT = Path(__file__).resolve().parents[1]
TASKS = "AESOP,NLVR2,TQA,VIST,DocVQA,ALFRED,Spot-the-Diff"


@pytest.mark.slow  # two ranks + one process, each loading torch and the model (~25 s)
def test_torchrun_two_ranks_match_a_single_process(tmp_path):
    data = mini_normalized(tmp_path, per_task=1)
    experiment = tiny_experiment(tmp_path, batch_size=2)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    command += ["-m", "components.cli", "evaluate", "--model", str(experiment), "--data", str(data)]
    command += ["--tasks", TASKS, "--no-cache", "--out", str(tmp_path / "dist")]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("wrote ") == 1  # only rank 0 writes and reports

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        settings = load_eval_settings(load_experiment(experiment), experiment).replace(cache=False)
        single = evaluate(str(experiment), data, tmp_path / "single", settings, tasks=TASKS.split(","), progress=False)
    finally:
        torch.set_num_threads(before)

    dist = json.loads((tmp_path / "dist" / "results.json").read_text())
    assert dist["provenance"]["world_size"] == 2 and "samples per rank: 4, 3)" in done.stdout
    assert dist["model"]["fingerprint"] == single["model"]["fingerprint"]  # every rank built the same model
    assert dist["scores"] == single["scores"]
    assert read_bundle(tmp_path / "dist")[1] == read_bundle(tmp_path / "single")[1]
    for task in TASKS.split(","):
        assert (tmp_path / "dist" / task / "pred.json").read_bytes() == (
            tmp_path / "single" / task / "pred.json"
        ).read_bytes()
