"""The Chat tab's engine: checked uploads and instructions, and one VPG-C model answering a conversation twice, with
VPG-C on and with VPG-C off (the backbone alone), each side keeping its own history.

    uploads (1-8 image files)      --check_images--> paths in the user's order, image k = {image#k}
    instruction with {image#k}     --user_turn-->    interleaved parts; with no {image#k}, every image goes first
    Engine.ask(spec, conversations, decoding) ->     {True: Reply (VPG-C on), False: Reply (off)} + attention maps

One model is held at a time (a 7B model fills a GPU) and answers one request at a time: VPG-C is switched on the
model itself (`model.vpgc_enabled`), so two requests must not interleave. Components a config leaves random (tiny's
VPG before alignment) are drawn from seed 0, so reloading a spec gives the same model.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

from components.demo.maps import ImageMaps, image_maps
from components.demon.schema import Part, placeholder_indices
from components.errors import UserError
from components.vpgc.cli import question_parts
from components.vpgc.generation import GenerationSettings, GenerationStats
from components.vpgc.model import VPGCModel
from components.vpgc.prompts import Conversation, Turn, render

logger = logging.getLogger(__name__)
MAX_IMAGES = 8  # DEMON's instructions hold up to 8 images in the tasks the paper's model takes


@dataclass(frozen=True)
class Limits:
    """What an upload may be: the checks run before any image reaches the model."""

    max_images: int = MAX_IMAGES
    max_bytes: int = 20 * 2**20
    max_pixels: int = 40_000_000  # below Pillow's decompression-bomb guard (~89 M), which would only warn


def with_model_stops(decoding: GenerationSettings, model: VPGCModel) -> GenerationSettings:
    """The page's decoding controls plus the model's own stop strings."""
    return dataclasses.replace(decoding, stop=tuple(model.config.prompt.stop))


def describe_decoding(decoding: GenerationSettings) -> str:
    how = (
        f"top-p {decoding.top_p}, temperature {decoding.temperature}, seed {decoding.seed}"
        if decoding.do_sample
        else "greedy"
    )
    return f"{how}, at most {decoding.max_new_tokens} new tokens"


@dataclass(frozen=True)
class Reply:
    text: str
    prompt: str  # exactly the text that was tokenized; each <HereForImage> became the image's Q visual tokens
    prompt_tokens: int  # visual tokens included
    new_tokens: int
    prefill_s: float
    decode_s: float
    total_s: float  # images read and encoded, prefill and decode


def check_images(paths: Sequence[str], limits: Limits) -> list[str]:
    """The uploaded files in order, each a decodable image within the limits; UserError naming the first bad one."""
    if not paths:
        raise UserError("upload at least one image")
    if len(paths) > limits.max_images:
        raise UserError(f"{len(paths)} images uploaded; the model takes at most {limits.max_images}")
    for k, path in enumerate(paths, 1):
        name = Path(path).name
        size = Path(path).stat().st_size
        if size > limits.max_bytes:
            raise UserError(
                f"image {k} ({name}) is {size / 2**20:.3g} MB; the limit is {limits.max_bytes / 2**20:.3g} MB"
            )
        try:
            with Image.open(path) as image:
                width, height = image.size
                if width * height > limits.max_pixels:
                    raise UserError(
                        f"image {k} ({name}) has {width}x{height} pixels; the limit is "
                        f"{limits.max_pixels / 1e6:g} megapixels"
                    )
                image.convert("RGB")  # decodes it: a truncated file fails here, not inside the model
        except (OSError, ValueError, Image.DecompressionBombError) as error:
            reason = str(error).replace(str(path), name)  # the server's upload folder is not the user's business
            raise UserError(f"image {k} ({name}) is not an image Pillow can read ({reason})") from None
    return list(paths)


def user_turn(instruction: str, images: Sequence[str], first_turn: bool) -> list[Part]:
    """The interleaved parts of one user turn (`components.vpgc.cli.question_parts`), checked against the uploads.

    In the first turn an instruction that places images with {image#k} must place every uploaded image (a forgotten
    one would silently move to the front); one with no {image#k} gets every image first, in upload order. Later
    turns show image k again only where they write {image#k}."""
    if not instruction.strip():
        raise UserError("write an instruction; refer to the images as {image#1}, {image#2}, ...")
    referenced = placeholder_indices(instruction)
    missing = sorted({k for k in referenced if not 1 <= k <= len(images)})
    if missing:
        raise UserError(f"the instruction refers to {{image#{missing[0]}}} but {len(images)} image(s) are uploaded")
    unplaced = [k for k in range(1, len(images) + 1) if k not in referenced]
    if first_turn and referenced and unplaced:
        raise UserError(
            f"image {unplaced[0]} is uploaded but the instruction does not place it; write "
            f"{{image#{unplaced[0]}}} where it belongs, or remove the image"
        )
    return question_parts(instruction, list(images), first_turn=first_turn)


def prompt_text(model: VPGCModel, conversation: Conversation) -> str:
    """The prompt exactly as tokenized (`prompts.layout`), BOS written out where the template prepends it."""
    text, _, add_bos = render(conversation, model.config.prompt.template, model.tokenizer)
    return f"{model.tokenizer.bos_token or ''}{text}" if add_bos else text


def answer(model: VPGCModel, conversation: Conversation, settings: GenerationSettings, vpgc: bool) -> Reply:
    """The model's reply to a conversation that ends with a user turn, with VPG-C on or off."""
    model.vpgc_enabled = vpgc
    stats = GenerationStats()
    start = time.perf_counter()
    text = model.generate([conversation], settings=settings, stats=stats)[0]
    return Reply(
        text,
        prompt_text(model, conversation),
        stats.prompt_tokens,
        stats.new_tokens,
        stats.prefill_s,
        stats.decode_s,
        time.perf_counter() - start,
    )


def vpgc_is_trained(model: VPGCModel) -> bool:
    """False while Linear_2 is still zero (as initialised): VPG-C then adds nothing and both answers are the same."""
    projection = model.vpgc.output_proj
    return bool(projection.weight.any() or projection.bias.any())


class Engine:
    """The loaded model (one at a time) and a lock so one request runs at a time."""

    def __init__(self, device: str = "cpu") -> None:
        self.device = device
        self.spec: str | None = None
        self.model: VPGCModel | None = None
        self.description = ""
        self._lock = threading.Lock()

    def load(self, spec: str) -> str:
        """Load the model `spec` names (`load_adapter`'s specs) unless it is loaded; returns what was loaded."""
        with self._lock:
            self._load(spec)
            return self.description

    def _load(self, spec: str) -> VPGCModel:
        from components.evaluation.adapters import HF_PREFIX, first_line, load_adapter

        spec = spec.strip()
        if not spec:
            raise UserError("pick a model: a checkpoint folder, models:/<name>@<alias> or experiments/<name>.yaml")
        if spec.startswith(HF_PREFIX):
            raise UserError(f"{spec} is not a VPG-C model; the demo compares VPG-C on and off, which needs one")
        if spec == self.spec and self.model is not None:
            return self.model
        self.spec, self.model = None, None  # free the previous model before building the next
        start = time.perf_counter()
        torch.manual_seed(0)
        try:
            adapter = load_adapter(spec, device=self.device)
        except UserError:
            raise
        except Exception as error:  # damaged weights, a config the classes reject: name the spec, keep serving
            logger.warning("%s does not load", spec, exc_info=True)
            raise UserError(f"{spec} does not load: {type(error).__name__}: {first_line(error)}") from error
        model = adapter.model
        config = model.config
        trained = "trained" if vpgc_is_trained(model) else "untrained (zero Linear_2): both answers will be the same"
        self.description = (
            f"`{spec}`: {config.name}, VPG-C before block {config.layer} of {model.llm.config.num_hidden_layers}, "
            f"{trained}; loaded in {time.perf_counter() - start:.1f} s on {self.device}"
        )
        self.spec, self.model = spec, model
        return model

    def ask(
        self, spec: str, conversations: Mapping[bool, Conversation], decoding: GenerationSettings
    ) -> tuple[dict[bool, Reply], list[ImageMaps]]:
        """Both replies (each conversation ends with the same new user turn) and the maps of the VPG-C side."""
        with self._lock:
            model = self._load(spec)
            settings = with_model_stops(decoding, model)
            replies = {vpgc: answer(model, conversations[vpgc], settings, vpgc) for vpgc in (True, False)}
            return replies, image_maps(model, conversations[True])


def new_conversations() -> dict[bool, Conversation]:
    """The two histories, VPG-C on (True) and off (False): each side is followed up on its own answers."""
    return {True: [], False: []}


def add_turn(conversations: Mapping[bool, Conversation], parts: list[Part]) -> dict[bool, Conversation]:
    return {vpgc: [*history, Turn(user=list(parts))] for vpgc, history in conversations.items()}
