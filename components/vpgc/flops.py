"""Analytic forward FLOPs (2 per multiply-add, matmuls only) of VPG-C and of the LLM prefill it sits in.

The cost of VPG-C per prefill: Linear_1 per sequence, then per image one Q-Former pass of Q queries over N cached
vision tokens and Linear_2. The Q-Former's cross-attention projects all N vision tokens to keys and values in each
cross-attention layer, which dominates for EVA ViT-g (N = 257, width 1408). Checked against
`torch.utils.flop_counter` in tests/test_vpgc_flops.py.
"""

from __future__ import annotations

from components.vpgc.config import ModelConfig


def qformer_flops(config: ModelConfig, vision_tokens: int) -> int:
    """One image through the Q-Former query branch: Q queries, `vision_tokens` keys/values."""
    qf = config.vpg.qformer
    q, d = config.vpg.num_query_tokens, config.vpg.hidden_size
    dv, inner = config.vision.width, qf.get("intermediate_size", 3072)
    layers, every = qf.get("num_hidden_layers", 12), qf.get("cross_attention_frequency", 2)
    self_attention = 4 * 2 * q * d * d + 2 * 2 * q * q * d  # q, k, v, o projections + scores and mixing
    feed_forward = 2 * 2 * q * d * inner
    cross_attention = 2 * 2 * q * d * d + 2 * 2 * vision_tokens * dv * d + 2 * 2 * q * vision_tokens * d
    cross_layers = len(range(0, layers, every))
    return layers * (self_attention + feed_forward) + cross_layers * cross_attention


def vpgc_flops(config: ModelConfig, sequences: int, images: int, vision_tokens: int) -> int:
    """VPG-C's extra work in one prefill of `sequences` prompts holding `images` images in total."""
    q, d, hidden = config.vpg.num_query_tokens, config.vpg.hidden_size, config.llm.hidden_size
    guidance = 2 * sequences * hidden * d  # Linear_1 on each last prompt token
    per_image = qformer_flops(config, vision_tokens) + 2 * q * d * hidden  # Q-Former + Linear_2
    return guidance + images * per_image


def llm_prefill_flops(config: ModelConfig, sequences: int, tokens: int) -> int:
    """The decoder over `tokens` positions per sequence, logits for the last position only (generation)."""
    arch = config.llm.arch
    d, layers, vocab = arch["hidden_size"], arch["num_hidden_layers"], arch["vocab_size"]
    heads = arch["num_attention_heads"]
    head_dim = arch.get("head_dim", d // heads)
    kv = arch.get("num_key_value_heads", heads) * head_dim
    inner = arch["intermediate_size"]
    projections = 2 * tokens * (2 * d * heads * head_dim + 2 * d * kv)  # q and o; k and v (grouped)
    attention = 2 * 2 * tokens * tokens * heads * head_dim  # full score matrix, as SDPA kernels compute it
    mlp = 3 * 2 * tokens * d * inner  # gate, up, down
    return sequences * (layers * (projections + attention + mlp) + 2 * d * vocab)
