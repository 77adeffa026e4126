"""VPG-C models of `components.vpgc` behind the adapter interface."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from components.errors import UserError
from components.evaluation.adapters.base import Encoded, Loaded, ModelAdapter, Request, SampleError
from components.vpgc.generation import GenerationSettings


class VPGCAdapter(ModelAdapter):
    """A `VPGCModel`: interleaved prompts in its own template, batched generation with VPG-C in the prefill."""

    kind = "vpgc"

    def __init__(
        self, spec: str, model: Any, blind: bool = False, prompt: str = "training", checkpoint: dict | None = None
    ) -> None:
        """`checkpoint`: the record of the checkpoint folder it was loaded from (`checkpoints.checkpoint_record`:
        weights sha256 and how it was trained), reported in the bundle; None for a model built from a config."""
        from components.vpgc.prompts import check_preset

        check_preset(prompt, model.config.prompt.template)
        config = model.config.replace(vpgc_enabled=model.vpgc_enabled).to_dict()
        # the preset changes the text the model reads, so it is part of what the cache knows the model by
        super().__init__(spec, {**config, "prompt_preset": prompt}, model, blind)
        self.model = model
        self.prompt = prompt
        self.default_max_new_tokens = model.config.prompt.max_new_tokens
        self.stop = tuple(model.config.prompt.stop)
        self.checkpoint = checkpoint

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), **({"checkpoint": self.checkpoint} if self.checkpoint else {})}

    def encode(self, request: Request) -> Encoded:
        from components.vpgc.prompts import Turn, layout

        template = self.model.config.prompt.template
        try:
            item = layout([Turn(user=request.parts)], self.model.tokenizer, template, self.model.vpg.num_query_tokens,
                          preset=self.prompt)  # fmt: skip
        except UserError as error:
            raise SampleError(str(error)) from None
        return Encoded(request, len(item.prompt_ids), item)

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
        prompt_batch, features = self.model.prepare(layouts, pixels, padding_side="left", cached=True)
        return generate(self.model, prompt_batch, features, settings)
