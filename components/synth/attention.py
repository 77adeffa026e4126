"""Where the VPG does not look (paper section 2, steps 2 and 4).

Run the configured VPG's Q-Former with its own (original) queries on the frozen vision features, average its
query-to-image cross-attention over every cross-attention layer, head and query, and lay it on the encoder's grid:

    images --vision (frozen)--> features (M, N, Dv) --Q-Former(queries), output_attentions-->
    cross_attentions: per layer (M, heads, Q, N) --mean over layers, heads, queries--> (M, N) --> grid (M, g, g)

Each object's significance (`regions.significance`) is the mean of that grid inside its mask. Only the vision
encoder, the VPG and VPG-C (so that a trained checkpoint loads whole) are built, from the model package's own
classes: no LLM. This module needs only torch, transformers, numpy and Pillow (GPU machines run it as is).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import nn

from components.errors import UserError
from components.vpgc.backbones import ImageProcessor, build_vision, resolve_path
from components.vpgc.checkpoints import CONFIG_FILE, load_checkpoint, load_lavis_weights
from components.vpgc.config import ModelConfig, load_config, model_config_from_dict
from components.vpgc.vpg import VisualPromptGenerator
from components.vpgc.vpgc import VPGC


class VisionSide(nn.Module):
    """The frozen vision encoder + VPG of a VPG-C model (+ VPG-C's own weights, unused here), in eval mode."""

    def __init__(self, config: ModelConfig, init_seed: int = 0, device: str = "cpu") -> None:
        super().__init__()
        self.config = config
        # A VPG without weights is random: seed its init so every process (and every run) builds the same one.
        with torch.random.fork_rng():
            torch.manual_seed(init_seed)
            self.vision = build_vision(config.vision, load_weights=True)
            self.vpg = VisualPromptGenerator(config.vpg, config.llm.hidden_size)
            self.vpgc = VPGC(config.llm.hidden_size, config.vpg.hidden_size, config.vpg.num_query_tokens)
        # Same weight order as VPGCModel.from_config: backbone, BLIP-2 file, then a released checkpoint.
        if config.vision.kind == "eva_vit_g" and config.vision.weights:
            load_lavis_weights(self, resolve_path(config.vision.weights, "model.vision.weights"), "visual_encoder.")
        if config.vpg.weights:
            load_lavis_weights(self, resolve_path(config.vpg.weights, "model.vpg.weights"))
        self.vpgc.init_queries_from(self.vpg)
        if config.checkpoint:
            load_lavis_weights(self, resolve_path(config.checkpoint, "model.checkpoint"))
        self.processor = ImageProcessor(config.vision)
        self.requires_grad_(False)
        self.eval()
        self.to(device)

    @classmethod
    def load(
        cls, model_doc: Any, checkpoint: str | Path | None = None, init_seed: int = 0, device: str = "cpu"
    ) -> VisionSide:
        """From the experiment's `model:` section, or from a trained checkpoint folder (its own config.yaml)."""
        if checkpoint is None:
            return cls(model_config_from_dict(model_doc, "model"), init_seed, device)
        checkpoint = Path(checkpoint)
        if not (checkpoint / CONFIG_FILE).is_file():
            raise UserError(f"--vpg-checkpoint {checkpoint}: no {CONFIG_FILE}; give a folder written by training")
        module = cls(load_config(checkpoint / CONFIG_FILE), init_seed, device)
        load_checkpoint(module, checkpoint)
        return module

    @property
    def device(self) -> torch.device:
        return self.vpg.query_tokens.device

    @torch.no_grad()
    def encode(self, images: list[Image.Image]) -> torch.Tensor:
        """RGB images (any sizes) -> frozen vision features (M, N, Dv), eval preprocessing (whole-image resize)."""
        pixels = torch.stack([self.processor(image) for image in images]).to(self.device)
        dtype = next(self.vision.parameters()).dtype
        return self.vision(pixels.to(dtype)).float()

    @torch.no_grad()
    def attention(self, features: torch.Tensor) -> torch.Tensor:
        """Features (M, N, Dv) -> the VPG's cross-attention on the encoder grid (M, g, g), mean 1/N per image."""
        return to_grid(self.vpg.cross_attention(self.vpg.query_tokens, features))


def to_grid(tokens: torch.Tensor) -> torch.Tensor:
    """(M, N) per-token values -> (M, g, g): EfficientNet's 7x7 map has N = 49; a ViT has a CLS token first
    (N = 1 + g^2, e.g. 257 for EVA ViT-g at 224 px), which covers no patch and is dropped."""
    n = tokens.shape[1]
    side = math.isqrt(n)
    if side * side != n:
        side = math.isqrt(n - 1)
        if side * side != n - 1:
            raise ValueError(f"{n} vision tokens form no square grid (with or without a CLS token)")
        tokens = tokens[:, 1:]
    return tokens.reshape(-1, side, side)
