"""The Hugging Face VLM families researchers evaluate, each a tiny random model built offline with its own config,
processor and chat-template shape (`hf_tiny`), run through `demonlab evaluate` on multi-image DEMON tasks: each is
fed the way its processor wants (found by probing, recorded in the bundle), batched answers equal one-by-one
answers, every prompt carries its own images' tokens in DEMON's order, and a failing batch costs only its failures.
"""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path
from typing import Any

import pytest
import torch
import transformers
from evaluate_helpers import mini_normalized
from hf_tiny import FAMILIES, save_tiny
from vpgc_tiny import tiny_config

from components.cli import main
from components.demon.normalize import load_samples
from components.evaluation.adapters import HFAdapter, load_adapter
from components.evaluation.inference import build_requests, select_samples
from components.vpgc.backbones import load_tokenizer

TASKS = ["AESOP", "NLVR2", "TQA", "VIST", "DocVQA"]  # 2 to 8 images per prompt
# (images, placement) as each family's processor and template ask; all take one list of images per prompt.
FEEDING = {
    "idefics3": "interleaved",
    "llava_next": "fallback",
    "gemma3": "interleaved",
    "qwen2_vl": "interleaved",
    "qwen2_5_vl": "interleaved",
    "llava_onevision": "fallback",
}
# The token that opens each image's block once in the expanded prompt (LLaVA: a run of <image> tokens).
IMAGE_BLOCK = {
    "idefics3": "<global-img>",
    "llava_next": "<image>",
    "gemma3": "<start_of_image>",
    "qwen2_vl": "<|vision_start|>",
    "qwen2_5_vl": "<|vision_start|>",
    "llava_onevision": "<image>",
}

# Families with a fixed number of tokens per image: Gemma3's pooled 2x2 patches; LLaVA-OneVision's multi-image mode
# (2x2 patches + a newline, no tiling) that it takes only when told which prompt owns which images.
TOKENS_PER_IMAGE = {"gemma3": ("<image_soft_token>", 4), "llava_onevision": ("<image>", 5)}


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    """Every family saved once: a folder each, as `save_pretrained` writes a downloaded model."""
    root = tmp_path_factory.mktemp("hf-families")
    load_tokenizer(tiny_config().llm).save_pretrained(root / "tokenizer")  # SmolLM2's, read from GGUF once
    return {family: save_tiny(family, root / "tokenizer", root / family) for family in FAMILIES}


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return mini_normalized(tmp_path_factory.mktemp("mini"), per_task=1)


def run(model: Path, data: Path, out: Path, *options: str) -> dict[str, Any]:
    """`demonlab evaluate` on TASKS (default batch size, 3 new tokens, no cache): results.json, answers by uid and
    what it printed (how the run went: batches, retries)."""
    argv = ["evaluate", "--model", f"hf:{model}", "--data", str(data), "--out", str(out), "--tasks", ",".join(TASKS),
            "--max-new-tokens", "3", "--no-cache", *options]  # fmt: skip
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main(argv) == 0
    results = json.loads((out / "results.json").read_text())
    rows = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    return {"results": results, "rows": {row["uid"]: row for row in rows}, "printed": printed.getvalue()}


def in_order(text: str, pieces: list[str]) -> bool:
    """Whether `pieces` occur in `text` one after another."""
    at = 0
    for piece in pieces:
        at = text.find(piece, at)
        if at < 0:
            return False
        at += len(piece)
    return True


def blocks(ids: torch.Tensor, token: int) -> int:
    """Runs of `token` in `ids`."""
    hits = (ids == token).int()
    return int(hits[0]) + int(((hits[1:] - hits[:-1]) == 1).sum())


@pytest.mark.parametrize("family", list(FAMILIES))
def test_family_evaluates_batched_like_one_by_one_and_records_its_feeding(family, models, data, tmp_path):
    batched = run(models[family], data, tmp_path / "batched")
    single = run(models[family], data, tmp_path / "single", "--batch-size", "1")
    results = batched["results"]
    assert results["counts"]["answered"] == len(TASKS) and "batches: 1," in batched["printed"]  # one mixed batch
    assert len({row["n_images"] for row in batched["rows"].values()}) >= 3
    assert all(row["error"] is None and isinstance(row["output"], str) for row in batched["rows"].values())
    assert {u: r["output"] for u, r in batched["rows"].items()} == {u: r["output"] for u, r in single["rows"].items()}
    feeding = results["model"]["config"]["feeding"]
    assert feeding == {"images": "nested", "placement": FEEDING[family],
                       "template_interleaves": FEEDING[family] == "interleaved", "batches": True}  # fmt: skip


@pytest.mark.parametrize("family", list(FAMILIES))
def test_every_prompt_carries_its_own_images_in_demon_order(family, models, data):
    adapter = load_adapter(f"hf:{models[family]}")
    assert isinstance(adapter, HFAdapter) and adapter.family == family
    samples, root = load_samples(data)
    requests = [request for _, request in build_requests(select_samples(samples, TASKS, None, None), root)]
    loaded = [adapter.load(adapter.encode(request)) for request in requests]
    token = adapter.processor.image_token
    for item in loaded:
        parts, text = item.encoded.request.parts, item.encoded.payload
        n = sum(p["type"] == "image" for p in parts)
        if adapter.interleaved:  # each image between the texts around it
            pieces = [token if p["type"] == "image" else p["text"].strip() for p in parts if p.get("text", "x").strip()]
        else:  # every image first, then the text with a marker where each image was
            pieces = [token] * n + [f"[Image {k}]" for k in range(1, n + 1)]
        assert in_order(text, pieces) and text.count(token) == n
    batch = adapter.inputs(loaded)
    block = adapter.tokenizer.convert_tokens_to_ids(IMAGE_BLOCK[family])
    for row, mask, item in zip(batch["input_ids"], batch["attention_mask"], loaded, strict=True):
        ids = row[mask.bool()]
        assert blocks(ids, block) == len(item.pixels)  # one block per image given
        assert torch.equal(ids, adapter.inputs([item])["input_ids"][0])  # the tokens it has alone
        if family in TOKENS_PER_IMAGE:
            name, count = TOKENS_PER_IMAGE[family]
            assert (ids == adapter.tokenizer.convert_tokens_to_ids(name)).sum() == count * len(item.pixels)


def test_an_interleaving_family_takes_the_fallback_when_asked(models, tmp_path):
    from components.demon.schema import to_parts
    from components.evaluation.adapters import Request

    auto = load_adapter(f"hf:{models['gemma3']}")
    first = load_adapter(f"hf:{models['gemma3']}", image_placement="first")
    request = Request("x/core/0", to_parts("Before {image#1} after {image#2}", ["a.png", "b.png"]), tmp_path)
    assert "<start_of_image><start_of_image>Before [Image 1] after [Image 2]" in first.encode(request).payload
    assert "Before <start_of_image> after <start_of_image>" in auto.encode(request).payload
    assert first.feeding.to_dict()["placement"] == "fallback" and first.fingerprint != auto.fingerprint


def test_a_processor_that_fails_on_batches_still_yields_a_bundle(models, data, tmp_path, monkeypatch):
    """Larger batches than the probe's raise (as a processor that cannot take some mix of prompts would), and a
    prompt with 3 images raises even alone: the run retries the batch one sample at a time, answers the others as
    one-by-one would, and records the one failure with its reason."""
    original = transformers.Gemma3Processor.__call__

    def flaky(self, images=None, text=None, **kwargs):
        if len(text) > 2:
            raise RuntimeError("this processor cannot batch these prompts")
        if any(t.count("<start_of_image>") == 3 for t in text):
            raise ValueError("three images are too many")
        return original(self, images=images, text=text, **kwargs)

    reference = run(models["gemma3"], data, tmp_path / "reference", "--batch-size", "1")["rows"]
    monkeypatch.setattr(transformers.Gemma3Processor, "__call__", flaky)
    bundle = run(models["gemma3"], data, tmp_path / "flaky")
    rows, results = bundle["rows"], bundle["results"]
    failed = [uid for uid, row in rows.items() if row["n_images"] == 3]
    assert len(failed) == 1 and results["counts"]["answered"] == len(TASKS) - 1
    assert rows[failed[0]]["error"] == "the model failed on this sample (ValueError: three images are too many)"
    assert {u: r["output"] for u, r in rows.items() if u not in failed} == {
        u: r["output"] for u, r in reference.items() if u not in failed
    }
    assert "batches retried one sample at a time: 1 " in bundle["printed"]


def test_the_probe_falls_back_to_flat_images_and_to_one_prompt_at_a_time(models, monkeypatch):
    original = transformers.LlavaNextProcessor.__call__

    def flat_only(self, images=None, text=None, **kwargs):
        if images and isinstance(images[0], list):
            raise ValueError("nested lists are not supported")
        return original(self, images=images, text=text, **kwargs)

    monkeypatch.setattr(transformers.LlavaNextProcessor, "__call__", flat_only)
    assert load_adapter(f"hf:{models['llava_next']}").feeding.to_dict()["images"] == "flat"

    def one_only(self, images=None, text=None, **kwargs):
        if len(text) > 1:
            raise ValueError("one prompt at a time")
        return original(self, images=images, text=text, **kwargs)

    monkeypatch.setattr(transformers.LlavaNextProcessor, "__call__", one_only)
    assert load_adapter(f"hf:{models['llava_next']}").feeding.to_dict()["batches"] is False


def test_a_missing_video_library_is_named_in_one_line(models, data, tmp_path, monkeypatch, capsys):
    """Where torchvision is installed, an import error is not ours to work around: it names what to install."""
    monkeypatch.setattr(transformers.utils, "is_torchvision_available", lambda: True)
    argv = ["evaluate", "--model", f"hf:{models['qwen2_vl']}", "--data", str(data), "--out", str(tmp_path / "x")]
    assert main(argv) == 2
    error = capsys.readouterr().err.strip()
    assert (
        error.count("\n") == 0
        and "a library it needs is missing: Qwen2VLVideoProcessor requires the Torchvision" in error
    )
