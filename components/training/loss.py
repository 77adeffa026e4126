"""The training objective: autoregressive cross-entropy on the response tokens only (paper section 2).

Labels come from `prompts.layout` with a target: prompt and pad positions are IGNORE_INDEX, the target carries the
end symbol and is truncated to `max_target_tokens`, as in the release. The sum (not the mean) is returned so the
recipe can divide by the target tokens of the whole global batch. Imports only torch and components.vpgc, so the
GPU benchmark can use it on a machine without pandas.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from components.vpgc.model import VPGCModel
from components.vpgc.prompts import IGNORE_INDEX, PromptLayout


class ResponseLoss(nn.Module):
    """The model plus its loss, so DDP sees every trainable parameter used inside one forward (the VPG runs in
    `prepare` when the align stage trains it)."""

    def __init__(self, model: VPGCModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, layouts: Sequence[PromptLayout], pixels: torch.Tensor) -> torch.Tensor:
        """Summed cross-entropy of the target tokens (a 0-dim float32 tensor); divide by the token count."""
        batch, features = self.model.prepare(layouts, pixels, padding_side="right")
        labels = batch.labels  # (B, T), IGNORE_INDEX outside targets
        logits = self.model(dataclasses.replace(batch, labels=None), features).logits  # (B, T, V)
        return F.cross_entropy(
            logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(), ignore_index=IGNORE_INDEX, reduction="sum"
        )
