"""MLflow side of training: params, per-step and system metrics, the loss curve, the registered model and its
download; the Prefect flow's `__main__` reading params.yaml."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
import torch
import yaml
from mlflow.tracking import MlflowClient
from safetensors.torch import load_file
from train_helpers import stage, write_experiment, write_synth_folder

from components.cli import main
from components.errors import UserError
from components.tracking.models import download_checkpoint
from components.tracking.runs import configure
from components.training.recipe import train
from components.vpgc.checkpoints import CONFIG_FILE, TRAINING_FILE, WEIGHTS_FILE
from components.vpgc.model import VPGCModel

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_synth_folder(tmp_path_factory.mktemp("synth"), differences=12, captions=12)


def test_cli_tracks_the_run_and_registers_a_loadable_model(synth, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("DEMONLAB_WORKSPACE", str(tmp_path))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "0.2")  # the run is shorter than the default 2 s
    experiment = write_experiment(tmp_path / "exp.yaml")
    args = ["train", "--config", str(experiment), "--data", str(synth), "--register-as", "vpgc-test"]
    assert main([*args, "--stage", "align", "--out", str(tmp_path / "align")]) == 0
    assert main([*args, "--stage", "vpgc", "--out", str(tmp_path / "vpgc"), "--init", str(tmp_path / "align")]) == 0
    printed = capsys.readouterr().out
    assert "model: models:/vpgc-test@vpgc" in printed
    run_id = printed.rsplit("mlflow run: ", 1)[1].split()[0]

    configure()
    client = MlflowClient()
    run = client.get_run(run_id)
    assert run.data.params["train.lr"] == "0.001" and run.data.params["stage"] == "vpgc"
    assert run.data.tags["demonlab.stage"] == "train-vpgc"
    assert [m.step for m in client.get_metric_history(run_id, "loss")] == [1, 2, 3, 4]
    assert {"lr", "grad_norm", "samples_per_s", "heldout_loss", "train_seconds", "train_samples_per_s"} <= set(
        run.data.metrics
    )
    assert run.data.params["train.resumed_from"] == "None"
    # summary.json holds what the run made; how it went (seconds, run id, model URI) is MLflow's and the printout's
    summary = json.loads((tmp_path / "vpgc" / "summary.json").read_text())
    assert set(summary) == {
        "stage",
        "final",
        "steps",
        "heldout_loss_before",
        "heldout_loss_after",
        "heldout_loss_swapped",
    }
    assert [m.step for m in client.get_metric_history(run_id, "heldout_loss")] == [0, 4]
    assert any(name.startswith("system/") for name in run.data.metrics), sorted(run.data.metrics)
    assert "loss_curve.png" in [f.path for f in client.list_artifacts(run_id)]

    versions = {v.version: v for v in client.search_model_versions("name='vpgc-test'")}
    assert len(versions) == 2 and client.get_model_version_by_alias("vpgc-test", "vpgc").run_id == run_id
    folder = download_checkpoint("models:/vpgc-test@vpgc", tmp_path / "download")
    assert sorted(p.name for p in folder.iterdir()) == [CONFIG_FILE, TRAINING_FILE, WEIGHTS_FILE]  # no backbones
    weights = load_file(folder / WEIGHTS_FILE)
    assert {k.split(".")[0] for k in weights} == {"vpg", "vpgc"}
    assert yaml.safe_load((folder / CONFIG_FILE).read_text())["model"]["llm"]["tokenizer"]  # names the backbone
    model = VPGCModel.from_checkpoint(folder)
    for key, tensor in weights.items():
        assert torch.equal(model.state_dict()[key], tensor)
    runs_uri = f"runs:/{run_id}/loss_curve.png"
    with pytest.raises(UserError, match="expected one checkpoint folder"):
        download_checkpoint(runs_uri, tmp_path / "png")
    with pytest.raises(UserError, match="cannot download"):
        download_checkpoint("models:/no-such-model@vpgc", tmp_path / "none")
    mlflow.set_tracking_uri(None)


@pytest.mark.slow
def test_flow_main_reads_params_yaml(synth, tmp_path, prefect_api):
    experiments = tmp_path / "experiments"
    experiments.mkdir()
    write_experiment(experiments / "tiny-test.yaml", train={
        "heldout": 2, "align": stage(2, {"SynthCaption": 2}), "vpgc": stage(2, {"SynthDifference": 2})})  # fmt: skip
    params = {
        "experiment": "tiny-test",
        "synth": {"captions": str(synth), "out": str(synth)},
        "train": {"out": "runs", "max_steps": 1, "variants": {"synthetic": {}}, "register_as": None},
    }
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PREFECT_API_URL": prefect_api, "DEMONLAB_WORKSPACE": str(tmp_path)}
    env.pop("MLFLOW_TRACKING_URI", None)
    for stage_args in (["align"], ["vpgc", "--variant", "synthetic"]):
        done = subprocess.run([sys.executable, "-m", "flows.train", *stage_args], cwd=tmp_path, env=env,
                              capture_output=True, text=True)  # fmt: skip
        assert done.returncode == 0, done.stderr[-3000:]
    summary = yaml.safe_load((tmp_path / "runs/vpgc-synthetic/summary.json").read_text())
    assert summary["steps"] == 1
    # the DVC metrics say what each variant trained on: the loader's yield per task (here 1 step of the mix)
    metrics = json.loads((tmp_path / "metrics/train-vpgc-synthetic.json").read_text())
    assert metrics["samples_seen"] == {"SynthDifference": 2}
    # vpgc started from the align stage's output: its final checkpoint carries that VPG.
    aligned = load_file(tmp_path / "runs/backbone/final" / WEIGHTS_FILE)
    final = load_file(tmp_path / "runs/vpgc-synthetic/final" / WEIGHTS_FILE)
    assert all(torch.equal(final[k], v) for k, v in aligned.items())


def test_captions_variant_trains_on_captions_only(synth, tmp_path, monkeypatch):
    """The ablation's captions-only variant: its override *replaces* the experiment's mix (a merge kept the
    synthetic pairs), which the loader's yield, the held-out set and MLflow's `train.mix` all show."""
    monkeypatch.setenv("DEMONLAB_WORKSPACE", str(tmp_path))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    experiment = write_experiment(tmp_path / "exp.yaml")  # vpgc mix: SynthDifference 2 + SynthCaption 2
    configure()
    variants = {"synthetic": {}, "captions": {"mix": {"SynthCaption": 4}}}
    seen, params = {}, {}
    for name, variant in variants.items():
        with mlflow.start_run() as run:
            result = train(experiment, "vpgc", synth, tmp_path / name, max_steps=2,
                           overrides={"train": {"vpgc": variant}})  # fmt: skip
        seen[name] = result.samples_seen
        params[name] = MlflowClient().get_run(run.info.run_id).data.params
    assert seen == {"synthetic": {"SynthCaption": 4, "SynthDifference": 4}, "captions": {"SynthCaption": 8}}
    assert params["captions"]["train.mix"] == "{'SynthCaption': 4}"
    # held-out samples come from the variant's own tasks: heldout (2) per task of its mix
    assert params["captions"]["train.data_sizes"] == "{'SynthCaption': 10, 'heldout': 2}"
    assert params["synthetic"]["train.data_sizes"] == "{'SynthDifference': 10, 'SynthCaption': 10, 'heldout': 4}"
    mlflow.set_tracking_uri(None)
