"""Batched generation: one prefill with VPG-C, then token-by-token decoding from the KV cache.

Left padding puts every sequence's last prompt token at position T-1, so one `logits[:, -1]` serves the batch.
Greedy by default (batched and one-by-one outputs agree); sampling (temperature, top-p) draws from a seeded
`torch.Generator`. A sequence stops at EOS or once its text contains a stop string (e.g. Vicuna's `###`), which is
cut from the reply; finished sequences are fed padding until the whole batch is done.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
from transformers import DynamicCache

from components.vpgc.model import cache_argument
from components.vpgc.prompts import PromptBatch


@dataclass(frozen=True)
class GenerationSettings:
    max_new_tokens: int = 300
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int = 0
    stop: tuple[str, ...] = ()
    ignore_eos: bool = False  # benchmarks: always decode max_new_tokens


@dataclass
class GenerationStats:
    """Where the time went in one `generate` call (synchronised with the GPU when there is one)."""

    prefill_s: float = 0.0
    decode_s: float = 0.0
    prompt_tokens: int = 0  # real (unpadded) prompt tokens in the batch
    new_tokens: int = 0  # tokens kept in the replies, EOS excluded
    decode_steps: int = 0
    per_sequence: list[int] = field(default_factory=list)


def _clock(device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def next_tokens(logits: torch.Tensor, settings: GenerationSettings, generator: torch.Generator) -> torch.Tensor:
    """logits (B, V) -> token ids (B,): argmax, or nucleus sampling at the given temperature."""
    if not settings.do_sample:
        return logits.argmax(-1)
    probs = torch.softmax(logits.float() / settings.temperature, dim=-1)
    sorted_probs, order = probs.sort(dim=-1, descending=True)
    # keep the smallest prefix whose mass reaches top_p (the first token always stays)
    outside = sorted_probs.cumsum(-1) - sorted_probs >= settings.top_p
    sorted_probs = sorted_probs.masked_fill(outside, 0.0)
    choice = torch.multinomial(sorted_probs.cpu(), 1, generator=generator).to(order.device)
    return order.gather(-1, choice).squeeze(-1)


def cut_at_stop(text: str, stop: tuple[str, ...]) -> tuple[str, bool]:
    """The text before the first stop string, and whether one occurred."""
    positions = [text.find(s) for s in stop if s and s in text]
    return (text[: min(positions)], True) if positions else (text, False)


def generate(
    model,
    batch: PromptBatch,
    features: torch.Tensor,
    settings: GenerationSettings,
    stats: GenerationStats | None = None,
) -> list[str]:
    """Replies (B strings) to a left-padded prompt batch whose images' cached features are `features`."""
    replies = []
    for ids in generate_ids(model, batch, features, settings, stats):
        text = model.tokenizer.decode(ids, skip_special_tokens=True)
        replies.append(cut_at_stop(text, settings.stop)[0].strip())
    return replies


@torch.no_grad()
def generate_ids(
    model,
    batch: PromptBatch,
    features: torch.Tensor,
    settings: GenerationSettings,
    stats: GenerationStats | None = None,
) -> list[list[int]]:
    """The new token ids of each sequence (EOS excluded); stop strings need `model.tokenizer`."""
    stats = stats if stats is not None else GenerationStats()
    device = batch.inputs_embeds.device
    start = _clock(device)
    tokenizer, llm = model.tokenizer, model.llm
    eos = set() if settings.ignore_eos else {*_as_list(llm.generation_config.eos_token_id)} - {None}
    if tokenizer is not None and not settings.ignore_eos:
        eos.add(tokenizer.eos_token_id)
    pad = tokenizer.pad_token_id if tokenizer is not None else (llm.config.pad_token_id or 0)
    generator = torch.Generator().manual_seed(settings.seed)
    size = batch.attention_mask.shape[0]
    cache = DynamicCache(config=llm.config)

    logits = model(batch, features, cache=cache, logits_to_keep=1).logits[:, -1].float()  # prefill: VPG-C runs here
    prefilled = _clock(device)
    mask = batch.attention_mask
    positions = batch.position_ids[:, -1:]
    generated: list[list[int]] = [[] for _ in range(size)]
    finished = [False] * size
    for step in range(settings.max_new_tokens):
        tokens = next_tokens(logits, settings, generator)
        for b, token in enumerate(tokens.tolist()):
            if finished[b]:
                continue
            if token in eos:
                finished[b] = True
                continue
            generated[b].append(token)
            if settings.stop:
                finished[b] = cut_at_stop(tokenizer.decode(generated[b]), settings.stop)[1]
        if all(finished) or step == settings.max_new_tokens - 1:
            break
        tokens = torch.tensor([pad if done else t for done, t in zip(finished, tokens.tolist(), strict=True)])
        mask = torch.cat([mask, mask.new_ones(size, 1)], dim=1)
        positions = positions + 1
        logits = (
            llm(
                input_ids=tokens[:, None].to(mask.device),
                attention_mask=mask,
                position_ids=positions,
                use_cache=True,
                **cache_argument(llm, cache),
            )
            .logits[:, -1]
            .float()
        )
        stats.decode_steps += 1
    end = _clock(device)
    stats.prefill_s += prefilled - start
    stats.decode_s += end - prefilled
    stats.prompt_tokens += int(batch.attention_mask.sum())
    stats.new_tokens += sum(len(ids) for ids in generated)
    stats.per_sequence += [len(ids) for ids in generated]
    return generated


def _as_list(value: int | list[int] | None) -> list[int | None]:
    return value if isinstance(value, list) else [value]
