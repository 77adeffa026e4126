"""Precision follows the hardware (components/vpgc/precision.py): bf16 frozen backbones where the CPU has bf16 matrix
units, float32 elsewhere (forced here), float32 masters for what trains, and bf16 losses within a pinned tolerance
of float32 ones."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from train_helpers import stage, write_experiment, write_synth_folder
from vpgc_tiny import tiny_model

from components.training.recipe import train
from components.vpgc import precision
from components.vpgc.precision import resolve_precision

# |bf16 - fp32| / fp32 of a held-out loss after the same training (measured: 0.002% on the tiny test model; the
# embedded default's figures are in docs/benchmarks.md "Precision").
LOSS_TOLERANCE = 0.005


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory):
    return write_synth_folder(tmp_path_factory.mktemp("synth"), differences=12, captions=12)


def test_auto_follows_the_hardware(monkeypatch):
    cpu = torch.device("cpu")
    assert resolve_precision("float32", cpu) == torch.float32
    assert resolve_precision("bfloat16", cpu) == torch.bfloat16
    monkeypatch.setattr(precision, "has_bf16_matrix_units", lambda device: True)
    assert resolve_precision("auto", cpu) == torch.bfloat16
    monkeypatch.setattr(precision, "has_bf16_matrix_units", lambda device: False)
    assert resolve_precision("auto", cpu) == torch.float32


def test_bf16_stores_frozen_backbones_once_and_keeps_float32_masters():
    model = tiny_model().use_precision(torch.bfloat16)
    assert {p.dtype for p in model.llm.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in model.vision.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in model.vpg.parameters()} == {torch.float32}  # trained by align; checkpoints stay exact
    assert {p.dtype for p in model.vpgc.parameters()} == {torch.float32}


def test_a_machine_without_bf16_units_trains_in_float32(synth, tmp_path, monkeypatch):
    monkeypatch.setattr(precision, "has_bf16_matrix_units", lambda device: False)
    experiment = write_experiment(tmp_path / "exp.yaml", train={"heldout": 2, "vpgc": stage(2, {"SynthCaption": 2})})
    assert train(experiment, "vpgc", synth, tmp_path / "out").precision == "float32"


def test_bf16_training_loses_no_quality(synth, tmp_path):
    results = {}
    for name in ("float32", "bfloat16"):
        section = {"heldout": 4, "precision": name, "vpgc": stage(6, {"SynthDifference": 2, "SynthCaption": 2})}
        experiment = write_experiment(tmp_path / f"{name}.yaml", train=section)
        results[name] = train(experiment, "vpgc", synth, tmp_path / name)
        assert results[name].precision == name
    fp32, bf16 = results["float32"], results["bfloat16"]
    for key in ("heldout_loss_before", "heldout_loss_after", "heldout_loss_swapped"):
        a, b = getattr(fp32, key), getattr(bf16, key)
        assert abs(b - a) / a < LOSS_TOLERANCE, (key, a, b)


@pytest.mark.parametrize(("units", "chosen"), [(True, "bfloat16"), (False, "float32")])
def test_check_prints_the_precision_this_machine_gets(monkeypatch, units, chosen):
    from components.check import check_experiment

    monkeypatch.setattr(precision, "has_bf16_matrix_units", lambda device: units)
    plan, problems = check_experiment(Path(__file__).resolve().parents[1] / "experiments" / "tiny.yaml")
    assert not problems
    assert f"train auto -> {chosen}, eval auto -> {chosen}" in plan[-1]
