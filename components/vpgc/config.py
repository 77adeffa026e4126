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
from typing import Annotated, Any, Literal, get_args

from components.config_schema import Bounds, Count, Positive, build, raise_problems, show
from components.experiment import load_experiment, plain, section

FreezeMode = Literal["frozen", "trainable"]
Component = Literal["llm", "vision", "vpg", "vpgc"]
VisionKind = Literal["eva_vit_g", "efficientnet_lite0"]
Template = Literal["vicuna_v0", "llama2_chat", "chat_template"]
Dtype = Literal["float32", "float16", "bfloat16"]
COMPONENTS: tuple[str, ...] = get_args(Component)
# Feature width of each vision encoder: the Q-Former's cross-attention input size must match it.
VISION_WIDTH = {"efficientnet_lite0": 1280}
# The released weights' sizes, which a config naming them must have: BLIP-2's Q-Former (LAVIS .pth, `vpg.weights`)
# and EVA ViT-g (`vision.weights` with kind eva_vit_g).
BLIP2_QFORMER = {"num_query_tokens": 32, "qformer.hidden_size": 768}
EVA_VIT_G_WIDTH = 1408


@dataclass(frozen=True)
class LLMConfig:
    """The frozen decoder. `source`: hub id, local folder, `.gguf` file or `package:` path; None = random weights."""

    arch: dict[str, Any]  # decoder config fields (`model_type` + shape), e.g. LlamaConfig's
    source: str | None = None
    tokenizer: str | None = None  # defaults to `source`
    dtype: Dtype = "float32"
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

    kind: VisionKind
    weights: str | None = None  # LAVIS eva_vit_g.pth, or the EfficientNet state dict
    image_size: Count = 224
    mean: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)  # CLIP
    std: tuple[Positive, Positive, Positive] = (0.26862954, 0.26130258, 0.27577711)
    arch: dict[str, Any] = field(default_factory=dict)  # Blip2VisionConfig fields (eva_vit_g only)
    dtype: Dtype = "float32"

    @property
    def width(self) -> int:
        if self.kind == "eva_vit_g":
            return int(self.arch.get("hidden_size", 1408))
        return VISION_WIDTH[self.kind]


@dataclass(frozen=True)
class VPGConfig:
    """The visual prompt generator: a Q-Former with learned queries + a linear projection to the LLM width."""

    qformer: dict[str, Any]  # Blip2QFormerConfig fields
    num_query_tokens: Count = 32
    weights: str | None = None  # a LAVIS BLIP-2 .pth (Q-Former, queries, ln_vision), loaded through the key map

    @property
    def hidden_size(self) -> int:
        return int(self.qformer.get("hidden_size", 768))


@dataclass(frozen=True)
class PromptConfig:
    """How a conversation becomes text: the chat template, the end symbol and generation lengths."""

    template: Template = "chat_template"
    stop: tuple[str, ...] = ()  # strings that end a reply (the end symbol); EOS always stops
    end_symbol: str = ""  # appended to training targets (`###` for Vicuna v0, `</s>` for LLaMA-2)
    max_new_tokens: Count = 300
    max_target_tokens: Count = 160  # training targets are truncated to this many tokens


@dataclass(frozen=True)
class ModelConfig:
    """The full MLLM: frozen LLM + frozen vision encoder + VPG, and the trainable VPG-C at `vpgc_layer`."""

    name: str
    llm: LLMConfig
    vision: VisionConfig
    vpg: VPGConfig
    prompt: PromptConfig = PromptConfig()
    vpgc_enabled: bool = True
    vpgc_layer: Annotated[int, Bounds(ge=1)] | None = None  # None = L/2, the paper's choice
    freeze: dict[Component, FreezeMode] = field(
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


DEFAULT_FREEZE: dict[str, str] = {"llm": "frozen", "vision": "frozen", "vpg": "frozen", "vpgc": "trainable"}


def model_config_from_dict(data: Any, where: str = "model") -> ModelConfig:
    """Build and validate a `ModelConfig` from the `model:` mapping (`where`: its key path in errors); a
    `ConfigError` lists every problem."""
    if isinstance(data, dict) and isinstance(data.get("freeze"), dict):  # a partial freeze keeps the defaults
        data = {**data, "freeze": {**DEFAULT_FREEZE, **data["freeze"]}}
    config = build(ModelConfig, data, where)
    raise_problems(problems(config, where))
    return config


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def problems(config: ModelConfig, where: str = "model") -> list[str]:
    """Rules between fields, which would otherwise fail deep inside a forward pass or a weight load."""
    found = []
    for key in ("num_hidden_layers", "hidden_size"):
        if not _positive_int(config.llm.arch.get(key)):
            found.append(f"{where}.llm.arch.{key}: required (an integer >= 1), got {show(config.llm.arch.get(key))}")
    if found:
        return found
    if not 0 < config.layer < config.llm.num_layers:
        found.append(f"{where}.vpgc_layer: must be a block of the LLM, 1..{config.llm.num_layers - 1} (it has "
                     f"{config.llm.num_layers}; null = L/2), got {config.layer}")  # fmt: skip
    encoder_width = config.vpg.qformer.get("encoder_hidden_size", 1408)
    if encoder_width != config.vision.width:
        found.append(f"{where}.vpg.qformer.encoder_hidden_size: must match the vision encoder's feature width "
                     f"{config.vision.width}, got {show(encoder_width)}")  # fmt: skip
    if config.vpg.weights is not None:  # BLIP-2's Q-Former: a config of other sizes cannot load it
        actual = {"num_query_tokens": config.vpg.num_query_tokens, "qformer.hidden_size": config.vpg.hidden_size}
        found += [f"{where}.vpg.{key}: vpg.weights names BLIP-2's Q-Former, of size {size}, got {show(actual[key])}"
                  for key, size in BLIP2_QFORMER.items() if actual[key] != size]  # fmt: skip
    if (
        config.vision.kind == "eva_vit_g"
        and config.vision.weights is not None
        and config.vision.width != EVA_VIT_G_WIDTH
    ):
        found.append(f"{where}.vision.arch.hidden_size: vision.weights names EVA ViT-g, of width {EVA_VIT_G_WIDTH}, "
                     f"got {show(config.vision.width)}")  # fmt: skip
    found += _source_problems(config, where)
    return found


def _source_problems(config: ModelConfig, where: str) -> list[str]:
    """`llm.arch` against the config.json of a local model folder `llm.source` names (read, nothing loaded)."""
    import json

    local = Path(config.llm.source or "").expanduser() / "config.json"
    if not config.llm.source or not local.is_file():
        return []
    try:
        named = json.loads(local.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    return [
        f"{where}.llm.arch.{key}: {local} says {named[key]}, got {show(config.llm.arch[key])}"
        for key in ("hidden_size", "num_hidden_layers", "vocab_size")
        if key in named and key in config.llm.arch and named[key] != config.llm.arch[key]
    ]


def load_config(path: str | os.PathLike[str]) -> ModelConfig:
    """The `model:` section of an experiment (or a checkpoint's config.yaml) as a validated `ModelConfig`; the
    whole file is validated first (`components.experiment.load_experiment`)."""
    return model_config_from_dict(section(load_experiment(path), "model", path))
