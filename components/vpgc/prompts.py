"""Interleaved prompts: conversations of text and image parts -> one batch of input embeddings + image positions.

A user turn is the parts list of `components.demon.schema.to_parts` (text parts and image parts, in order).
Each image becomes the placeholder `<Img><HereForImage></Img>`; text and images of one turn are joined with single
spaces. The turn is wrapped in the LLM's chat template:

- `vicuna_v0`:   `###Human: {turn} ###Assistant: ` (end symbol `###`), BOS prepended
- `llama2_chat`: `[INST] <<SYS>>\\n\\n<</SYS>>\\n\\n{turn} [/INST]` (end symbol `</s>`), BOS prepended
- `chat_template`: the tokenizer's own template (SmolLM2 and other instruct models), no extra BOS

Two presets render these templates (`eval.prompt`). `training` (the default) is the form above, which training
targets follow. `release` is what the release's chat code (`cheetah/conversation/`) sends at inference, byte for
byte: text pieces unstripped (only blank ones dropped), and for Vicuna no space around the separator,
`###Human: {turn}###Assistant:`; its LLaMA-2 form differs from `training` only in the unstripped pieces.

The text is split at `<HereForImage>` and each piece is tokenized on its own (as the release does), leaving Q slots
per image that `collate` fills with the VPG's visual tokens. `collate` is the ONE place that turns layouts into
`inputs_embeds` and the positions VPG-C needs, for left padding (generation) and right padding (training).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from components.errors import UserError

if TYPE_CHECKING:  # the schema module needs pyarrow/pandas, which a GPU benchmark machine may lack
    from components.demon.schema import Part

IMAGE_SLOT = "<HereForImage>"
IMAGE_PLACEHOLDER = "<Img><HereForImage></Img>"
IGNORE_INDEX = -100  # label of prompt and pad positions: no loss there
PRESETS = ("training", "release")
RELEASE_TEMPLATES = ("vicuna_v0", "llama2_chat")  # the release ships these two; `chat_template` has no release form


@dataclass
class Turn:
    """One exchange: the user's interleaved parts and the assistant's reply (None: the reply to generate)."""

    user: list[Part]
    assistant: str | None = None


Conversation = list[Turn]


@dataclass
class PromptLayout:
    """One tokenized sequence with Q empty slots per image (prompt first, then the training target if any)."""

    prompt_ids: list[int]
    image_starts: list[int]  # index of each image's first slot in prompt_ids
    images: list[str]  # image paths in the order they appear
    target_ids: list[int] = field(default_factory=list)


@dataclass
class PromptBatch:
    """B padded sequences of length T holding M images; the LLM and VPG-C inputs."""

    inputs_embeds: torch.Tensor  # (B, T, D)
    attention_mask: torch.Tensor  # (B, T) long, 0 at padding
    position_ids: torch.Tensor  # (B, T) long, counting real tokens only
    image_batch_index: torch.Tensor  # (M,) long
    image_starts: torch.Tensor  # (M,) long, absolute positions in the padded sequences
    guidance_index: torch.Tensor  # (B,) long, the last prompt token (the VPG-C guidance)
    labels: torch.Tensor | None = None  # (B, T) long, IGNORE_INDEX outside targets


def render_user(parts: list[Part], strip: bool = True) -> tuple[str, list[str]]:
    """A user turn's text with image placeholders, and its image paths in order. `strip=False` keeps each text
    piece's own spaces, as the release's `Chat.ask` does (`' '.join([message, text])`)."""
    pieces, images = [], []
    for part in parts:
        if part["type"] == "image":
            pieces.append(IMAGE_PLACEHOLDER)
            images.append(part["path"])
        elif part["text"].strip():
            pieces.append(part["text"].strip() if strip else part["text"])
    return " ".join(pieces), images


def check_preset(preset: str, template: str) -> None:
    """A UserError unless `preset` can render `template`."""
    if preset not in PRESETS:
        raise UserError(f"unknown prompt preset {preset!r}; use one of {list(PRESETS)}")
    if preset == "release" and template not in RELEASE_TEMPLATES:
        raise UserError(
            f"the release prompt exists for the templates {list(RELEASE_TEMPLATES)}, not {template!r}; "
            "use eval.prompt: training"
        )


def render(
    conversation: Conversation, template: str, tokenizer: Any, preset: str = "training"
) -> tuple[str, list[str], bool]:
    """The prompt text up to the assistant's reply, its images, and whether to prepend BOS."""
    if not conversation or conversation[-1].assistant is not None:
        raise ValueError("a conversation must end with a user turn that has no reply yet")
    check_preset(preset, template)
    release = preset == "release"
    texts, images = [], []
    for turn in conversation:
        text, turn_images = render_user(turn.user, strip=not release)
        texts.append(text)
        images.extend(turn_images)
    replies = [turn.assistant for turn in conversation[:-1]]
    if template == "vicuna_v0":
        if release:  # the release's `Conversation.get_prompt` (SINGLE): "###", then "Role: message###" per message
            history = "".join(f"Human: {t}###Assistant: {r}###" for t, r in zip(texts, replies, strict=False))
            return f"###{history}Human: {texts[-1]}###Assistant:", images, True
        prompt = "".join(f"###Human: {t} ###Assistant: {r}###" for t, r in zip(texts, replies, strict=False))
        return prompt + f"###Human: {texts[-1]} ###Assistant: ", images, True
    if template == "llama2_chat":
        turns = [f"[INST] {t} [/INST]" for t in texts]
        turns[0] = f"[INST] <<SYS>>\n\n<</SYS>>\n\n{texts[0]} [/INST]"
        prompt = "".join(f"{turn} {reply} </s><s>" for turn, reply in zip(turns, replies, strict=False))
        return prompt + turns[-1], images, True
    if template == "chat_template":
        messages = []
        for text, reply in zip(texts, [*replies, None], strict=True):
            messages.append({"role": "user", "content": text})
            if reply is not None:
                messages.append({"role": "assistant", "content": reply})
        prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return prompt, images, False
    raise ValueError(f"unknown prompt template {template!r}")


def layout(
    conversation: Conversation,
    tokenizer: Any,
    template: str,
    num_query_tokens: int,
    target: str | None = None,
    end_symbol: str = "",
    max_target_tokens: int = 160,
    preset: str = "training",
) -> PromptLayout:
    """Tokenize a conversation (and optionally the training target + end symbol, truncated) into a layout."""
    text, images, add_bos = render(conversation, template, tokenizer, preset)
    segments = text.split(IMAGE_SLOT)
    if len(segments) != len(images) + 1:
        raise UserError(
            f"the prompt has {len(segments) - 1} image placeholders but {len(images)} images; "
            f"remove the literal {IMAGE_SLOT!r} from the text"
        )
    ids: list[int] = [tokenizer.bos_token_id] if add_bos and tokenizer.bos_token_id is not None else []
    starts = []
    for i, segment in enumerate(segments):
        ids.extend(tokenizer(segment, add_special_tokens=False).input_ids)
        if i < len(images):
            starts.append(len(ids))
            ids.extend([tokenizer.pad_token_id] * num_query_tokens)  # slots, overwritten by visual tokens
    target_ids = []
    if target is not None:
        target_ids = tokenizer(target + end_symbol, add_special_tokens=False).input_ids[:max_target_tokens]
    return PromptLayout(prompt_ids=ids, image_starts=starts, images=images, target_ids=target_ids)


def collate(
    layouts: list[PromptLayout],
    visual_tokens: torch.Tensor,
    embed_tokens: nn.Module,
    pad_token_id: int,
    padding_side: str = "left",
) -> PromptBatch:
    """Pad the layouts, embed the tokens and put visual_tokens (M, Q, D) (images in layout order) in the slots.

    Left padding (generation): every sequence ends at position T-1, its last prompt token. Right padding
    (training): the target follows the prompt and the guidance index is the prompt's last token.
    """
    if padding_side not in ("left", "right"):
        raise ValueError(f"padding_side must be 'left' or 'right', not {padding_side!r}")
    lengths = [len(item.prompt_ids) + len(item.target_ids) for item in layouts]
    width = max(lengths)
    ids = torch.full((len(layouts), width), pad_token_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    labels = torch.full_like(ids, IGNORE_INDEX)
    image_batch_index, image_starts, guidance_index = [], [], []
    for b, (item, length) in enumerate(zip(layouts, lengths, strict=True)):
        offset = width - length if padding_side == "left" else 0
        sequence = item.prompt_ids + item.target_ids
        ids[b, offset : offset + length] = torch.tensor(sequence, dtype=torch.long)
        mask[b, offset : offset + length] = 1
        if item.target_ids:
            start = offset + len(item.prompt_ids)
            labels[b, start : start + len(item.target_ids)] = torch.tensor(item.target_ids, dtype=torch.long)
        image_batch_index += [b] * len(item.image_starts)
        image_starts += [offset + s for s in item.image_starts]
        guidance_index.append(offset + len(item.prompt_ids) - 1)
    device = embed_tokens.weight.device
    ids, mask, labels = ids.to(device), mask.to(device), labels.to(device)
    rows = torch.tensor(image_batch_index, dtype=torch.long, device=device)
    starts = torch.tensor(image_starts, dtype=torch.long, device=device)
    embeds = embed_tokens(ids)  # (B, T, D)
    if rows.numel():
        num_query = visual_tokens.shape[1]
        positions = starts[:, None] + torch.arange(num_query, device=device)  # (M, Q)
        embeds = embeds.index_put((rows[:, None].expand(-1, num_query), positions), visual_tokens.to(embeds.dtype))
    position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
    return PromptBatch(
        inputs_embeds=embeds,
        attention_mask=mask,
        position_ids=position_ids,
        image_batch_index=rows,
        image_starts=starts,
        guidance_index=torch.tensor(guidance_index, dtype=torch.long, device=device),
        labels=labels if any(item.target_ids for item in layouts) else None,
    )
