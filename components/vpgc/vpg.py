"""The visual prompt generator (VPG): BLIP-2's Q-Former with learned queries, projected into the LLM.

    vision features (M, N, Dv) --Q-Former(queries (1, Q, Dq))--> (M, Q, Dq) --llm_proj--> (M, Q, D)

Only the Q-Former's query branch exists (`Blip2QFormerModel`, no text embeddings or text feed-forward), as in the
release. `llm_proj` is LAVIS's `llama_proj` (MiniGPT-4 stage 1). VPG-C re-runs `qformer` with its own queries on
the same cached features, so `run_qformer` takes the queries as an argument.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers.models.blip_2.configuration_blip_2 import Blip2QFormerConfig
from transformers.models.blip_2.modeling_blip_2 import Blip2QFormerModel

from components.vpgc.config import VPGConfig


class VisualPromptGenerator(nn.Module):
    def __init__(self, config: VPGConfig, llm_hidden_size: int) -> None:
        super().__init__()
        qformer_config = Blip2QFormerConfig(**config.qformer)
        self.qformer = Blip2QFormerModel(qformer_config)
        hidden = qformer_config.hidden_size
        # BLIP-2 initialises the queries from N(0, 0.02); pretrained weights replace them through the key map.
        self.query_tokens = nn.Parameter(torch.randn(1, config.num_query_tokens, hidden) * 0.02)
        self.llm_proj = nn.Linear(hidden, llm_hidden_size)

    @property
    def num_query_tokens(self) -> int:
        return self.query_tokens.shape[1]

    def run_qformer(self, queries: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        """Q-Former query branch: queries (M or 1, Q, Dq) cross-attend features (M, N, Dv) -> (M, Q, Dq)."""
        queries = queries.expand(features.shape[0], -1, -1)
        dtype = self.query_tokens.dtype  # features may come from a bf16 encoder
        return self.qformer(query_embeds=queries.to(dtype), encoder_hidden_states=features.to(dtype)).last_hidden_state

    def cross_attention(self, queries: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        """Where queries (M or 1, Q, Dq) look in features (M, N, Dv): the Q-Former's cross-attention averaged over
        its cross-attention layers, heads and queries -> (M, N), each row summing to 1.

        sdpa returns no attention weights, so the Q-Former runs eagerly (the same softmax) for this call.
        """
        queries = queries.expand(features.shape[0], -1, -1)
        implementation = self.qformer.config._attn_implementation
        self.qformer.set_attn_implementation("eager")
        try:
            out = self.qformer(query_embeds=queries, encoder_hidden_states=features, output_attentions=True)
        finally:
            self.qformer.set_attn_implementation(implementation)
        return torch.stack(out.cross_attentions).mean(dim=(0, 2, 3))  # (layers, M, heads, Q, N) -> (M, N)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Vision features (M, N, Dv) -> visual tokens (M, Q, D) in the LLM's embedding space."""
        return self.llm_proj(self.run_qformer(self.query_tokens, features))
