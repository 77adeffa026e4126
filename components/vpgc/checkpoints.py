"""Weights in and out: our safetensors checkpoints, and the released LAVIS `.pth` files through a key map.

Our checkpoint (a folder): `weights.safetensors` with the trainable components only (`vpgc.*`, plus `vpg.*` when
the VPG was trained, e.g. by the alignment stage), `config.yaml`, the resolved `model:` config naming the frozen
backbones it belongs to, and, when training wrote it, `training.json`: how it was trained (stage, variant, data mix,
steps, learning rate, seed), so an evaluation reports what it scored from the checkpoint itself. No run id or time
is in any of them: DVC hashes the folder, and two runs of the same training write the same bytes.

Released files (LAVIS key names under `model`), read with `torch.load(weights_only=True)`:
- the Cheetah checkpoints (`llama_proj.*`, `llama_model.model.{query_tokens,qformer_proj,llm_proj}.*`, ...),
- BLIP-2's `blip2_pretrained_flant5xxl.pth` (`Qformer.bert.*`, `query_tokens`, `ln_vision.*`, ...),
- LAVIS's `eva_vit_g.pth` (ViT keys without a prefix: load it with `prefix="visual_encoder."`).
`LAVIS_KEY_MAP` turns their names into ours; `LAVIS_IGNORED` lists what we deliberately drop (the Q-Former's text
branch, BLIP-2's contrastive/matching heads, EVA's 40th block). Any other key is an error, never silently skipped.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import re
import struct
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors.torch import load_file, save
from torch import nn

from components import atomic
from components.errors import UserError

WEIGHTS_FILE = "weights.safetensors"
CONFIG_FILE = "config.yaml"
TRAINING_FILE = "training.json"

_QF = r"(?:llama_model\.model\.)?Qformer\.bert\."  # the release registers the same Q-Former twice
_VIT = r"visual_encoder\.blocks\.(\d+)\."
_LAYER = r"vision.model.encoder.layers.\1."
# (LAVIS name pattern, our name); patterns are matched in full, in order.
LAVIS_KEY_MAP: tuple[tuple[str, str], ...] = (
    # EVA ViT-g -> Blip2VisionModel (q_bias and v_bias are merged into qkv.bias, see `_merge_qkv_bias`)
    (r"visual_encoder\.cls_token", "vision.model.embeddings.class_embedding"),
    (r"visual_encoder\.pos_embed", "vision.model.embeddings.position_embedding"),
    (r"visual_encoder\.patch_embed\.proj\.(weight|bias)", r"vision.model.embeddings.patch_embedding.\1"),
    (_VIT + r"norm([12])\.(weight|bias)", _LAYER + r"layer_norm\2.\3"),
    (_VIT + r"attn\.qkv\.weight", _LAYER + "self_attn.qkv.weight"),
    (_VIT + r"attn\.([qv])_bias", _LAYER + r"self_attn.qkv.\2_bias"),
    (_VIT + r"attn\.proj\.(weight|bias)", _LAYER + r"self_attn.projection.\2"),
    (_VIT + r"mlp\.(fc[12])\.(weight|bias)", _LAYER + r"mlp.\2.\3"),
    (r"ln_vision\.(weight|bias)", r"vision.model.post_layernorm.\1"),
    # BLIP-2 Q-Former (query branch) -> Blip2QFormerModel, its queries, and MiniGPT-4's projection
    (r"query_tokens", "vpg.query_tokens"),
    (_QF + r"embeddings\.LayerNorm\.(weight|bias)", r"vpg.qformer.layernorm.\1"),
    (
        _QF + r"encoder\.layer\.(\d+)\.(attention|crossattention)\.self\.(query|key|value)\.(weight|bias)",
        r"vpg.qformer.encoder.layer.\1.\2.attention.\3.\4",
    ),
    (
        _QF + r"encoder\.layer\.(\d+)\.(attention|crossattention)\.output\.(dense|LayerNorm)\.(weight|bias)",
        r"vpg.qformer.encoder.layer.\1.\2.output.\3.\4",
    ),
    (
        _QF + r"encoder\.layer\.(\d+)\.(intermediate_query|output_query)\.(dense|LayerNorm)\.(weight|bias)",
        r"vpg.qformer.encoder.layer.\1.\2.\3.\4",
    ),
    (r"llama_proj\.(weight|bias)", r"vpg.llm_proj.\1"),
    # VPG-C (Cheetah)
    (r"llama_model\.model\.query_tokens", "vpgc.query_tokens"),
    (r"llama_model\.model\.qformer_proj\.(weight|bias)", r"vpgc.guidance_proj.\1"),
    (r"llama_model\.model\.llm_proj\.(weight|bias)", r"vpgc.output_proj.\1"),
    # the LLM itself, if a file carries it
    (r"llama_model\.(model\.(?:embed_tokens|layers|norm)\..+|lm_head\..+)", r"llm.\1"),
)
LAVIS_IGNORED: tuple[tuple[str, str], ...] = (
    (_QF + r"embeddings\.(word_embeddings|position_embeddings|position_ids).*", "Q-Former text embeddings"),
    (_QF + r"encoder\.layer\.\d+\.(intermediate|output)\..+", "Q-Former text feed-forward"),
    (r"(?:llama_model\.model\.)?Qformer\.cls\..+", "Q-Former language-model head"),
    (r"(vision_proj|text_proj|itm_head)\..+|temp", "BLIP-2 contrastive/matching heads"),
    (r"visual_encoder\.blocks\.39\..+|visual_encoder\.(norm|fc_norm|head)\..+", "EVA parts BLIP-2 drops"),
    (r".*rotary_emb\.inv_freq", "rotary buffer, recomputed"),
)


def map_lavis_key(key: str) -> str | None:
    """Our parameter name for a LAVIS key; None when the key is deliberately ignored; KeyError when unknown.

    Ignored names are checked first: the release saves LLaMA's `rotary_emb.inv_freq` buffers under names the
    decoder-layer pattern would otherwise claim."""
    if any(re.fullmatch(pattern, key) for pattern, _ in LAVIS_IGNORED):
        return None
    for pattern, target in LAVIS_KEY_MAP:
        if re.fullmatch(pattern, key):
            return re.sub(pattern, target, key)
    raise KeyError(key)


def _merge_qkv_bias(mapped: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """EVA keeps q_bias and v_bias (no k bias); Blip2VisionModel holds one qkv.bias = [q, 0, v]."""
    merged = {k: v for k, v in mapped.items() if not k.endswith(("qkv.q_bias", "qkv.v_bias"))}
    for key in [k for k in mapped if k.endswith("qkv.q_bias")]:
        stem = key.removesuffix("q_bias")
        q, v = mapped[key], mapped.get(stem + "v_bias")
        if v is None:
            raise UserError(f"{key}: q_bias without v_bias; the EVA ViT weights are incomplete")
        merged[stem + "bias"] = torch.cat([q, torch.zeros_like(q), v])
    return merged


def read_torch_file(path: Path, what: str) -> dict[str, torch.Tensor]:
    """The state dict inside a `.pth` (LAVIS wraps it in `{"model": ...}`), loaded without executing code."""
    if not path.is_file():
        raise UserError(f"{what}: {path} not found; download it (see docs/model.md) or fix the path")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError) as error:
        raise UserError(
            f"{what}: {path} cannot be read as a weights-only checkpoint ({str(error).splitlines()[0]}); if you "
            "trust the file, re-save only its tensors: torch.save({'model': ckpt['model']}, 'clean.pth')"
        ) from None
    state = blob.get("model", blob) if isinstance(blob, dict) else None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"{what}: {path} holds no state dict (expected tensors, optionally under `model`)")
    return state


def load_lavis_weights(model: nn.Module, path: str | os.PathLike[str], prefix: str = "") -> dict[str, Any]:
    """Load a LAVIS-named `.pth` into `model` through the key map; returns what was loaded and ignored.

    `prefix` is prepended to every key first (`visual_encoder.` for the bare `eva_vit_g.pth`). Unknown keys, keys
    naming parts this model does not have, and shape mismatches are errors that list the offenders.
    """
    path = Path(path)
    state = read_torch_file(path, "LAVIS checkpoint")
    ours = model.state_dict()
    mapped: dict[str, torch.Tensor] = {}
    unknown, ignored = [], []
    for key, tensor in state.items():
        try:
            target = map_lavis_key(prefix + key)
        except KeyError:
            unknown.append(key)
            continue
        if target is None:
            ignored.append(key)
        elif target in mapped and not torch.equal(mapped[target], tensor):
            raise UserError(f"{path}: {key} disagrees with another copy of {target} in the same file")
        else:
            mapped[target] = tensor
    if unknown:
        raise UserError(
            f"{path}: {len(unknown)} key(s) not in the LAVIS key map, e.g. {unknown[:8]}; "
            "is this a BLIP-2/MiniGPT-4/Cheetah checkpoint? (see docs/model.md, key map)"
        )
    mapped = _merge_qkv_bias(mapped)
    absent = sorted(k for k in mapped if k not in ours)
    if absent:
        raise UserError(
            f"{path}: this model has no parameters for {absent[:8]} ({len(absent)} in all); the file belongs to a "
            "different architecture than the config's (e.g. EVA ViT weights with an EfficientNet vision encoder)"
        )
    wrong = [f"{k}: file {tuple(v.shape)} vs model {tuple(ours[k].shape)}" for k, v in mapped.items()
             if v.shape != ours[k].shape]  # fmt: skip
    if wrong:
        raise UserError(f"{path}: shape mismatch for {len(wrong)} tensor(s): {wrong[:5]}; check the config's arch")
    model.load_state_dict(mapped, strict=False)
    return {"file": str(path), "loaded": sorted(mapped), "ignored": sorted(ignored)}


# ------------------------------------------------------------------------------------------- our own format


def trainable_state_dict(model: nn.Module, extra_components: tuple[str, ...] = ()) -> dict[str, torch.Tensor]:
    """The tensors of every component the config marks trainable (`vpgc`, and `vpg` in the alignment stage), plus
    `extra_components`: frozen ones that exist nowhere else (a VPG trained by our alignment stage)."""
    trainable = [name for name, mode in model.config.freeze.items() if mode == "trainable"]
    components = trainable + [name for name in extra_components if name not in trainable]
    return {
        f"{name}.{key}": tensor.detach().cpu().contiguous()
        for name in components
        for key, tensor in getattr(model, name).state_dict().items()
    }


def save_stable(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str]) -> None:
    """`safetensors.torch.save_file`, but the same tensors and metadata always give the same bytes: safetensors
    writes the metadata map in the order of a Rust HashMap, seeded per process, which would make identical
    checkpoints hash differently (DVC outputs). The header is rewritten with the map sorted, at its length."""
    blob = bytearray(save(tensors, metadata=metadata))
    size = struct.unpack("<Q", blob[:8])[0]
    header = json.loads(blob[8 : 8 + size])
    header["__metadata__"] = dict(sorted(header["__metadata__"].items()))
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
    if len(text) > size:  # the same entries in another order: never longer
        raise RuntimeError(f"{path}: the rewritten safetensors header grew ({len(text)} > {size} bytes)")
    blob[8 : 8 + size] = text.ljust(size)  # safetensors pads its header with spaces
    path.write_bytes(blob)


def save_checkpoint(
    model: nn.Module,
    directory: str | os.PathLike[str],
    extra_components: tuple[str, ...] = (),
    training: dict[str, Any] | None = None,
) -> Path:
    """Write `weights.safetensors` (trainable components + `extra_components`), `config.yaml` (resolved config) and,
    given `training` (how it was trained), `training.json` into `directory`. Never name a component whose weights
    come from public files (`model.*.weights`)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = trainable_state_dict(model, extra_components)
    components = sorted({key.split(".", 1)[0] for key in state})
    with atomic.atomic_path(directory / WEIGHTS_FILE) as temp:
        save_stable(state, temp, metadata={"format": "demonlab-vpgc", "components": ",".join(components)})
    atomic.write_text(directory / CONFIG_FILE, yaml.safe_dump({"model": model.config.to_dict()}, sort_keys=False))
    if training is not None:
        atomic.write_text(directory / TRAINING_FILE, json.dumps(training, sort_keys=True, indent=1) + "\n")
    return directory


def checkpoint_record(directory: str | os.PathLike[str]) -> dict[str, Any]:
    """What identifies a checkpoint folder: the sha256 of its weights file (the key MLflow's logged model of it is
    tagged with, `components.tracking.models`) and its `training.json` (None when training wrote none)."""
    directory = Path(directory)
    path = directory / TRAINING_FILE
    training = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
    return {"sha256": hashlib.sha256((directory / WEIGHTS_FILE).read_bytes()).hexdigest(), "training": training}


def load_checkpoint(model: nn.Module, directory: str | os.PathLike[str]) -> list[str]:
    """Load a folder written by `save_checkpoint` into `model`; returns the components it replaced."""
    directory = Path(directory)
    path = directory / WEIGHTS_FILE
    if not path.is_file():
        raise UserError(
            f"checkpoint {directory}: no {WEIGHTS_FILE} there; point --checkpoint at a folder written by training"
        )
    state = load_file(path)
    ours = model.state_dict()
    unknown = sorted(k for k in state if k not in ours)
    if unknown:
        raise UserError(f"checkpoint {path}: unknown key(s) {unknown[:8]}; it was saved from another model layout")
    wrong = [f"{k}: file {tuple(v.shape)} vs model {tuple(ours[k].shape)}" for k, v in state.items()
             if v.shape != ours[k].shape]  # fmt: skip
    if wrong:
        raise UserError(
            f"checkpoint {path}: shape mismatch {wrong[:5]}; it belongs to another config (see its {CONFIG_FILE})"
        )
    components = sorted({key.split(".", 1)[0] for key in state})
    for name in components:  # a component is replaced whole, never half
        prefix = name + "."
        missing = sorted(k for k in ours if k.startswith(prefix) and k not in state)
        if missing:
            raise UserError(f"checkpoint {path}: component {name} lacks {missing[:5]}; the file is incomplete")
    model.load_state_dict(state, strict=False)
    return components
