"""The model's configuration: typed dataclasses read from the `model:` section of `experiments/<name>.yaml`.

The YAML is the schema's only source: every field below has a default or must be given there, unknown keys are
errors (a typo must not silently fall back to a default). Each backbone declares its architecture (`arch`) in the
file, so a model can be built on the meta device and counted without downloading anything.

Freezing vocabulary (torchtune style): `freeze: {llm: frozen, vision: frozen, vpg: frozen, vpgc: trainable}`.
Paths are either plain paths (relative ones resolve against the working directory) or `package:<module>/<file>`,
a file shipped inside an installed Python package, found with `importlib.util.find_spec` without importing it.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from components.errors import UserError
from components.experiment import plain

FreezeMode = Literal["frozen", "trainable"]
COMPONENTS = ("llm", "vision", "vpg", "vpgc")
VISION_KINDS = ("eva_vit_g", "efficientnet_lite0")
TEMPLATES = ("vicuna_v0", "llama2_chat", "chat_template")
DTYPES = ("float32", "float16", "bfloat16")
# Feature width of each vision encoder: the Q-Former's cross-attention input size must match it.
VISION_WIDTH = {"efficientnet_lite0": 1280}


@dataclass(frozen=True)
class LLMConfig:
    """The frozen decoder. `source`: hub id, local folder, `.gguf` file or `package:` path; None = random weights."""

    arch: dict[str, Any]  # decoder config fields (`model_type` + shape), e.g. LlamaConfig's
    source: str | None = None
    tokenizer: str | None = None  # defaults to `source`
    dtype: str = "float32"
    cache_dir: str | None = None  # plain safetensors copies of GGUF models; default ~/.cache/demonlab/llm

    @property
    def num_layers(self) -> int:
        return int(self.arch["num_hidden_layers"])

    @property
    def hidden_size(self) -> int:
        return int(self.arch["hidden_size"])


@dataclass(frozen=True)
class VisionConfig:
    """The frozen image encoder: EVA ViT-g (`Blip2VisionModel`) or EfficientNet-Lite0."""

    kind: str
    weights: str | None = None  # LAVIS eva_vit_g.pth, or the EfficientNet state dict
    image_size: int = 224
    mean: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)  # CLIP
    std: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)
    arch: dict[str, Any] = field(default_factory=dict)  # Blip2VisionConfig fields (eva_vit_g only)
    dtype: str = "float32"

    @property
    def width(self) -> int:
        if self.kind == "eva_vit_g":
            return int(self.arch.get("hidden_size", 1408))
        return VISION_WIDTH[self.kind]


@dataclass(frozen=True)
class VPGConfig:
    """The visual prompt generator: a Q-Former with learned queries + a linear projection to the LLM width."""

    qformer: dict[str, Any]  # Blip2QFormerConfig fields
    num_query_tokens: int = 32
    weights: str | None = None  # a LAVIS BLIP-2 .pth (Q-Former, queries, ln_vision), loaded through the key map

    @property
    def hidden_size(self) -> int:
        return int(self.qformer.get("hidden_size", 768))


@dataclass(frozen=True)
class PromptConfig:
    """How a conversation becomes text: the chat template, the end symbol and generation lengths."""

    template: str = "chat_template"
    stop: tuple[str, ...] = ()  # strings that end a reply (the end symbol); EOS always stops
    end_symbol: str = ""  # appended to training targets (`###` for Vicuna v0, `</s>` for LLaMA-2)
    max_new_tokens: int = 300
    max_target_tokens: int = 160  # training targets are truncated to this many tokens


@dataclass(frozen=True)
class ModelConfig:
    """The full MLLM: frozen LLM + frozen vision encoder + VPG, and the trainable VPG-C at `vpgc_layer`."""

    name: str
    llm: LLMConfig
    vision: VisionConfig
    vpg: VPGConfig
    prompt: PromptConfig = PromptConfig()
    vpgc_enabled: bool = True
    vpgc_layer: int | None = None  # None = L/2, the paper's choice
    freeze: dict[str, str] = field(
        default_factory=lambda: {"llm": "frozen", "vision": "frozen", "vpg": "frozen", "vpgc": "trainable"}
    )
    checkpoint: str | None = None  # a released Cheetah .pth (LAVIS key names), applied after the backbones

    @property
    def layer(self) -> int:
        """The decoder block VPG-C runs before: blocks 0..layer-1 see the original visual tokens."""
        return self.llm.num_layers // 2 if self.vpgc_layer is None else self.vpgc_layer

    def trainable(self, component: str) -> bool:
        return self.freeze[component] == "trainable"

    def to_dict(self) -> dict[str, Any]:
        """Plain data for YAML/JSON (tuples become lists), the inverse of `model_config_from_dict`."""
        return plain(dataclasses.asdict(self))

    def replace(self, **changes: Any) -> ModelConfig:
        return dataclasses.replace(self, **changes)


def _build(cls: type, data: Any, where: str) -> Any:
    """Instantiate dataclass `cls` from a mapping, rejecting unknown keys and missing required ones."""
    if not isinstance(data, dict):
        raise UserError(f"{where}: expected a mapping, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise UserError(f"{where}: unknown key(s) {unknown}; allowed: {sorted(fields)}")
    kwargs = {}
    for name, value in data.items():
        if name in ("mean", "std", "stop"):
            value = tuple(value)
        kwargs[name] = value
    try:
        return cls(**kwargs)
    except TypeError as error:  # a required key is missing
        raise UserError(f"{where}: {error}") from None


def model_config_from_dict(data: dict[str, Any], where: str = "model") -> ModelConfig:
    """Build and validate a `ModelConfig` from the `model:` mapping; `where` names the source in errors."""
    if not isinstance(data, dict):
        raise UserError(f"{where}: expected a mapping, got {type(data).__name__}")
    data = dict(data)
    for key in ("llm", "vision", "vpg"):
        if key not in data:
            raise UserError(f"{where}: missing section `{key}`")
    sections = {
        "llm": _build(LLMConfig, data.pop("llm"), f"{where}.llm"),
        "vision": _build(VisionConfig, data.pop("vision"), f"{where}.vision"),
        "vpg": _build(VPGConfig, data.pop("vpg"), f"{where}.vpg"),
    }
    if "prompt" in data:
        sections["prompt"] = _build(PromptConfig, data.pop("prompt"), f"{where}.prompt")
    if "freeze" in data:
        freeze = {"llm": "frozen", "vision": "frozen", "vpg": "frozen", "vpgc": "trainable"}
        freeze.update(data.pop("freeze") or {})
        sections["freeze"] = freeze
    config = _build(ModelConfig, {**data, **sections}, where)
    validate(config, where)
    return config


def validate(config: ModelConfig, where: str = "model") -> None:
    """Cross-field checks that would otherwise fail deep inside a forward pass."""
    for component, mode in config.freeze.items():
        if component not in COMPONENTS:
            raise UserError(f"{where}.freeze: unknown component {component!r}; use {list(COMPONENTS)}")
        if mode not in ("frozen", "trainable"):
            raise UserError(f"{where}.freeze.{component}: {mode!r} is not `frozen` or `trainable`")
    if "num_hidden_layers" not in config.llm.arch or "hidden_size" not in config.llm.arch:
        raise UserError(f"{where}.llm.arch: needs at least `num_hidden_layers` and `hidden_size`")
    if not 0 < config.layer < config.llm.num_layers:
        raise UserError(
            f"{where}.vpgc_layer: {config.layer} is outside 1..{config.llm.num_layers - 1} "
            f"(the LLM has {config.llm.num_layers} blocks; null means L/2)"
        )
    if config.vision.kind not in VISION_KINDS:
        raise UserError(f"{where}.vision.kind: {config.vision.kind!r} is not one of {list(VISION_KINDS)}")
    encoder_width = config.vpg.qformer.get("encoder_hidden_size", 1408)
    if encoder_width != config.vision.width:
        raise UserError(
            f"{where}.vpg.qformer.encoder_hidden_size: {encoder_width} does not match the vision encoder's "
            f"feature width {config.vision.width}; set it to {config.vision.width}"
        )
    if config.prompt.template not in TEMPLATES:
        raise UserError(f"{where}.prompt.template: {config.prompt.template!r} is not one of {list(TEMPLATES)}")
    for key, dtype in (("llm", config.llm.dtype), ("vision", config.vision.dtype)):
        if dtype not in DTYPES:
            raise UserError(f"{where}.{key}.dtype: {dtype!r} is not one of {list(DTYPES)}")


def load_config(path: str | os.PathLike[str]) -> ModelConfig:
    """Read `experiments/<name>.yaml` and return its `model:` section as a validated `ModelConfig`."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: config file not found; pick one of experiments/*.yaml")
    try:
        document = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise UserError(f"{path}: not valid YAML ({error})") from None
    if not isinstance(document, dict) or "model" not in document:
        raise UserError(f"{path}: no `model:` section; the model settings live under a top-level `model:` key")
    return model_config_from_dict(document["model"], where=f"{path}: model")
