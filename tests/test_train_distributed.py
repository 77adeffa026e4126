"""Real processes: torchrun on gloo gives one process's weights; SIGKILL + --resume gives the uninterrupted ones."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from train_helpers import stage, write_experiment, write_synth_folder

from components.training.recipe import train
from components.vpgc.checkpoints import WEIGHTS_FILE

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_synth_folder(tmp_path_factory.mktemp("synth"), differences=12, captions=12)


def environment(tmp_path: Path) -> dict[str, str]:
    env = {**os.environ, "DEMONLAB_WORKSPACE": str(tmp_path), "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    return env


def cli(*args: str | Path) -> list[str]:
    return ["-m", "components.cli", "train", *map(str, args)]


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_two_processes_train_the_same_weights_as_one(synth, tmp_path, strategy):
    # Global batch 8 = 4 per rank = 2 micro-batches of 2: the same micro-batches as one process, summed elsewhere.
    section = {"heldout": 2, "strategy": strategy, "vpgc": stage(3, {"SynthDifference": 4, "SynthCaption": 4})}
    experiment = write_experiment(tmp_path / "exp.yaml", train=section)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    command = [*torchrun, *cli("--config", experiment, "--stage", "vpgc", "--data", synth, "--out", tmp_path / "two")]
    done = subprocess.run(command, env=environment(tmp_path), cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("mlflow run:") == 1  # only rank 0 reports and logs

    # torchrun gives each rank one intra-op thread (OMP_NUM_THREADS=1); the reference must too, or float sums split
    # across threads differ in the last bits
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        one = train(experiment, "vpgc", synth, tmp_path / "one")
    finally:
        torch.set_num_threads(threads)
    two = load_file(tmp_path / "two" / "final" / WEIGHTS_FILE)
    reference = load_file(one.final / WEIGHTS_FILE)
    assert sorted(two) == sorted(reference)
    assert reference["vpgc.output_proj.weight"].abs().sum() > 0
    for key in reference:
        torch.testing.assert_close(two[key], reference[key], rtol=1e-6, atol=1e-7)


@pytest.mark.slow
def test_resume_after_sigkill_reaches_the_uninterrupted_weights(synth, tmp_path):
    # Stage align: the Q-Former trains with dropout, so the RNG state must come back too, not only the weights.
    steps = 30
    section = {"heldout": 2, "align": stage(steps, {"SynthCaption": 2}, checkpoint_every=1, keep_checkpoints=3)}
    experiment = write_experiment(tmp_path / "exp.yaml", train=section)
    out = tmp_path / "killed"
    args = cli("--config", experiment, "--stage", "align", "--data", synth, "--out", out)
    env = environment(tmp_path)
    victim = subprocess.Popen([sys.executable, *args], env=env, cwd=tmp_path, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True)  # fmt: skip
    deadline = time.monotonic() + 120
    while not any(out.glob("step-*/state.json")) and victim.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait()
    assert victim.returncode == -signal.SIGKILL, victim.stderr.read()[-2000:]
    assert not (out / "final").exists()
    killed_at = max(int(p.name.split("-")[1]) for p in out.glob("step-*"))
    assert killed_at < steps

    resumed = subprocess.run([sys.executable, *args, "--resume"], env=env, cwd=tmp_path, capture_output=True,
                             text=True)  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert '"resumed_from": ' in resumed.stdout and '"resumed_from": null' not in resumed.stdout
    # what the loader yielded over the whole run, the steps before the kill included (metrics/train-*.json)
    assert json.loads(resumed.stdout.split("mlflow run:")[0])["samples_seen"] == {"SynthCaption": 2 * steps}

    uninterrupted = train(experiment, "align", synth, tmp_path / "uninterrupted")
    reference = load_file(uninterrupted.final / WEIGHTS_FILE)
    weights = load_file(out / "final" / WEIGHTS_FILE)
    assert sorted(weights) == sorted(reference)
    for key in reference:
        assert torch.equal(weights[key], reference[key]), key
