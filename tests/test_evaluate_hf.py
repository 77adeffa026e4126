"""Hugging Face models through `hf:<folder>`: a tiny randomly initialised LLaVA (CLIP vision tower + LLaMA decoder,
the real classes) and its processor, saved to a temp folder and loaded back by AutoProcessor and
AutoModelForImageTextToText, as a downloaded model would be."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from evaluate_helpers import mini_normalized
from transformers import (
    CLIPImageProcessorPil,
    CLIPVisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
)
from vpgc_tiny import tiny_config

from components.demon.schema import to_parts
from components.errors import UserError
from components.evaluation.adapters import HFAdapter, Request, load_adapter, render_hf_content
from components.evaluation.bundle import read_bundle
from components.evaluation.evaluate import evaluate
from components.evaluation.settings import EvalSettings
from components.vpgc.backbones import load_tokenizer

# LLaVA-1.5's template shape (llava-hf): every image of the turn first, as <image>, then every text item.
TEMPLATE = (
    "{% for message in messages %}{{ message['role'].upper() }}: "
    "{% for item in message['content'] | selectattr('type', 'equalto', 'image') %}<image>\n{% endfor %}"
    "{% for item in message['content'] | selectattr('type', 'equalto', 'text') %}{{ item['text'] }}{% endfor %}"
    "\n{% endfor %}{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)
TASKS = ["AESOP", "NLVR2", "TQA", "VIST", "DocVQA"]


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def llava(tmp_path_factory) -> Path:
    """A tiny LLaVA folder (model + processor with a chat template), as `save_pretrained` writes it."""
    folder = tmp_path_factory.mktemp("tiny-llava")
    tokenizer = load_tokenizer(tiny_config().llm)  # SmolLM2's real tokenizer, plus LLaVA's image token
    tokenizer.add_special_tokens({"additional_special_tokens": ["<image>"]})
    processor = LlavaProcessor(
        image_processor=CLIPImageProcessorPil(size={"shortest_edge": 28}, crop_size={"height": 28, "width": 28}),
        tokenizer=tokenizer,
        chat_template=TEMPLATE,
        patch_size=14,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
    )
    vision = CLIPVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=28, patch_size=14
    )
    text = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    config = LlavaConfig(
        vision_config=vision, text_config=text, image_token_index=tokenizer.convert_tokens_to_ids("<image>")
    )
    torch.manual_seed(0)
    LlavaForConditionalGeneration(config).save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return mini_normalized(tmp_path_factory.mktemp("mini"), per_task=1)


def test_fallback_puts_images_first_with_markers():
    parts = to_parts("Compare {image#1} and {image#2}: which is red?", ["a.png", "b.png"])
    content, images = render_hf_content(parts, interleaved=False)
    assert content == [
        {"type": "image"},
        {"type": "image"},
        {"type": "text", "text": "Compare [Image 1] and [Image 2]: which is red?"},
    ]
    assert images == ["a.png", "b.png"]
    content, _ = render_hf_content(parts, interleaved=True)
    assert [c["type"] for c in content] == ["text", "image", "text", "image", "text"]


def test_llava_loads_by_spec_and_gets_the_fallback_its_template_needs(llava, tmp_path):
    adapter = load_adapter(f"hf:{llava}")
    assert isinstance(adapter, HFAdapter) and adapter.family == "llava" and not adapter.interleaved
    assert adapter.feeding.to_dict() == {"images": "nested", "placement": "fallback", "template_interleaves": False,
                                         "batches": True}  # fmt: skip
    request = Request("x/core/0", to_parts("Before {image#1} after {image#2}", ["a.png", "b.png"]), tmp_path)
    # (processor chat templates render with trim_blocks: no newline after a block tag)
    assert adapter.encode(request).payload == "USER: <image>\n<image>\nBefore [Image 1] after [Image 2]ASSISTANT:"
    assert load_adapter(f"hf:{llava}", image_placement="first").fingerprint == adapter.fingerprint
    with pytest.raises(UserError, match="puts every image in one place"):
        load_adapter(f"hf:{llava}", image_placement="interleaved")  # it would lose which text names which image
    assert adapter.default_max_new_tokens == 300


def test_llava_answers_demon_in_mixed_batches_like_one_by_one(llava, data, tmp_path):
    settings = EvalSettings(batch_size=5, max_new_tokens=4, cache=False)
    results = evaluate(f"hf:{llava}", data, tmp_path / "batched", settings, tasks=TASKS, progress=False)
    evaluate(f"hf:{llava}", data, tmp_path / "single", settings.replace(batch_size=1), tasks=TASKS, progress=False)
    rows = read_bundle(tmp_path / "batched")[1]
    assert results["counts"]["answered"] == len(TASKS) and results["run"]["timing"]["batches"] == 1
    assert len({r["n_images"] for r in rows}) >= 3  # one batch with different image counts
    assert all(isinstance(r["output"], str) for r in rows)
    single = {r["uid"]: r["output"] for r in read_bundle(tmp_path / "single")[1]}
    assert {r["uid"]: r["output"] for r in rows} == single
    assert results["model"]["kind"] == "hf" and results["model"]["config"]["feeding"]["placement"] == "fallback"
