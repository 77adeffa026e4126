"""The embedded default with its real pretrained backbones (SmolLM2-135M GGUF + EfficientNet-Lite0)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from vpgc_tiny import write_images

from components.demon.schema import to_parts
from components.vpgc.config import load_config
from components.vpgc.generation import GenerationSettings
from components.vpgc.model import VPGCModel
from components.vpgc.prompts import Turn

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def test_embedded_default_end_to_end(tmp_path):
    torch.manual_seed(0)
    model = VPGCModel.from_config(load_config(ROOT / "experiments" / "tiny.yaml"))
    paths = write_images(tmp_path, 3)
    assert model.encode_images(model.load_pixels(paths)).shape == (3, 49, 1280)

    convs = [
        [Turn(to_parts("{image#1}{image#2} What is different between the two images?", paths[:2]))],
        [Turn(to_parts("What is the capital of France?", []))],
        [Turn(to_parts("Describe {image#1} in one sentence.", paths[2:]))],
    ]
    settings = GenerationSettings(max_new_tokens=12)
    calls = model.hook.calls
    batched = model.generate(convs, settings=settings)
    assert model.hook.calls == calls + 1  # one prefill, one VPG-C pass
    assert "Paris" in batched[1]  # the real LLM answers
    assert batched == [model.generate([c], settings=settings)[0] for c in convs]
    model.vpgc_enabled = False
    assert model.generate(convs, settings=settings) == batched  # zero-initialised VPG-C changes nothing


def chat(*args: str) -> subprocess.CompletedProcess:
    """`demonlab chat` on the embedded default, as a user runs it."""
    command = [sys.executable, "-m", "components.cli", "chat", "--config", "experiments/tiny.yaml", *args]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_chat_command(tmp_path):
    paths = write_images(tmp_path, 2)
    result = chat("--image", paths[0], "--image", paths[1], "--max-new-tokens", "8", "Compare {image#1} and {image#2}.")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip()
    missing = chat("--image", "nope.jpg", "What is {image#1}?")
    assert missing.returncode == 2 and "nope.jpg" in missing.stderr
