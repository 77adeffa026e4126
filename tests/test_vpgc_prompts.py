"""Interleaved prompts: templates, image slots, padding sides, training targets."""

from __future__ import annotations

import pytest
import torch
from vpgc_tiny import tiny_model

from components.demon.schema import to_parts
from components.errors import UserError
from components.vpgc.prompts import IGNORE_INDEX, IMAGE_PLACEHOLDER, Turn, collate, layout, render


@pytest.fixture(scope="module")
def model():
    return tiny_model()


def test_vicuna_v0_template_and_multi_turn(model):
    parts = to_parts("{image#1}{image#2}Question: what changed? ", ["a.png", "b.png"])
    text, images, bos = render([Turn(parts)], "vicuna_v0", model.tokenizer)
    assert text == f"###Human: {IMAGE_PLACEHOLDER} {IMAGE_PLACEHOLDER} Question: what changed? ###Assistant: "
    assert images == ["a.png", "b.png"] and bos
    two = render([Turn(parts, "A hat."), Turn(to_parts("Why?", []))], "vicuna_v0", model.tokenizer)[0]
    assert two == text + "A hat.###" + "###Human: Why? ###Assistant: "


def test_llama2_chat_template(model):
    text = render([Turn(to_parts("Look {image#1} now", ["a.png"]))], "llama2_chat", model.tokenizer)[0]
    assert text == f"[INST] <<SYS>>\n\n<</SYS>>\n\nLook {IMAGE_PLACEHOLDER} now [/INST]"


def test_tokenizer_chat_template(model):
    text, _, bos = render([Turn(to_parts("{image#1} hi", ["a.png"]))], "chat_template", model.tokenizer)
    assert f"<|im_start|>user\n{IMAGE_PLACEHOLDER} hi<|im_end|>" in text and text.endswith("assistant\n")
    assert not bos  # the template brings its own special tokens


def test_layout_leaves_one_slot_run_per_image(model):
    conv = [Turn(to_parts("A {image#1} B {image#2} C", ["a.png", "b.png"]))]
    item = layout(conv, model.tokenizer, "vicuna_v0", num_query_tokens=4)
    assert item.prompt_ids[0] == model.tokenizer.bos_token_id
    assert len(item.image_starts) == 2 and item.image_starts[1] - item.image_starts[0] > 4
    decoded = model.tokenizer.decode(item.prompt_ids[item.image_starts[0] + 4 : item.image_starts[1]])
    assert decoded == "</Img> B <Img>"  # the text between the two images' slots


def test_a_literal_slot_marker_in_user_text_is_rejected(model):
    with pytest.raises(UserError, match="placeholders"):
        layout([Turn(to_parts("say <HereForImage> {image#1}", ["a.png"]))], model.tokenizer, "vicuna_v0", 4)


def test_left_and_right_padding_positions(model):
    convs = [[Turn(to_parts("{image#1} short", ["a"]))], [Turn(to_parts("a much longer question here", []))]]
    layouts = model.layouts(convs, targets=["yes", "a longer answer"])
    visual = torch.randn(1, 4, model.llm.config.hidden_size)
    embed = model.llm.get_input_embeddings()
    pad = model.tokenizer.pad_token_id
    right = collate(layouts, visual, embed, pad, "right")
    for b, item in enumerate(layouts):
        n = len(item.prompt_ids)
        assert right.guidance_index[b] == n - 1  # the last prompt token, not the last target token
        targets = right.labels[b][right.labels[b] != IGNORE_INDEX].tolist()
        assert targets == item.target_ids and model.tokenizer.decode(targets).endswith("###")
        assert right.attention_mask[b].sum() == n + len(item.target_ids)
    start = right.image_starts[0]
    torch.testing.assert_close(right.inputs_embeds[0, start : start + 4], visual[0])

    left = collate(model.layouts(convs), visual, embed, pad, "left")
    assert left.labels is None
    width = left.attention_mask.shape[1]
    assert left.guidance_index.tolist() == [width - 1, width - 1]
    offset = width - len(layouts[0].prompt_ids)
    assert left.image_starts.tolist() == [offset + layouts[0].image_starts[0]]
    assert (
        left.position_ids[0, offset].item() == 0 and left.position_ids[0, -1].item() == len(layouts[0].prompt_ids) - 1
    )
