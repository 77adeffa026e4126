"""Models behind one interface: VPG-C models of `components.vpgc` and Hugging Face image-text-to-text models.

A `ModelAdapter` answers DEMON prompts in three steps, so the runner can sort, batch and recover per sample:

    encode(request)       -> Encoded   text only (tokenized prompt, its length): cheap, done for every sample first
    load(encoded)         -> Loaded    the sample's images decoded; a bad image raises `SampleError` for that sample
    generate([Loaded...]) -> [str]     one batch, any mix of image counts; may raise torch.OutOfMemoryError

Model specs (`load_adapter`):
- `experiments/<name>.yaml`: a VPG-C experiment config (`model:` section), weights as the config names them;
- a checkpoint folder (`weights.safetensors` + `config.yaml`, written by training);
- `models:/<name>@<alias>` or `runs:/<run id>/<path>`: an MLflow model, downloaded to a checkpoint folder;
- `hf:<hub id or local folder>`: any model with a chat template that `AutoProcessor` + `AutoModelForImageTextToText`
  load. Families that interleave images and text get the prompt interleaved; the others get the DEMON paper's
  fallback for such models: all images first, and `[Image k]` markers where the text referred to them.

`fingerprint` identifies what the model computes (its config + a hash of every weight + whether it is blind), so
cached responses are reused exactly when the same model answers the same prompt with the same settings.

A blind adapter (`blind=True`) is the control of an ablation: the same model with every image replaced by a blank
grey image of the same size, so the prompt and its token count are unchanged and only the pixels are withheld.
What a model scores above its blind control is what it got from the images.
"""

from __future__ import annotations

import hashlib
import json
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from components.demon.schema import Part
from components.errors import UserError
from components.vpgc.generation import GenerationSettings

HF_PREFIX = "hf:"
MLFLOW_PREFIXES = ("models:/", "runs:/")
HF_DEFAULT_MAX_NEW_TOKENS = 300  # the release's limit
BLANK_GREY = (128, 128, 128)  # a blind control's images: mid-grey, ~0 after the usual mean-0.5 normalisation
# model_type of HF families whose chat templates and training put images anywhere in the text. Others (LLaVA-1.5,
# LLaVA-NeXT, BLIP-2, ...) were trained with images before the text and get the images-first fallback.
INTERLEAVING_FAMILIES = frozenset(
    {"qwen2_vl", "qwen2_5_vl", "qwen3_vl", "idefics2", "idefics3", "smolvlm", "llava_onevision", "gemma3", "internvl"}
)
# Processors that want one list of images per text; the others take one flat list in order of appearance.
NESTED_IMAGE_FAMILIES = frozenset({"idefics", "idefics2", "idefics3", "smolvlm", "mllama"})
UNKNOWN_SPEC_HELP = (
    "give an experiment config (experiments/<name>.yaml), a checkpoint folder (weights.safetensors + config.yaml), "
    "an MLflow model (models:/<name>@<alias>, runs:/<run id>/<path>) or a Hugging Face model (hf:<id or folder>)"
)


class SampleError(Exception):
    """One sample cannot be run (an image that does not load, a prompt the model cannot take); the message says why."""


@dataclass(frozen=True)
class Request:
    """One DEMON instruction to answer: its interleaved parts (image paths relative to `image_root`)."""

    uid: str
    parts: list[Part]
    image_root: Path | None = None

    def image_paths(self) -> list[Path]:
        root = self.image_root
        return [root / p["path"] if root else Path(p["path"]) for p in self.parts if p["type"] == "image"]


@dataclass
class Encoded:
    """A request after the text-only step; `length` (prompt tokens, images included) orders the batches."""

    request: Request
    length: int
    payload: Any = None  # adapter-specific: a PromptLayout, or chat-template text


@dataclass
class Loaded:
    """An encoded request with its images decoded (`pixels`: adapter-specific)."""

    encoded: Encoded
    pixels: Any = field(default=None, repr=False)


def weights_sha256(module: nn.Module) -> str:
    """sha256 over every tensor of `module.state_dict()` (names, dtypes, shapes, bytes), in name order."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        data = tensor.detach().reshape(-1).contiguous()
        digest.update(f"{name}|{data.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(data.cpu().view(torch.uint8).numpy())  # the buffer itself, no copy
    return digest.hexdigest()


class ModelAdapter(ABC):
    """What the evaluation runner needs from a model (see the module docstring)."""

    kind: str
    default_max_new_tokens: int
    interleaved: bool = True

    def __init__(self, spec: str, config: dict[str, Any], module: nn.Module, blind: bool = False) -> None:
        self.spec = spec
        self.config = config  # JSON-able: what the model is, beyond its weights
        self.blind = blind
        self._module = module
        self._fingerprint: str | None = None

    @property
    def fingerprint(self) -> str:
        """sha256 of the adapter kind, the config, blindness and the weights (computed once)."""
        if self._fingerprint is None:
            head = json.dumps({"kind": self.kind, "config": self.config, "blind": self.blind}, sort_keys=True,
                              default=str)  # fmt: skip
            self._fingerprint = hashlib.sha256(f"{head}|{weights_sha256(self._module)}".encode()).hexdigest()
        return self._fingerprint

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "spec": self.spec, "fingerprint": self.fingerprint, "blind": self.blind,
                "config": self.config}  # fmt: skip

    def images(self, request: Request) -> list[Any]:
        """The request's images as RGB PIL images in prompt order; blank ones of the same sizes when blind."""
        from PIL import Image

        images = [open_rgb(path) for path in request.image_paths()]
        return [Image.new("RGB", image.size, BLANK_GREY) for image in images] if self.blind else images

    @property
    def device(self) -> torch.device:
        return next(self._module.parameters()).device

    @abstractmethod
    def encode(self, request: Request) -> Encoded: ...

    @abstractmethod
    def load(self, encoded: Encoded) -> Loaded: ...

    @abstractmethod
    def generate(self, batch: Sequence[Loaded], settings: GenerationSettings) -> list[str]: ...


def open_rgb(path: Path) -> Any:
    """A decoded RGB PIL image; `SampleError` naming the file when it is missing or unreadable."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except FileNotFoundError:
        raise SampleError(f"image {path} not found") from None
    except (OSError, ValueError, Image.DecompressionBombError) as error:
        raise SampleError(f"image {path} cannot be decoded ({error})") from None


# ----------------------------------------------------------------------------------------------------- VPG-C


class VPGCAdapter(ModelAdapter):
    """A `VPGCModel`: interleaved prompts in its own template, batched generation with VPG-C in the prefill."""

    kind = "vpgc"

    def __init__(self, spec: str, model: Any, blind: bool = False) -> None:
        super().__init__(spec, model.config.replace(vpgc_enabled=model.vpgc_enabled).to_dict(), model, blind)
        self.model = model
        self.default_max_new_tokens = model.config.prompt.max_new_tokens
        self.stop = tuple(model.config.prompt.stop)

    def encode(self, request: Request) -> Encoded:
        from components.vpgc.prompts import Turn

        try:
            layout = self.model.layouts([[Turn(user=request.parts)]])[0]
        except UserError as error:
            raise SampleError(str(error)) from None
        return Encoded(request, len(layout.prompt_ids), layout)

    def load(self, encoded: Encoded) -> Loaded:
        processor = self.model.image_processor
        size = self.model.config.vision.image_size
        pixels = [processor(image) for image in self.images(encoded.request)]
        return Loaded(encoded, torch.stack(pixels) if pixels else torch.zeros(0, 3, size, size))

    @torch.inference_mode()
    def generate(self, batch: Sequence[Loaded], settings: GenerationSettings) -> list[str]:
        from components.vpgc.generation import generate

        layouts = [item.encoded.payload for item in batch]
        pixels = torch.cat([item.pixels for item in batch])
        prompt_batch, features = self.model.prepare(layouts, pixels, padding_side="left")
        return generate(self.model, prompt_batch, features, settings)


# ------------------------------------------------------------------------------------------- Hugging Face


def render_hf_content(parts: Sequence[Part], interleaved: bool) -> tuple[list[dict[str, str]], list[str]]:
    """Chat-template content items and the image paths in the order the images appear.

    Interleaved: text and images in the prompt's order. Otherwise (the paper's fallback) every image first, in
    order, then the whole text with `[Image k]` where it referred to image k.
    """
    content: list[dict[str, str]] = []
    images: list[str] = []
    if interleaved:
        for part in parts:
            if part["type"] == "image":
                content.append({"type": "image"})
                images.append(part["path"])
            elif part["text"].strip():
                content.append({"type": "text", "text": part["text"]})
        return content, images
    text = []
    for part in parts:
        if part["type"] == "image":
            content.append({"type": "image"})
            images.append(part["path"])
            text.append(f"[Image {part['index']}]")
        else:
            text.append(part["text"])
    content.append({"type": "text", "text": "".join(text)})
    return content, images


class HFAdapter(ModelAdapter):
    """`AutoProcessor` + `AutoModelForImageTextToText`: one user turn through the processor's chat template."""

    kind = "hf"
    default_max_new_tokens = HF_DEFAULT_MAX_NEW_TOKENS

    def __init__(self, spec: str, model: Any, processor: Any, placement: str = "auto", blind: bool = False) -> None:
        family = model.config.model_type
        interleaved = family in INTERLEAVING_FAMILIES if placement == "auto" else placement == "interleaved"
        if getattr(processor, "chat_template", None) is None:
            raise UserError(f"{spec}: the processor has no chat template; DEMON prompts need one (a chat model)")
        config = {
            "model": model.config.to_dict(),
            "chat_template": processor.chat_template,
            "interleaved": interleaved,
        }
        super().__init__(spec, config, model, blind)
        self.model, self.processor, self.family, self.interleaved = model, processor, family, interleaved
        self.tokenizer = processor.tokenizer
        self.tokenizer.padding_side = "left"  # generation: every prompt ends at the last position
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token

    @classmethod
    def from_pretrained(cls, spec: str, device: str = "cpu", placement: str = "auto", blind: bool = False) -> HFAdapter:
        from transformers import AutoModelForImageTextToText, AutoProcessor

        source = spec.removeprefix(HF_PREFIX)
        try:
            processor = AutoProcessor.from_pretrained(source)
            model = AutoModelForImageTextToText.from_pretrained(source, dtype="auto")
        except (OSError, ValueError) as error:
            raise UserError(
                f"{spec}: cannot load it as an image-text-to-text model ({str(error).splitlines()[0]}); give a hub "
                "id that is downloaded (HF_HUB_OFFLINE=1 allows only cached ones) or a folder saved with "
                "save_pretrained holding both the processor and the model"
            ) from None
        return cls(spec, model.to(device).eval(), processor, placement, blind)

    def encode(self, request: Request) -> Encoded:
        content, images = render_hf_content(request.parts, self.interleaved)
        messages = [{"role": "user", "content": content}]
        text = self.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        # The processor expands each image into its visual tokens only with the pixels; for ordering, a text
        # token count plus a nominal 64 tokens per image is close enough.
        length = len(self.tokenizer(text, add_special_tokens=False).input_ids) + 64 * len(images)
        return Encoded(request, length, text)

    def load(self, encoded: Encoded) -> Loaded:
        return Loaded(encoded, self.images(encoded.request))

    @torch.inference_mode()
    def generate(self, batch: Sequence[Loaded], settings: GenerationSettings) -> list[str]:
        texts = [item.encoded.payload for item in batch]
        images: Any = [item.pixels for item in batch]
        if self.family not in NESTED_IMAGE_FAMILIES:
            images = [image for item in images for image in item]
        inputs = self.processor(text=texts, images=images or None, padding=True, return_tensors="pt")
        inputs = inputs.to(self.device)
        if "pixel_values" in inputs:
            inputs["pixel_values"] = inputs["pixel_values"].to(self.model.dtype)
        sampling = {"do_sample": True, "top_p": settings.top_p, "temperature": settings.temperature}
        if settings.do_sample:
            torch.manual_seed(settings.seed)  # HF draws from the global generator
        output = self.model.generate(
            **inputs,
            max_new_tokens=settings.max_new_tokens,
            pad_token_id=self.tokenizer.pad_token_id,
            **(sampling if settings.do_sample else {"do_sample": False}),
        )
        new_tokens = output[:, inputs["input_ids"].shape[1] :]
        return [text.strip() for text in self.tokenizer.batch_decode(new_tokens, skip_special_tokens=True)]


# ---------------------------------------------------------------------------------------------- resolution


def _is_checkpoint(path: Path) -> bool:
    from components.vpgc.checkpoints import CONFIG_FILE, WEIGHTS_FILE

    return (path / WEIGHTS_FILE).is_file() and (path / CONFIG_FILE).is_file()


def load_adapter(
    spec: str, vpgc: bool | None = None, device: str = "cpu", image_placement: str = "auto", blind: bool = False
) -> ModelAdapter:
    """The model a spec names (see the module docstring); `vpgc` switches VPG-C on or off (None: as configured);
    `blind` withholds the images (the blind control)."""
    if spec.startswith(HF_PREFIX):
        if vpgc is not None:
            raise UserError(f"{spec}: --vpgc applies to VPG-C models only; leave it out for Hugging Face models")
        return HFAdapter.from_pretrained(spec, device, image_placement, blind)
    from components.vpgc.config import load_config
    from components.vpgc.model import VPGCModel

    changes = {} if vpgc is None else {"vpgc_enabled": vpgc}
    if spec.startswith(MLFLOW_PREFIXES):
        import mlflow

        from components.tracking.models import download_checkpoint
        from components.tracking.runs import tracking_uri

        mlflow.set_tracking_uri(tracking_uri())  # the workspace's store unless MLFLOW_TRACKING_URI names another
        directory = Path(download_checkpoint(spec))
        return VPGCAdapter(spec, VPGCModel.from_checkpoint(directory, device=device, **changes).eval(), blind)
    path = Path(spec)
    if path.is_dir():
        if _is_checkpoint(path):
            return VPGCAdapter(spec, VPGCModel.from_checkpoint(path, device=device, **changes).eval(), blind)
        if (path / "config.json").is_file():
            raise UserError(f"{spec} looks like a Hugging Face model folder; pass it as hf:{spec}")
        raise UserError(f"{spec}: no weights.safetensors + config.yaml in this folder; {UNKNOWN_SPEC_HELP}")
    if path.is_file() and path.suffix in (".yaml", ".yml"):
        config = load_config(path)
        model = VPGCModel.from_config(config.replace(**changes) if changes else config, device=device)
        return VPGCAdapter(spec, model.eval(), blind)
    raise UserError(f"model {spec!r} not found; {UNKNOWN_SPEC_HELP}")
