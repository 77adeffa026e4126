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

    def forward(self, layouts: Sequence[PromptLayout], pixels: torch.Tensor, cached: bool = False) -> torch.Tensor:
        """Summed cross-entropy of the target tokens (a 0-dim float32 tensor); divide by the token count.
        `cached`: the images' features through the feature cache (held-out scoring; never training crops)."""
        batch, features = self.model.prepare(layouts, pixels, padding_side="right", cached=cached)
        predicts = batch.labels[:, 1:] != IGNORE_INDEX  # (B, T-1): position t predicts token t+1
        # Logits only where a target token is predicted: the LM head and its softmax over the whole prompt would
        # cost more than the decoder blocks (49,152 classes) and their gradient is zero anyway.
        keep = F.pad(predicts, (0, 1))  # (B, T) bool
        logits = self.model(dataclasses.replace(batch, labels=None), features, logits_to_keep=keep).logits  # (N, V)
        return F.cross_entropy(logits.float(), batch.labels[:, 1:][predicts], reduction="sum")
