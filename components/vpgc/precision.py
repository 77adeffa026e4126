"""Precision follows the hardware: bfloat16 where the device has bf16 matrix units, float32 elsewhere.

    precision: auto | float32 | bfloat16          (train.precision, eval.precision)

`auto` is bfloat16 on CUDA devices that support it and on CPUs with AVX512-BF16 or AMX (oneDNN runs bf16 GEMMs on
them 3-5x faster than float32, docs/benchmarks.md), float32 elsewhere. The model applies the choice
(`VPGCModel.use_precision`): frozen backbones are stored in bf16 once; the VPG and VPG-C, which train, keep float32
weights and optimiser state; losses are reduced in float32.
"""

from __future__ import annotations

import torch

PRECISIONS: tuple[str, ...] = ("auto", "float32", "bfloat16")


def has_bf16_matrix_units(device: torch.device) -> bool:
    """Whether bf16 matmuls run natively (fast) on `device`, as torch/oneDNN see the hardware."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    if device.type == "cpu":
        # torch.cpu's probes read cpuinfo; oneDNN picks AMX or AVX512-BF16 kernels from the same flags.
        return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    return False


def resolve_precision(setting: str, device: torch.device) -> torch.dtype:
    """`auto` | `float32` | `bfloat16` -> the compute dtype on `device`."""
    if setting not in PRECISIONS:
        raise ValueError(f"precision {setting!r} is not one of {list(PRECISIONS)}")
    if setting == "auto":
        return torch.bfloat16 if has_bf16_matrix_units(device) else torch.float32
    return torch.bfloat16 if setting == "bfloat16" else torch.float32


def precision_name(dtype: torch.dtype) -> str:
    return "bfloat16" if dtype == torch.bfloat16 else "float32"
