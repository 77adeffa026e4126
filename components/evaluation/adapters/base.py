"""The adapter interface: a `ModelAdapter` answers DEMON `Request`s in three steps (encode, load, generate), and
the pieces every adapter shares (images opened one way, the blind control, the weights fingerprint)."""

from __future__ import annotations

import hashlib
import json
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from components.demon.schema import Part
from components.vpgc.generation import GenerationSettings

if TYPE_CHECKING:
    from components.evaluation.cache import ResponseCache

BLANK_GREY = (128, 128, 128)  # a blind control's images: mid-grey, ~0 after the usual mean-0.5 normalisation


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
    batch_size: int | None = None  # the adapter's own samples per `generate` call, over eval.batch_size (served models)

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

    def use_cache(self, cache: ResponseCache, generation_key: str) -> None:  # noqa: B027 (optional hook)
        """Given the run's response cache before any sample: an adapter that answers one request at a time (a
        served model) stores each answer as it arrives; the runner stores a batch's answers after the batch."""

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
