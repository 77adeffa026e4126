"""Interleaved prompts: templates, image slots, padding sides, training targets, and the release's inference prompt."""

from __future__ import annotations

import pytest
import torch
from vpgc_tiny import tiny_model

from components.demon.schema import sample_parts, to_parts
from components.errors import UserError
from components.evaluation.settings import PROMPTS
from components.vpgc.prompts import (
    IGNORE_INDEX,
    IMAGE_PLACEHOLDER,
    IMAGE_SLOT,
    PRESETS,
    RELEASE_TEMPLATES,
    Turn,
    check_preset,
    collate,
    layout,
    render,
)


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


# ------------------------------------------------------------------------------- the release's inference prompt

IMAGE_HERE = "<ImageHere>"
RELEASE_SAMPLES = [  # normalized DEMON rows: choices after the context; text, images and a table interleaved
    {"instruction": "Answer the question based on the images.", "context": "{image#1}{image#2}Question: What "
     "produces ozone? ", "images": ["a.png", "b.png"], "choice_list": ["Sun", "Oxygen"], "choices_inline": False},
    {"instruction": "Look closely. ", "context": "Here is {image#1} and {table#2}. Which is larger? ",
     "images": ["a.png", "t.png"], "choice_list": None, "choices_inline": False},
]  # fmt: skip


def release_prompt(sample: dict, template: str) -> str:
    """The release's inference prompt for one DEMON sample, rebuilt step by step from its code (DCDmllm/Cheetah):
    `i4_cheetah_llama2.py` `IDataset` (template + context + choice string, `{image#k}`/`{table#k}` -> `<ImageHere>`);
    `Chat.batch_answer` + `Chat.ask` (non-blank text pieces, unstripped, and image placeholders join the one user
    message with a space); `Conversation.get_prompt` (SINGLE with sep `###` for Vicuna, LLAMA_2 for LLaMA-2)."""
    context = sample["instruction"] + sample["context"]
    if sample["choice_list"]:
        context += "Choice list:['" + "', '".join(sample["choice_list"]) + "']. Your answer is:"
    for k in range(1, len(sample["images"]) + 1):
        context = context.replace(f"{{image#{k}}}", IMAGE_HERE).replace(f"{{table#{k}}}", IMAGE_HERE)
    pieces = context.split(IMAGE_HERE)
    message = None
    for i, text in enumerate(pieces):
        if text != "" and text.strip() != "":
            message = text if message is None else " ".join([message, text])
        if i < len(pieces) - 1:
            message = IMAGE_PLACEHOLDER if message is None else " ".join([message, IMAGE_PLACEHOLDER])
    if template == "vicuna_v0":  # system "" + sep, then "Human: " + message + sep, then "Assistant:"
        return "" + "###" + "Human" + ": " + message + "###" + "Assistant" + ":"
    system = "<<SYS>>\n" + "" + "\n<</SYS>>\n\n"
    return ("<s>" + f"[INST] {system + message} [/INST]").lstrip("<s>")


def release_ids(prompt: str, tokenizer, num_query_tokens: int) -> list[int | None]:
    """`Chat.get_context_emb`: the prompt split at `<HereForImage>`, each piece tokenized alone, BOS on the first
    only; None stands for each image's visual tokens."""
    pieces = prompt.split(IMAGE_SLOT)
    ids: list[int | None] = []
    for i, piece in enumerate(pieces):
        ids += tokenizer(piece, add_special_tokens=i == 0).input_ids
        ids += [None] * num_query_tokens * (i < len(pieces) - 1)
    return ids


@pytest.fixture(scope="module")
def llama_tokenizer():
    """A small LLaMA-style tokenizer built offline: SentencePiece-style BPE (`▁` marks word starts) whose
    `add_special_tokens` prepends `<s>` (id 1), as LLaMA's does; pad = unk (id 0), as the release sets it."""
    from tokenizers import SentencePieceBPETokenizer
    from tokenizers.processors import TemplateProcessing
    from transformers import PreTrainedTokenizerFast

    bpe = SentencePieceBPETokenizer()
    corpus = [release_prompt(s, t) for s in RELEASE_SAMPLES for t in RELEASE_TEMPLATES] * 4
    bpe.train_from_iterator(corpus, vocab_size=300, special_tokens=["<unk>", "<s>", "</s>"])
    bpe.post_processor = TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                   pad_token="<unk>")  # fmt: skip


@pytest.mark.parametrize("template", RELEASE_TEMPLATES)
@pytest.mark.parametrize("sample", RELEASE_SAMPLES, ids=["choices", "interleaved"])
def test_release_preset_is_the_release_prompt_byte_for_byte(sample, template, llama_tokenizer):
    conversation = [Turn(sample_parts(sample))]
    text = render(conversation, template, llama_tokenizer, preset="release")[0]
    assert text == release_prompt(sample, template)
    item = layout(conversation, llama_tokenizer, template, num_query_tokens=4, preset="release")
    ours: list[int | None] = list(item.prompt_ids)
    for start in item.image_starts:
        ours[start : start + 4] = [None] * 4
    assert ours == release_ids(text, llama_tokenizer, 4) and ours[0] == llama_tokenizer.bos_token_id
    # the training form differs, except LLaMA-2's where no text piece has spaces at its ends
    same = text == render(conversation, template, llama_tokenizer)[0]
    assert same is (template == "llama2_chat" and sample is RELEASE_SAMPLES[0])


def test_release_vicuna_prompt_literally(model):
    text = render([Turn(sample_parts(RELEASE_SAMPLES[1]))], "vicuna_v0", model.tokenizer, preset="release")[0]
    p = IMAGE_PLACEHOLDER
    assert text == f"###Human: Look closely. Here is  {p}  and  {p} . Which is larger? ###Assistant:"


def test_release_preset_reaches_the_evaluation_adapter(model):
    from components.evaluation.adapters import Request, VPGCAdapter

    request = Request(uid="TQA/core/0", parts=sample_parts(RELEASE_SAMPLES[0]))
    training, release = VPGCAdapter("tiny", model), VPGCAdapter("tiny", model, prompt="release")
    expected = layout([Turn(request.parts)], model.tokenizer, "vicuna_v0", model.vpg.num_query_tokens, preset="release")
    assert release.encode(request).payload.prompt_ids == expected.prompt_ids
    assert training.encode(request).payload.prompt_ids != expected.prompt_ids
    assert training.fingerprint != release.fingerprint  # the response cache keeps the two apart
    with pytest.raises(UserError, match="release prompt exists for the templates"):
        check_preset("release", "chat_template")
    assert PROMPTS == PRESETS  # the eval settings' copy of the presets
