"""VPG-C: the Visual Prompt Generator Complete (paper section 1), and the hook that runs it inside any decoder.

During the prefill, before decoder block `layer` (L/2 by default):

    h_N = hidden[b, last prompt token]                       (B, D)
    g   = guidance_proj(h_N)                                 (B, Dq)   Linear_1, zero-initialised
    Q'  = query_tokens + g[image's sample]                   (M, Q, Dq) 32 new queries, copied from the VPG
    out = VPG's frozen Q-Former(Q', cached vision features)  (M, Q, Dq) no image re-encoding
    hidden[b, image m's Q positions] += output_proj(out)     (M, Q, D)  Linear_2, zero-initialised, no gate

Every image of every sample goes through one batched Q-Former call, so a batch can mix samples with different
numbers of images. Because both projections start at zero, the untrained model is exactly the base MLLM.
Decode steps reuse the KV cache and never run VPG-C: the hook is armed only around the prefill call.
LAVIS names (release): query_tokens = `llama_model.model.query_tokens`, guidance_proj = `qformer_proj`,
output_proj = `llm_proj`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from components.vpgc.vpg import VisualPromptGenerator


@dataclass
class VPGCInputs:
    """What VPG-C needs for one prefill of a batch of B sequences holding M images in total."""

    features: torch.Tensor  # (M, N, Dv) cached vision features
    image_batch_index: torch.Tensor  # (M,) long: the sequence each image sits in
    image_starts: torch.Tensor  # (M,) long: position of the image's first visual token in that sequence
    guidance_index: torch.Tensor  # (B,) long: position of each sequence's last prompt token


class VPGC(nn.Module):
    """The trainable part: new queries and the two zero-initialised projections (6,320,896 params for 7B)."""

    def __init__(self, llm_hidden_size: int, qformer_hidden_size: int, num_query_tokens: int) -> None:
        super().__init__()
        self.query_tokens = nn.Parameter(torch.zeros(1, num_query_tokens, qformer_hidden_size))
        self.guidance_proj = nn.Linear(llm_hidden_size, qformer_hidden_size)
        self.output_proj = nn.Linear(qformer_hidden_size, llm_hidden_size)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Zero projections (ControlNet idea: training starts from the base model); queries stay as set."""
        for linear in (self.guidance_proj, self.output_proj):
            nn.init.zeros_(linear.weight)
            nn.init.zeros_(linear.bias)

    def init_queries_from(self, vpg: VisualPromptGenerator) -> None:
        """Q_new starts as a copy of the VPG's pretrained queries."""
        with torch.no_grad():
            self.query_tokens.copy_(vpg.query_tokens)

    def guided_queries(self, hidden_states: torch.Tensor, inputs: VPGCInputs) -> torch.Tensor:
        """hidden_states (B, T, D) entering block `layer` -> the instruction-guided queries Q' (M, Q, Dq)."""
        batch = torch.arange(hidden_states.shape[0], device=hidden_states.device)
        last = hidden_states[batch, inputs.guidance_index]  # (B, D)
        guidance = self.guidance_proj(last.to(self.guidance_proj.weight.dtype))  # (B, Dq)
        return self.query_tokens + guidance[inputs.image_batch_index, None, :]  # (M, Q, Dq)

    def forward(self, hidden_states: torch.Tensor, inputs: VPGCInputs, vpg: VisualPromptGenerator) -> torch.Tensor:
        """hidden_states (B, T, D) -> (B, T, D) with the residual added at every image's Q positions only."""
        queries = self.guided_queries(hidden_states, inputs)  # (M, Q, Dq)
        out = vpg.run_qformer(queries, inputs.features)  # (M, Q, Dq)
        residual = self.output_proj(out).to(hidden_states.dtype)  # (M, Q, D)
        num_query = residual.shape[1]
        offsets = torch.arange(num_query, device=hidden_states.device)
        positions = inputs.image_starts[:, None] + offsets  # (M, Q)
        rows = inputs.image_batch_index[:, None].expand(-1, num_query)  # (M, Q)
        # Out of place, so autograd sees it; positions of different images never overlap.
        return hidden_states.index_put((rows, positions), residual, accumulate=True)


def decoder_layers(llm: nn.Module) -> nn.ModuleList:
    """The blocks of any decoder that keeps them in `model.layers` (LLaMA, Mistral, Qwen2, SmolLM...)."""
    layers = getattr(getattr(llm, "model", None), "layers", None)
    if not isinstance(layers, nn.ModuleList):
        raise TypeError(f"{type(llm).__name__} has no `model.layers`: VPG-C needs a decoder with that layout")
    return layers


class VPGCHook:
    """A forward pre-hook on decoder block `layer` that applies VPG-C while armed (the prefill) and never else.

    The hook stays armed for the whole `with armed(...)` block: with gradient checkpointing on the blocks, run
    the backward pass inside that block too, so recomputation sees the same residual.
    """

    def __init__(self, llm: nn.Module, layer: int, vpgc: VPGC, vpg: VisualPromptGenerator) -> None:
        self.layer = layer
        self.vpgc = vpgc
        self.vpg = vpg
        self.inputs: VPGCInputs | None = None
        self.calls = 0  # how many times VPG-C ran: tests check that decode steps do not re-run it
        self.handle = decoder_layers(llm)[layer].register_forward_pre_hook(self._pre_hook, with_kwargs=True)

    @contextmanager
    def armed(self, inputs: VPGCInputs) -> Iterator[None]:
        self.inputs = inputs
        try:
            yield
        finally:
            self.inputs = None

    def _pre_hook(
        self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[tuple[Any, ...], dict[str, Any]] | None:
        if self.inputs is None:
            return None
        in_kwargs = "hidden_states" in kwargs
        hidden = kwargs["hidden_states"] if in_kwargs else args[0]
        if hidden.shape[0] != self.inputs.guidance_index.shape[0]:
            raise RuntimeError(
                f"VPG-C was armed for {self.inputs.guidance_index.shape[0]} sequences but block {self.layer} "
                f"got {hidden.shape[0]}"
            )
        self.calls += 1
        hidden = self.vpgc(hidden, self.inputs, self.vpg)
        if in_kwargs:
            return args, {**kwargs, "hidden_states": hidden}
        return (hidden, *args[1:]), kwargs

    def remove(self) -> None:
        self.handle.remove()
