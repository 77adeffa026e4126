"""The full MLLM: frozen vision encoder -> VPG visual tokens spliced into a frozen LLM, VPG-C inside its prefill.

    images (M, 3, S, S) --vision--> features (M, N, Dv)            cached for VPG-C
    features --VPG--> visual tokens (M, Q, D) --collate--> inputs_embeds (B, T, D)
    LLM blocks 0..layer-1 -> VPG-C residual at the image positions -> blocks layer..L-1 -> logits (B, T, V)

Components and their freeze modes come from `ModelConfig` (`llm`, `vision`, `vpg`, `vpgc`); frozen components stay
in eval mode even when the model trains. `vpgc_enabled = False` gives the backbone alone ("backbone only").
`use_precision(torch.bfloat16)` stores the frozen backbones in bf16; the VPG and VPG-C keep float32 weights (they are
trained, small, and their checkpoints must not depend on the compute dtype). Tensors change dtype only where they
cross between the two (pixels into the encoder, features into the Q-Former, visual tokens and the VPG-C residual
into the LLM): no autocast, which measured no faster here and casts on every call.
"""

from __future__ import annotations

import inspect
import random
from collections.abc import Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers.modeling_outputs import CausalLMOutputWithPast

from components.vpgc.backbones import ImageProcessor, build_llm, build_vision, load_tokenizer, resolve_path
from components.vpgc.checkpoints import CONFIG_FILE, load_checkpoint, load_lavis_weights
from components.vpgc.config import COMPONENTS, ModelConfig, load_config
from components.vpgc.features import FeatureCache, encode_cached, encoder_fingerprint
from components.vpgc.prompts import Conversation, PromptBatch, PromptLayout, collate, layout
from components.vpgc.vpg import VisualPromptGenerator
from components.vpgc.vpgc import VPGC, VPGCHook, VPGCInputs, decoder_layers


class VPGCModel(nn.Module):
    def __init__(self, config: ModelConfig, llm: nn.Module, vision: nn.Module, tokenizer: Any = None) -> None:
        super().__init__()
        self.config = config
        self.llm = llm
        self.vision = vision
        llm_hidden = llm.config.hidden_size
        self.vpg = VisualPromptGenerator(config.vpg, llm_hidden)
        self.vpgc = VPGC(llm_hidden, config.vpg.hidden_size, config.vpg.num_query_tokens)
        self.vpgc.init_queries_from(self.vpg)
        self.hook = VPGCHook(llm, config.layer, self.vpgc, self.vpg)
        self.vpgc_enabled = config.vpgc_enabled
        self.tokenizer = tokenizer
        self.image_processor = ImageProcessor(config.vision)
        self.compute_dtype = torch.float32
        self.feature_cache = FeatureCache.from_environment()
        self._encoder_fingerprint: str | None = None  # computed at the first cached encoding
        for name in COMPONENTS:
            getattr(self, name).requires_grad_(config.trainable(name))
        self.train(False)

    @classmethod
    def from_config(
        cls,
        config: ModelConfig,
        load_weights: bool = True,
        device: str | torch.device = "cpu",
        with_tokenizer: bool = True,
    ) -> VPGCModel:
        """Build the model. `load_weights=False` gives random backbones; on `device="meta"` nothing is allocated
        and no tokenizer is loaded (nor with `with_tokenizer=False`: token ids only, e.g. GPU benchmarks).

        Weight order: backbones, then the VPG's BLIP-2 file (VPG-C's queries are copied from the VPG after it),
        then a released Cheetah checkpoint (`config.checkpoint`) that may override everything.
        """
        load_weights = load_weights and str(device) != "meta"
        with torch.device(device):
            llm = build_llm(config.llm, load_weights=load_weights)
            vision = build_vision(config.vision, load_weights=load_weights)
            tokenizer = load_tokenizer(config.llm) if with_tokenizer and str(device) != "meta" else None
            model = cls(config, llm, vision, tokenizer)
        if load_weights:
            if config.vision.kind == "eva_vit_g" and config.vision.weights:
                path = resolve_path(config.vision.weights, "model.vision.weights")
                load_lavis_weights(model, path, prefix="visual_encoder.")
            if config.vpg.weights:
                load_lavis_weights(model, resolve_path(config.vpg.weights, "model.vpg.weights"))
                model.vpgc.init_queries_from(model.vpg)
            if config.checkpoint:
                load_lavis_weights(model, resolve_path(config.checkpoint, "model.checkpoint"))
        return model.to(device)

    @classmethod
    def from_checkpoint(cls, directory: str | Path, device: str | torch.device = "cpu", **changes: Any) -> VPGCModel:
        """A model saved by `save_checkpoint`: its `config.yaml` (with `changes`, e.g. `vpgc_enabled=False`)
        names the frozen backbones, which load as usual; `weights.safetensors` then replaces what was trained."""
        config = load_config(Path(directory) / CONFIG_FILE)
        model = cls.from_config(config.replace(**changes) if changes else config, device=device)
        load_checkpoint(model, directory)
        return model

    def train(self, mode: bool = True) -> VPGCModel:
        """Only trainable components switch to training mode (dropout, BatchNorm statistics)."""
        super().train(False)
        for name in COMPONENTS:
            getattr(self, name).train(mode and self.config.trainable(name))
        return self

    @property
    def device(self) -> torch.device:
        return self.vpgc.output_proj.weight.device

    def use_precision(self, dtype: torch.dtype) -> VPGCModel:
        """Store the frozen pretrained backbones (LLM, vision encoder) in `dtype`, once: the bulk of the compute
        then runs in it. Trainable backbones keep float32 weights (their optimiser needs the masters)."""
        self.compute_dtype = dtype
        for name in ("llm", "vision"):
            if not self.config.trainable(name):
                getattr(self, name).to(dtype)
        self._encoder_fingerprint = None  # other weights: other features
        return self

    # ------------------------------------------------------------------------------------------------ inputs

    def encode_images(self, pixel_values: torch.Tensor, cached: bool = False) -> torch.Tensor:
        """(M, 3, S, S) -> vision features (M, N, Dv); no graph through a frozen encoder. `cached`: through the
        feature cache (`features.py`), for views that repeat (never training crops); a trained encoder never is."""
        if pixel_values.shape[0] == 0:
            return pixel_values.new_zeros(0, 1, self.vpg.qformer.config.encoder_hidden_size)
        if self.config.trainable("vision"):
            return self._encode(pixel_values)
        with torch.no_grad():
            if not cached or self.feature_cache is None:
                return self._encode(pixel_values)
            if self._encoder_fingerprint is None:
                self._encoder_fingerprint = encoder_fingerprint(self.vision)
            return encode_cached(self._encode, pixel_values, self._encoder_fingerprint, self.feature_cache, self.device)

    def _encode(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.vision(pixel_values.to(self.device, next(self.vision.parameters()).dtype))

    def load_pixels(
        self, paths: Sequence[str], image_root: str | Path | None = None, rng: random.Random | None = None
    ) -> torch.Tensor:
        """Images from disk (relative to `image_root` when given) -> (M, 3, S, S); `rng` selects train crops."""
        root = Path(image_root) if image_root is not None else None
        tensors = [self.image_processor(self.image_processor.open(root / p if root else p), rng) for p in paths]
        if not tensors:
            size = self.config.vision.image_size
            return torch.zeros(0, 3, size, size)
        return torch.stack(tensors)

    def layouts(
        self, conversations: Sequence[Conversation], targets: Sequence[str] | None = None
    ) -> list[PromptLayout]:
        if self.tokenizer is None:
            raise RuntimeError("this model was built without a tokenizer (meta device)")
        prompt = self.config.prompt
        return [
            layout(
                conversation,
                self.tokenizer,
                prompt.template,
                self.vpg.num_query_tokens,
                target=None if targets is None else targets[i],
                end_symbol=prompt.end_symbol,
                max_target_tokens=prompt.max_target_tokens,
            )
            for i, conversation in enumerate(conversations)
        ]

    def prepare(
        self,
        layouts: Sequence[PromptLayout],
        pixel_values: torch.Tensor,
        padding_side: str = "left",
        cached: bool = False,
    ) -> tuple[PromptBatch, torch.Tensor]:
        """Layouts + their images' pixels (M, 3, S, S, in layout order) -> (batch, features (M, N, Dv), kept for
        VPG-C); `cached`: see `encode_images`."""
        features = self.encode_images(pixel_values, cached)
        visual = self.vpg(features) if features.shape[0] else features.new_zeros(0, 1, 1)
        batch = collate(
            list(layouts),
            visual,
            self.llm.get_input_embeddings(),
            self.tokenizer.pad_token_id if self.tokenizer is not None else 0,
            padding_side,
        )
        return batch, features

    # ------------------------------------------------------------------------------------------------ forward

    def forward(
        self,
        batch: PromptBatch,
        features: torch.Tensor,
        cache: Any = None,
        logits_to_keep: int | torch.Tensor = 0,
    ) -> CausalLMOutputWithPast:
        """One full-sequence pass (training, scoring, or the generation prefill) with VPG-C when enabled.

        Returns the LLM output: logits (B, T or logits_to_keep, V), or (N, V) for a boolean (B, T) `logits_to_keep`
        (the N positions it marks, row by row); loss when `batch.labels` is set; the cache.
        """
        run_vpgc = self.vpgc_enabled and features.shape[0] > 0
        armed = (
            self.hook.armed(VPGCInputs(features, batch.image_batch_index, batch.image_starts, batch.guidance_index))
            if run_vpgc
            else nullcontext()
        )
        with armed:
            return self.llm(
                inputs_embeds=batch.inputs_embeds,
                attention_mask=batch.attention_mask,
                position_ids=batch.position_ids,
                labels=batch.labels,
                use_cache=cache is not None,
                logits_to_keep=logits_to_keep,
                **cache_argument(self.llm, cache),
            )

    @torch.no_grad()
    def vpg_attention(self, batch: PromptBatch, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Where the VPG looked in each image (paper section 2): its cross-attention over the M images' N vision
        tokens with its own queries (the first pass) and with VPG-C's instruction-guided queries (the
        re-extraction), two (M, N) tensors whose rows sum to 1 (`VisualPromptGenerator.cross_attention`).

        The guidance is read from a prefill without VPG-C, whose input to block `vpgc_layer` is the one VPG-C sees.
        """
        entering: list[torch.Tensor] = []

        def keep(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            entering.append(kwargs["hidden_states"] if "hidden_states" in kwargs else args[0])

        handle = decoder_layers(self.llm)[self.config.layer].register_forward_pre_hook(keep, with_kwargs=True)
        try:
            self.llm(inputs_embeds=batch.inputs_embeds, attention_mask=batch.attention_mask,
                     position_ids=batch.position_ids, use_cache=False, logits_to_keep=1)  # fmt: skip
        finally:
            handle.remove()
        inputs = VPGCInputs(features, batch.image_batch_index, batch.image_starts, batch.guidance_index)
        guided = self.vpgc.guided_queries(entering[0], inputs)  # (M, Q, Dq)
        return self.vpg.cross_attention(self.vpg.query_tokens, features), self.vpg.cross_attention(guided, features)

    def generate(
        self,
        conversations: Sequence[Conversation],
        image_root: str | Path | None = None,
        settings: Any = None,
        stats: Any = None,
    ) -> list[str]:
        """Replies to a batch of conversations (left padding, KV cache); `settings`/`stats`: see `generation`."""
        from components.vpgc.generation import GenerationSettings, generate

        layouts = self.layouts(conversations)
        pixels = self.load_pixels([p for item in layouts for p in item.images], image_root)
        batch, features = self.prepare(layouts, pixels, padding_side="left", cached=True)
        if settings is None:
            prompt = self.config.prompt
            settings = GenerationSettings(max_new_tokens=prompt.max_new_tokens, stop=prompt.stop)
        return generate(self, batch, features, settings, stats)


def cache_argument(llm: nn.Module, cache: Any) -> dict[str, Any]:
    """The KV cache keyword: `cache` since transformers 5.2x, `past_key_values` before (and still accepted)."""
    if cache is None:
        return {}
    name = "cache" if "cache" in inspect.signature(llm.forward).parameters else "past_key_values"
    return {name: cache}


def parameter_counts(model: VPGCModel) -> dict[str, dict[str, int]]:
    """Per component: total and trainable parameters (shared tensors, e.g. tied embeddings, counted once)."""
    counts = {}
    for name in COMPONENTS:
        params = {id(p): p for p in getattr(model, name).parameters()}.values()
        counts[name] = {
            "total": sum(p.numel() for p in params),
            "trainable": sum(p.numel() for p in params if p.requires_grad),
        }
    return counts
