"""Tiny randomly initialised Hugging Face VLMs of the families researchers evaluate, built offline with each family's
own config, processor and image-processor classes and a chat template of the same shape as the released one, then
saved with `save_pretrained` as a downloaded model would be.

Every family shares SmolLM2's real tokenizer plus the family's special tokens; vision towers take 28x28 inputs
(2x2 patches of 14), so a model is a few million parameters (mostly the 49k-token embeddings) and answers in
milliseconds on a CPU. Families whose processor has a video processor (Qwen2-VL, Qwen2.5-VL, LLaVA-OneVision) are
built without it, as torchvision (which video processors need) cannot be installed beside the CPU torch wheel here;
the folder still names the full processor class and declares the video processor, so `AutoProcessor` fails on it
exactly as it does on a downloaded model where torchvision is missing.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import transformers as tf

from components.evaluation.adapters import image_only_processor_class

# Chat templates: the released ones' shapes, reduced to one user turn and the generation prompt.
INTERLEAVING_TEMPLATE = (  # Idefics3, Gemma3, Qwen2-VL: content items in order, each image where it is
    "{{ bos }}{% for message in messages %}{{ message['role'] }}:{% for item in message['content'] %}"
    "{% if item['type'] == 'image' %}{{ image }}{% else %}{{ item['text'] }}{% endif %}{% endfor %}{{ eot }}\n"
    "{% endfor %}{% if add_generation_prompt %}assistant:{% endif %}"
)
IMAGES_FIRST_TEMPLATE = (  # LLaVA-NeXT, LLaVA-OneVision: every image first, then every text item
    "{% for message in messages %}{{ message['role'] }}: "
    "{% for item in message['content'] | selectattr('type', 'equalto', 'image') %}<image>\n{% endfor %}"
    "{% for item in message['content'] | selectattr('type', 'equalto', 'text') %}{{ item['text'] }}{% endfor %}\n"
    "{% endfor %}{% if add_generation_prompt %}assistant:{% endif %}"
)


def interleaving_template(image: str, bos: str = "", eot: str = "") -> str:
    return INTERLEAVING_TEMPLATE.replace("{{ image }}", image).replace("{{ bos }}", bos).replace("{{ eot }}", eot)


def text_config(tokenizer: Any, config_class: type = tf.LlamaConfig, **kwargs: Any) -> Any:
    """A 2-layer decoder of width 64 over the tokenizer's vocabulary."""
    dims = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4}
    return config_class(
        vocab_size=len(tokenizer),
        num_key_value_heads=2,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        **{**dims, **kwargs},
    )


def vision_kwargs(**kwargs: Any) -> dict[str, Any]:
    """A 1-layer ViT of width 32 over 28x28 images (2x2 patches of 14)."""
    return {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2,
            "image_size": 28, "patch_size": 14, **kwargs}  # fmt: skip


def token_id(tokenizer: Any, token: str) -> int:
    return tokenizer.convert_tokens_to_ids(token)


def with_tokens(tokenizer: Any, tokens: list[str]) -> Any:
    tokenizer.add_special_tokens({"additional_special_tokens": tokens})
    return tokenizer


def idefics3(tokenizer: Any) -> tuple[Any, Any]:
    # Idefics3Processor adds <image>, <fake_token_around_image>, <end_of_utterance> itself; images are split into
    # tiles of 28 (max 2x2) plus a global view, each tile scale_factor**2 = 4 patches -> 1 token.
    with_tokens(tokenizer, ["<global-img>"] + [f"<row_{i}_col_{j}>" for i in range(1, 7) for j in range(1, 7)])
    processor = tf.Idefics3Processor(
        tf.Idefics3ImageProcessorPil(size={"longest_edge": 56}, max_image_size={"longest_edge": 28}),
        tokenizer,
        image_seq_len=1,
        chat_template=interleaving_template("<image>", eot="<end_of_utterance>"),
    )
    config = tf.Idefics3Config(
        vision_config=tf.Idefics3VisionConfig(**vision_kwargs()),
        text_config=text_config(tokenizer),
        image_token_id=token_id(tokenizer, "<image>"),
        scale_factor=2,
    )
    return processor, tf.Idefics3ForConditionalGeneration(config)


PINPOINTS = [[28, 28], [28, 56], [56, 28], [56, 56]]


def llava_next(tokenizer: Any) -> tuple[Any, Any]:
    with_tokens(tokenizer, ["<image>"])
    processor = tf.LlavaNextProcessor(
        tf.LlavaNextImageProcessorPil(
            size={"shortest_edge": 28}, crop_size={"height": 28, "width": 28}, image_grid_pinpoints=PINPOINTS
        ),
        tokenizer,
        patch_size=14,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=IMAGES_FIRST_TEMPLATE,
    )
    config = tf.LlavaNextConfig(
        vision_config=tf.CLIPVisionConfig(**vision_kwargs()),
        text_config=text_config(tokenizer),
        image_token_index=token_id(tokenizer, "<image>"),
        image_grid_pinpoints=PINPOINTS,
        vision_feature_select_strategy="default",
    )
    return processor, tf.LlavaNextForConditionalGeneration(config)


def llava_onevision(tokenizer: Any) -> tuple[Any, Any]:
    with_tokens(tokenizer, ["<image>", "<video>"])
    processor = image_only_processor_class(tf.LlavaOnevisionProcessor)(
        image_processor=tf.LlavaOnevisionImageProcessorPil(
            size={"height": 28, "width": 28}, image_grid_pinpoints=PINPOINTS
        ),
        tokenizer=tokenizer,
        num_image_tokens=4,
        vision_feature_select_strategy="full",
        chat_template=IMAGES_FIRST_TEMPLATE,
    )
    config = tf.LlavaOnevisionConfig(
        vision_config=tf.SiglipVisionConfig(**vision_kwargs()),
        text_config=text_config(tokenizer),
        image_token_index=token_id(tokenizer, "<image>"),
        video_token_index=token_id(tokenizer, "<video>"),
        image_grid_pinpoints=PINPOINTS,
    )
    return processor, tf.LlavaOnevisionForConditionalGeneration(config)


GEMMA3_TOKENS = {"boi_token": "<start_of_image>", "eoi_token": "<end_of_image>", "image_token": "<image_soft_token>"}


def gemma3(tokenizer: Any) -> tuple[Any, Any]:
    # Gemma3's processor reads its image tokens from tokenizer attributes, which `save_tiny` declares on loading
    # the tokenizer (as Gemma's tokenizer config does); here they join the vocabulary.
    with_tokens(tokenizer, list(GEMMA3_TOKENS.values()))
    processor = tf.Gemma3Processor(
        tf.Gemma3ImageProcessorPil(size={"height": 28, "width": 28}),
        tokenizer,
        image_seq_length=4,
        chat_template=interleaving_template("<start_of_image>", bos="<|im_start|>", eot="<end_of_turn>"),
    )
    text = text_config(tokenizer, tf.Gemma3TextConfig, head_dim=16, sliding_window=64)
    config = tf.Gemma3Config(
        text_config=text,
        vision_config=tf.SiglipVisionConfig(**vision_kwargs()),
        mm_tokens_per_image=4,
        boi_token_index=tokenizer.boi_token_id,
        eoi_token_index=tokenizer.eoi_token_id,
        image_token_index=tokenizer.image_token_id,
    )
    return processor, tf.Gemma3ForConditionalGeneration(config)


QWEN_ROPE = {"rope_type": "default", "mrope_section": [2, 3, 3], "rope_theta": 10000.0}  # sums to head_dim 16 / 2
QWEN_TOKENS = ["<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]


def qwen_processor(tokenizer: Any, processor_class: type) -> Any:
    # patch 14, merge 2: 28x28 pixels per token; 1 to 4 tokens per image
    images = tf.Qwen2VLImageProcessorPil(min_pixels=28 * 28, max_pixels=56 * 56)
    template = interleaving_template("<|vision_start|><|image_pad|><|vision_end|>", eot="<|im_end|>")
    return image_only_processor_class(processor_class)(
        image_processor=images, tokenizer=tokenizer, chat_template=template
    )


def qwen_ids(tokenizer: Any) -> dict[str, int]:
    return {
        "image_token_id": token_id(tokenizer, "<|image_pad|>"),
        "video_token_id": token_id(tokenizer, "<|video_pad|>"),
        "vision_start_token_id": token_id(tokenizer, "<|vision_start|>"),
        "vision_end_token_id": token_id(tokenizer, "<|vision_end|>"),
    }


def qwen2_vl(tokenizer: Any) -> tuple[Any, Any]:
    with_tokens(tokenizer, QWEN_TOKENS)
    config = tf.Qwen2VLConfig(
        text_config=text_config(tokenizer, tf.Qwen2VLTextConfig, rope_parameters=QWEN_ROPE),
        vision_config=tf.Qwen2VLVisionConfig(depth=1, embed_dim=32, hidden_size=64, num_heads=2),
        **qwen_ids(tokenizer),
    )
    return qwen_processor(tokenizer, tf.Qwen2VLProcessor), tf.Qwen2VLForConditionalGeneration(config)


def qwen2_5_vl(tokenizer: Any) -> tuple[Any, Any]:
    with_tokens(tokenizer, QWEN_TOKENS)
    vision = tf.Qwen2_5_VLVisionConfig(
        depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64, fullatt_block_indexes=[1]
    )
    config = tf.Qwen2_5_VLConfig(
        text_config=text_config(tokenizer, tf.Qwen2_5_VLTextConfig, rope_parameters=QWEN_ROPE),
        vision_config=vision,
        **qwen_ids(tokenizer),
    )
    return qwen_processor(tokenizer, tf.Qwen2_5_VLProcessor), tf.Qwen2_5_VLForConditionalGeneration(config)


# What the released folders declare beside the image processor (`save_tiny` writes it; nothing here can build it).
VIDEO_PROCESSORS = {
    "qwen2_vl": "Qwen2VLVideoProcessor",
    "qwen2_5_vl": "Qwen2VLVideoProcessor",
    "llava_onevision": "LlavaOnevisionVideoProcessor",
}
FAMILIES: dict[str, Callable[[Any], tuple[Any, Any]]] = {
    "idefics3": idefics3,
    "llava_next": llava_next,
    "gemma3": gemma3,
    "qwen2_vl": qwen2_vl,
    "qwen2_5_vl": qwen2_5_vl,
    "llava_onevision": llava_onevision,
}


def save_tiny(family: str, tokenizer_folder: Path, folder: Path, seed: int = 0) -> Path:
    """A tiny random model of `family` with its processor (a fresh copy of the tokenizer) saved under `folder`."""
    tokenizer = tf.AutoTokenizer.from_pretrained(tokenizer_folder, **(GEMMA3_TOKENS if family == "gemma3" else {}))
    torch.manual_seed(seed)
    processor, model = FAMILIES[family](tokenizer)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    if family in VIDEO_PROCESSORS:
        video = {"video_processor_type": VIDEO_PROCESSORS[family]}
        (folder / "video_preprocessor_config.json").write_text(json.dumps(video))
    return folder
