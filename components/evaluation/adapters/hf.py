"""Hugging Face image-text-to-text models behind the adapter interface, fed as their processor allows."""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from components.demon.schema import Part, to_parts
from components.errors import UserError
from components.evaluation.adapters.base import Encoded, Loaded, ModelAdapter, Request
from components.vpgc.generation import GenerationSettings

HF_PREFIX = "hf:"
HF_DEFAULT_MAX_NEW_TOKENS = 300  # the release's limit
logger = logging.getLogger(__name__)


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


PROBE_TEXTS = ("probe text one", "probe text two", "probe text three")
PROBE_SIZES = ((64, 48), (40, 72), (56, 56))  # (width, height): other shapes, so images cannot pass for each other


def template_interleaves(processor: Any) -> bool:
    """Whether the chat template renders images where they are among the texts (Idefics3, Gemma3, Qwen2-VL) rather
    than gathering them in one place (LLaVA-1.5/NeXT/OneVision render every image first, then every text)."""
    token = getattr(processor, "image_token", None)
    if not token:  # no placeholder to find in the text: treat it as unable to interleave
        return False
    one, two, three = PROBE_TEXTS
    content = [{"type": "text", "text": one}, {"type": "image"}, {"type": "text", "text": two}, {"type": "image"},
               {"type": "text", "text": three}]  # fmt: skip
    text = processor.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True,
                                         tokenize=False)  # fmt: skip
    images = [(match.start(), token) for match in re.finditer(re.escape(token), text)]
    marks = sorted([(text.find(t), t) for t in PROBE_TEXTS] + images)
    return [mark for _, mark in marks] == [one, token, two, token, three]


def image_only_processor_class(processor_class: type) -> type:
    """`processor_class` without its video processor: transformers 5 builds video processors with torchvision, and
    DEMON has no video. The processor's `__init__` still receives `video_processor=None`, which the trimmed
    attribute list leaves unchecked and unset; the class keeps its name, so a saved processor names the original."""

    class ImageOnly(processor_class):  # type: ignore[misc, valid-type]
        @classmethod
        def get_attributes(cls) -> list[str]:
            return [name for name in super().get_attributes() if "video" not in name]

    ImageOnly.__name__ = ImageOnly.__qualname__ = processor_class.__name__
    return ImageOnly


def load_hf_processor(source: str) -> Any:
    """`AutoProcessor`'s processor, or where torchvision is missing and the processor wants it for videos, the
    same processor without its video part."""
    from transformers import AutoConfig, AutoProcessor
    from transformers.models.auto.processing_auto import PROCESSOR_MAPPING
    from transformers.utils import is_torchvision_available

    try:
        return AutoProcessor.from_pretrained(source)
    except ImportError:
        if is_torchvision_available():
            raise
    processor_class = PROCESSOR_MAPPING[type(AutoConfig.from_pretrained(source))]
    return image_only_processor_class(processor_class).from_pretrained(source)


@dataclass(frozen=True)
class Feeding:
    """How a processor takes a batch, found by probing it (`probe_feeding`) and recorded in the model's config.

    nested: one list of images per prompt (Gemma3, Idefics3, LLaVA-OneVision's multi-image mode), else one flat
    list in order of appearance. interleaved: images where the prompt has them; else the paper's fallback (every
    image first, `[Image k]` markers in the text). template_interleaves: what the chat template can do.
    """

    nested: bool
    interleaved: bool
    template_interleaves: bool
    batches: bool  # False: no way of feeding gave a batch the prompts' own tokens, so prompts go one at a time

    def to_dict(self) -> dict[str, Any]:
        return {"images": "nested" if self.nested else "flat",
                "placement": "interleaved" if self.interleaved else "fallback",
                "template_interleaves": self.template_interleaves, "batches": self.batches}  # fmt: skip


def chat_text(processor: Any, parts: Sequence[Part], interleaved: bool) -> tuple[str, list[str]]:
    """One user turn through the chat template, ready for generation; the image paths in the order of the text."""
    content, images = render_hf_content(parts, interleaved)
    messages = [{"role": "user", "content": content}]
    return processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False), images


def processor_inputs(processor: Any, texts: list[str], images: list[list[Any]], nested: bool) -> Any:
    """The processor's tensors for a batch (`images`: each prompt's images), images nested or flattened."""
    flat = [image for per_prompt in images for image in per_prompt]
    given = (images if nested else flat) if flat else None
    return processor(text=texts, images=given, padding=True, return_tensors="pt")


def probe_feeding(spec: str, processor: Any, placement: str) -> Feeding:
    """Find how `processor` wants a batch: where its template puts images, then whether it takes one list of images
    per prompt or one flat list. A way is accepted when a batch of two prompts (two images, one image) gives each
    prompt the tokens it gets alone; nested is tried first, as it tells the processor which prompt owns an image."""
    from PIL import Image

    interleaves = template_interleaves(processor)
    if placement == "interleaved" and not interleaves:
        raise UserError(
            f"{spec}: its chat template puts every image in one place, so an interleaved prompt would lose which text "
            "refers to which image; use --image-placement auto or first (images first, [Image k] in the text)"
        )
    interleaved = interleaves if placement == "auto" else placement == "interleaved"
    prompts = [to_parts("Compare {image#1} with {image#2}", ["1", "2"]), to_parts("Describe {image#1}", ["3"])]
    texts = [chat_text(processor, parts, interleaved)[0] for parts in prompts]
    probes = [Image.new("RGB", size, (40 * i, 90, 160)) for i, size in enumerate(PROBE_SIZES)]
    images = [probes[:2], probes[2:]]
    failures, alone_works = [], []
    for nested in (True, False):
        way = "nested" if nested else "flat"
        try:
            alone = [
                processor_inputs(processor, [t], [i], nested)["input_ids"][0]
                for t, i in zip(texts, images, strict=True)
            ]
            alone_works.append(nested)
            batch = processor_inputs(processor, texts, images, nested)
            ids = [row[mask.bool()] for row, mask in zip(batch["input_ids"], batch["attention_mask"], strict=True)]
            if all(torch.equal(a, b) for a, b in zip(ids, alone, strict=True)):
                return Feeding(nested, interleaved, interleaves, batches=True)
            failures.append(f"{way}: a batch changes the prompts' image tokens")
        except Exception as error:  # a processor signals a way it does not take with any exception
            failures.append(f"{way}: {type(error).__name__}: {first_line(error)}")
    if not alone_works:
        raise UserError(f"{spec}: its processor takes neither nested nor flat images ({'; '.join(failures)})")
    logger.warning("%s: its processor does not batch prompts (%s); answering one prompt at a time", spec,
                   "; ".join(failures))  # fmt: skip
    return Feeding(alone_works[0], interleaved, interleaves, batches=False)


def first_line(error: BaseException) -> str:
    """The first non-empty line of an error's message (transformers' import errors start with a newline)."""
    return next((line.strip() for line in str(error).splitlines() if line.strip()), type(error).__name__)


class HFAdapter(ModelAdapter):
    """`AutoProcessor` + `AutoModelForImageTextToText`: one user turn through the processor's chat template, fed
    the way the processor was found to want it (`Feeding`, recorded in the config and so in the fingerprint)."""

    kind = "hf"
    default_max_new_tokens = HF_DEFAULT_MAX_NEW_TOKENS

    def __init__(self, spec: str, model: Any, processor: Any, placement: str = "auto", blind: bool = False) -> None:
        if getattr(processor, "chat_template", None) is None:
            raise UserError(f"{spec}: the processor has no chat template; DEMON prompts need one (a chat model)")
        self.tokenizer = processor.tokenizer
        self.tokenizer.padding_side = "left"  # generation: every prompt ends at the last position
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.feeding = probe_feeding(spec, processor, placement)
        config = {
            "model": model.config.to_dict(),
            "chat_template": processor.chat_template,
            "processor": type(processor).__name__,
            "feeding": self.feeding.to_dict(),
        }
        super().__init__(spec, config, model, blind)
        self.model, self.processor, self.family = model, processor, model.config.model_type
        self.interleaved = self.feeding.interleaved

    @classmethod
    def from_pretrained(cls, spec: str, device: str = "cpu", placement: str = "auto", blind: bool = False) -> HFAdapter:
        from transformers import AutoModelForImageTextToText

        source = spec.removeprefix(HF_PREFIX)
        try:
            processor = load_hf_processor(source)
            model = AutoModelForImageTextToText.from_pretrained(source, dtype="auto")
        except ImportError as error:
            raise UserError(f"{spec}: a library it needs is missing: {first_line(error)}") from None
        except (OSError, ValueError) as error:
            raise UserError(
                f"{spec}: cannot load it as an image-text-to-text model ({first_line(error)}); give a hub "
                "id that is downloaded (HF_HUB_OFFLINE=1 allows only cached ones) or a folder saved with "
                "save_pretrained holding both the processor and the model"
            ) from None
        return cls(spec, model.to(device).eval(), processor, placement, blind)

    def encode(self, request: Request) -> Encoded:
        text, images = chat_text(self.processor, request.parts, self.interleaved)
        # The processor expands each image into its visual tokens only with the pixels; for ordering, a text
        # token count plus a nominal 64 tokens per image is close enough.
        length = len(self.tokenizer(text, add_special_tokens=False).input_ids) + 64 * len(images)
        return Encoded(request, length, text)

    def load(self, encoded: Encoded) -> Loaded:
        return Loaded(encoded, self.images(encoded.request))

    def inputs(self, batch: Sequence[Loaded]) -> Any:
        """The processor's tensors for a batch, on the model's device (pixels in the model's dtype)."""
        texts = [item.encoded.payload for item in batch]
        inputs = processor_inputs(self.processor, texts, [item.pixels for item in batch], self.feeding.nested)
        inputs = inputs.to(self.device)
        if "pixel_values" in inputs:
            inputs["pixel_values"] = inputs["pixel_values"].to(self.model.dtype)
        return inputs

    @torch.inference_mode()
    def generate(self, batch: Sequence[Loaded], settings: GenerationSettings) -> list[str]:
        if not self.feeding.batches and len(batch) > 1:
            return [answer for item in batch for answer in self.generate([item], settings)]
        inputs = self.inputs(batch)
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
