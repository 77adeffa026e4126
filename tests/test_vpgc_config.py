"""Experiment configs and `demonlab model summary`: counts on the meta device, validation errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from vpgc_tiny import tiny_dict

from components.errors import UserError
from components.vpgc.config import load_config, model_config_from_dict
from components.vpgc.model import VPGCModel, parameter_counts

ROOT = Path(__file__).resolve().parents[1]
PAPER_TRAINABLE_7B = 32 * 768 + (4096 * 768 + 768) + (768 * 4096 + 4096)  # = 6,320,896


@pytest.mark.parametrize("name", ["vicuna7b", "llama2-7b"])
def test_7b_configs_train_exactly_the_papers_vpgc_parameters(name):
    config = load_config(ROOT / "experiments" / f"{name}.yaml")
    assert config.layer == 16  # L/2 of 32
    model = VPGCModel.from_config(config, device="meta")  # no weights, no memory
    assert model.llm.model.embed_tokens.weight.is_meta
    counts = parameter_counts(model)
    assert PAPER_TRAINABLE_7B == 6_320_896
    assert sum(c["trainable"] for c in counts.values()) == counts["vpgc"]["trainable"] == 6_320_896
    assert {n.split(".")[0] for n, p in model.named_parameters() if p.requires_grad} == {"vpgc"}
    assert counts["llm"]["total"] in (6_738_415_616, 6_738_423_808)  # LLaMA-2 7B; Vicuna v0 has one more token
    assert counts["vision"]["total"] == 985_952_256  # EVA ViT-g, 39 blocks + ln_vision


def test_tiny_default_counts():
    config = load_config(ROOT / "experiments" / "tiny.yaml")
    assert config.layer == 15 and config.llm.num_layers == 30
    counts = parameter_counts(VPGCModel.from_config(config, device="meta"))
    # queries 32x256 + Linear_1 576x256+256 + Linear_2 256x576+576 (docs/model.md)
    assert counts["vpgc"] == {"total": 303_936, "trainable": 303_936}
    assert counts["llm"]["total"] == 134_515_008  # SmolLM2-135M, tied embeddings counted once


def test_freeze_vocabulary_switches_the_vpg_on():
    config = model_config_from_dict({**tiny_dict(), "freeze": {"vpg": "trainable"}})
    assert config.freeze == {"llm": "frozen", "vision": "frozen", "vpg": "trainable", "vpgc": "trainable"}
    model = VPGCModel.from_config(config, device="meta")
    assert all(p.requires_grad for p in model.vpg.parameters())
    assert not any(p.requires_grad for p in model.llm.parameters())


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"vpgc_layer": 4}, r"model.vpgc_layer: must be a block of the LLM, 1..3"),
        ({"vpgc_lyer": 2}, r"model.vpgc_lyer: unknown key \(did you mean vpgc_layer\?\)"),
        ({"freeze": {"llm": "maybe"}}, "model.freeze.llm: expected one of 'frozen', 'trainable'"),
        ({"vision": {**tiny_dict()["vision"], "kind": "resnet"}}, "model.vision.kind: expected one of"),
        ({"vpg": {**tiny_dict()["vpg"], "qformer": {"encoder_hidden_size": 1408}}}, "encoder_hidden_size: must match"),
        ({"prompt": {"template": "alpaca"}}, "model.prompt.template: expected one of"),
    ],
)
def test_bad_configs_say_what_is_wrong(change, message):
    with pytest.raises(UserError, match=message):
        model_config_from_dict({**tiny_dict(), **change})


def test_missing_or_sectionless_config_file(tmp_path):
    with pytest.raises(UserError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    (tmp_path / "x.yaml").write_text("eval: {limit: 3}\n")
    with pytest.raises(UserError, match="no `model:` section"):
        load_config(tmp_path / "x.yaml")


def test_cli_model_summary_json():
    result = subprocess.run(
        [sys.executable, "-m", "components.cli", "model", "summary", "--config", "experiments/vicuna7b.yaml", "--json"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["trainable_parameters"] == 6_320_896
    assert set(report["components"]) == {"llm", "vision", "vpg", "vpgc"}
    assert report["total_parameters"] == sum(c["total"] for c in report["components"].values())


def test_cli_reports_a_bad_config_without_a_traceback(tmp_path):
    (tmp_path / "bad.yaml").write_text("model: {name: x}\n")
    result = subprocess.run(
        [sys.executable, "-m", "components.cli", "model", "summary", "--config", str(tmp_path / "bad.yaml")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert (
        result.returncode == 2
        and "model.llm: required (a mapping), got nothing" in result.stderr
        and "Traceback" not in result.stderr
    )
