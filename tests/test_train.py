"""The training recipe in one process: settings, the data stream, align -> vpgc checkpoints, errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from train_helpers import stage, write_experiment, write_synth_folder
from vpgc_tiny import tiny_dict

from components.cli import main
from components.errors import UserError
from components.experiment import load_experiment
from components.training.config import mix_counts, train_settings_from_dict
from components.training.data import TrainData
from components.training.recipe import lr_factor, train
from components.vpgc.checkpoints import WEIGHTS_FILE
from components.vpgc.model import VPGCModel

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_synth_folder(tmp_path_factory.mktemp("synth"), differences=12, captions=12)


@pytest.mark.parametrize("name", ["tiny", "vicuna7b", "llama2-7b"])
def test_every_experiment_has_a_valid_train_section(name):
    path = ROOT / "experiments" / f"{name}.yaml"
    settings = train_settings_from_dict(load_experiment(path)["train"], f"{path}: train")
    assert settings.vpgc is not None and settings.vpgc.betas == (0.9, 0.999)
    if name != "tiny":  # the paper's recipe
        assert (settings.vpgc.steps, settings.vpgc.lr, settings.vpgc.warmup_steps) == (18000, 2e-5, 2000)
        assert mix_counts(settings.vpgc.mix) == {"SynthDifference": 24, "SynthCaption": 64}
        assert settings.vpgc.weight_decay == 0.05 and settings.align is None


def test_settings_errors_name_the_key():
    good = {"vpgc": stage(4, {"SynthCaption": 2})}
    with pytest.raises(UserError, match=r"train.sead: unknown key \(did you mean seed\?\)"):
        train_settings_from_dict({**good, "sead": 1})
    with pytest.raises(UserError, match=r"train.vpgc.learning_rate: unknown key"):
        train_settings_from_dict({"vpgc": {**good["vpgc"], "learning_rate": 1e-4}})
    with pytest.raises(UserError, match=r"train.vpgc.mix.SynthCaption: expected an integer >= 1"):
        train_settings_from_dict({"vpgc": stage(4, {"SynthCaption": 0})})
    with pytest.raises(UserError, match="train.precision: expected one of"):
        train_settings_from_dict({**good, "precision": "fp8"})


def test_schedule_warms_up_then_decays_to_min_lr():
    settings = train_settings_from_dict(
        {"vpgc": stage(10, {"SynthCaption": 1}, lr=1.0, min_lr=0.1, warmup_steps=2)}
    ).vpgc
    factors = [lr_factor(s, settings, 10, 2) for s in range(11)]
    assert factors[:3] == [0.5, 1.0, 1.0] and factors[-1] == pytest.approx(0.1)
    assert all(a >= b for a, b in zip(factors[1:], factors[2:], strict=False))


def test_data_stream_is_deterministic_mixed_and_holds_out(synth):
    mix = {"SynthDifference": 3, "SynthCaption": 5}
    data, again = TrainData(synth, mix, heldout=2, seed=0), TrainData(synth, mix, heldout=2, seed=0)
    assert [e.uid for e in data.global_batch(7)] == [e.uid for e in again.global_batch(7)]
    assert [e.crop_seed for e in data.global_batch(7)] == [e.crop_seed for e in again.global_batch(7)]
    batch = data.global_batch(0)
    assert sorted(e.task for e in batch) == ["SynthCaption"] * 5 + ["SynthDifference"] * 3
    heldout = {e.uid for e in data.heldout_examples()}
    assert len(heldout) == 4 and all(e.crop_seed is None for e in data.heldout_examples())
    # One epoch of SynthCaption (10 training rows, 5 per step) = steps 0-1: every row once, none held out.
    seen = [e.uid for s in (0, 1) for e in data.global_batch(s) if e.task == "SynthCaption"]
    assert len(set(seen)) == 10 and not set(seen) & heldout
    first = batch[0]
    assert first.target and first.conversation[0].user[-1]["type"] in ("image", "text")
    with pytest.raises(UserError, match=r"names task\(s\) \['Nope'\]"):
        TrainData(synth, {"Nope": 1}, heldout=2, seed=0)


def test_align_then_vpgc_give_self_contained_checkpoints(synth, tmp_path):
    experiment = write_experiment(tmp_path / "exp.yaml")
    align = train(experiment, "align", synth, tmp_path / "align")
    assert align.heldout_loss_after < align.heldout_loss_before
    aligned = load_file(align.final / WEIGHTS_FILE)
    assert aligned and all(k.startswith("vpg.") for k in aligned)

    vpgc = train(experiment, "vpgc", synth, tmp_path / "vpgc", init=tmp_path / "align")
    assert vpgc.heldout_loss_after < vpgc.heldout_loss_before
    weights = load_file(vpgc.final / WEIGHTS_FILE)
    assert {k.split(".")[0] for k in weights} == {"vpg", "vpgc"}  # our VPG travels along; no backbone weights
    for key, tensor in aligned.items():
        assert torch.equal(weights[key], tensor), key  # the VPG stayed frozen in stage vpgc
    assert weights["vpgc.output_proj.weight"].abs().sum() > 0

    rebuilt = VPGCModel.from_checkpoint(vpgc.final)
    state = rebuilt.state_dict()
    for key, tensor in weights.items():
        assert torch.equal(state[key], tensor), key
    assert rebuilt.vpgc_enabled and not rebuilt.config.trainable("vpg")
    assert sorted(p.name for p in (tmp_path / "vpgc").iterdir()) == [
        "final", "loss_curve.png", "step-000002", "summary.json"
    ]  # fmt: skip


def test_gradient_accumulation_matches_one_big_batch(synth, tmp_path):
    finals = []
    for micro in (1, 4):
        # float32: the recipe's arithmetic is exact there; in bf16 another padding width rounds differently
        train_section = {
            "heldout": 2,
            "precision": "float32",
            "vpgc": stage(2, {"SynthDifference": 2, "SynthCaption": 2}, micro_batch=micro),
        }
        experiment = write_experiment(tmp_path / f"exp{micro}.yaml", train=train_section)
        finals.append(load_file(train(experiment, "vpgc", synth, tmp_path / f"m{micro}").final / WEIGHTS_FILE))
    for key in finals[0]:
        torch.testing.assert_close(finals[0][key], finals[1][key], rtol=1e-5, atol=1e-6)


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(synth, tmp_path):
    experiment = write_experiment(tmp_path / "exp.yaml")
    blow_up = {"train": {"align": {"lr": 1e30, "warmup_steps": 0, "checkpoint_every": 1}}}
    with pytest.raises(UserError, match=r"step 1: the loss is nan.*step-000001"):
        train(experiment, "align", synth, tmp_path / "out", overrides=blow_up)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["step-000001"]


def test_cli_stops_bad_configs_with_a_clear_message(synth, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("DEMONLAB_WORKSPACE", str(tmp_path))  # the MLflow store of the failed runs
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    broken = tiny_dict()
    broken["llm"]["source"] = str(tmp_path / "no-such-model")
    cases = [
        (write_experiment(tmp_path / "missing.yaml", model=broken), "align", "no-such-model"),
        (write_experiment(tmp_path / "typo.yaml", train={"vpgc": {**stage(2, {"SynthCaption": 2}), "lr_max": 1}}),
         "vpgc", "unknown key"),
        (write_experiment(tmp_path / "noalign.yaml", train={"vpgc": stage(2, {"SynthCaption": 2})}), "align",
         "no `train.align:` section"),
    ]  # fmt: skip
    for experiment, stage_name, message in cases:
        args = ["train", "--config", str(experiment), "--stage", stage_name, "--data", str(synth)]
        assert main([*args, "--out", str(tmp_path / "out")]) == 2
        assert message in capsys.readouterr().err
