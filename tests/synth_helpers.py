"""Shared pieces of the synth tests: tiny random real backends saved to folders (CLIP, a Stable Diffusion inpainting
pipeline, SAM, a Llama planner), real photos from scikit-image in a captions folder, an OpenAI-compatible stand-in
server, and small experiment configs."""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import torch
import yaml
from PIL import Image
from vpgc_tiny import tiny_dict

from components.synth.config import SynthConfig, synth_config_from_dict

PHOTOS = {  # scikit-image's bundled photos (offline) and a caption for each
    "astronaut": "An astronaut in a white suit in front of a flag.",
    "coffee": "A cup of coffee on a saucer with a spoon.",
    "chelsea": "A tabby cat looking at the camera.",
    "rocket": "A rocket on a launch pad at night.",
}


def tiny_model_doc() -> dict:
    """The `model:` section of a tiny random VPG-C (EVA-style ViT at 28 px: a 2x2 grid + CLS): fast to build."""
    return tiny_dict()


def synth_config(**changes: Any) -> SynthConfig:
    """A small procedural config; `changes` are `synth:` keys (nested sections as dicts)."""
    data = {"count": 24, "chunk_size": 4, "source": {"kind": "procedural"}, "filter": {"min_encoder_ratio": 0.0}}
    data.update(changes)
    return synth_config_from_dict(data)


def write_experiment(path: Path, synth: dict, model: dict | None = None) -> Path:
    path.write_text(yaml.safe_dump({"model": model or tiny_model_doc(), "synth": synth}, sort_keys=False))
    return path


def photo_folder(folder: Path, extra_rows: list[tuple[str, str]] = ()) -> Path:
    """scikit-image photos as JPEG files + captions.tsv; returns the captions file."""
    from skimage import data

    folder.mkdir(parents=True, exist_ok=True)
    lines = ["image\tcaption"]
    for name, caption in PHOTOS.items():
        Image.fromarray(getattr(data, name)()).save(folder / f"{name}.jpg", quality=95)
        lines.append(f"{name}.jpg\t{caption}")
    lines += [f"{name}\t{caption}" for name, caption in extra_rows]
    (folder / "captions.tsv").write_text("\n".join(lines) + "\n")
    return folder / "captions.tsv"


# ---------------------------------------------------------------------------------------------- tiny backends


def clip_tokenizer(folder: Path):
    """A character-level CLIP BPE tokenizer (vocab + empty merges), built offline."""
    from transformers import CLIPTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for char in "abcdefghijklmnopqrstuvwxyz0123456789.,!'-":
        vocab.setdefault(char, len(vocab))
        vocab.setdefault(char + "</w>", len(vocab))
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    return CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=77)


def text_config(vocab_size: int) -> dict:
    return {
        "vocab_size": vocab_size,
        "hidden_size": 16,
        "intermediate_size": 32,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "max_position_embeddings": 77,
        "bos_token_id": 0,
        "eos_token_id": 1,
        "pad_token_id": 1,
    }


def tiny_clip(folder: Path) -> Path:
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    torch.manual_seed(0)
    tokenizer = clip_tokenizer(folder / "_tokenizer")
    vision = {
        "hidden_size": 16,
        "intermediate_size": 32,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "image_size": 32,
        "patch_size": 8,
    }
    model = CLIPModel(CLIPConfig(text_config=text_config(len(tokenizer)), vision_config=vision, projection_dim=8))
    model.save_pretrained(folder)
    images = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    CLIPProcessor(image_processor=images, tokenizer=tokenizer).save_pretrained(folder)
    return folder


def tiny_inpainting(folder: Path) -> Path:
    """A Stable Diffusion inpainting pipeline (9-channel UNet, VAE, CLIP text encoder) with random tiny weights."""
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionInpaintPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(0)
    tokenizer = clip_tokenizer(folder / "_tokenizer")
    unet = UNet2DConditionModel(
        block_out_channels=(8, 16),
        layers_per_block=1,
        sample_size=8,
        in_channels=9,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=16,
        norm_num_groups=4,
        attention_head_dim=2,
    )
    vae = AutoencoderKL(
        block_out_channels=(8, 16),
        latent_channels=4,
        norm_num_groups=4,
        sample_size=32,
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
    )
    text = CLIPTextModel(CLIPTextConfig(**text_config(len(tokenizer))))
    pipe = StableDiffusionInpaintPipeline(
        vae=vae,
        text_encoder=text,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=DDIMScheduler(steps_offset=1),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(folder)
    return folder


def tiny_sam(folder: Path) -> Path:
    from transformers import SamConfig, SamImageProcessor, SamModel, SamProcessor

    torch.manual_seed(0)
    config = SamConfig(
        vision_config={
            "hidden_size": 32,
            "output_channels": 16,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "image_size": 64,
            "patch_size": 16,
            "mlp_dim": 64,
            "global_attn_indexes": [1],
            "window_size": 2,
            "num_pos_feats": 8,
        },
        prompt_encoder_config={"hidden_size": 16, "image_size": 64, "patch_size": 16, "mask_input_channels": 4},
        mask_decoder_config={
            "hidden_size": 16,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "mlp_dim": 32,
            "iou_head_hidden_dim": 16,
        },
    )
    SamModel(config).save_pretrained(folder)
    processor = SamImageProcessor(size={"longest_edge": 64}, pad_size={"height": 64, "width": 64})
    SamProcessor(image_processor=processor).save_pretrained(folder)
    return folder


def tiny_llm(folder: Path) -> Path:
    """A random 2-layer Llama with SmolLM2's real tokenizer (chat template included)."""
    from transformers import LlamaConfig, LlamaForCausalLM
    from vpgc_tiny import SMOLLM2

    from components.vpgc.backbones import load_tokenizer
    from components.vpgc.config import LLMConfig

    torch.manual_seed(0)
    arch = {k: v for k, v in tiny_dict()["llm"]["arch"].items() if k != "model_type"}
    LlamaForCausalLM(LlamaConfig(**{**arch, "num_hidden_layers": 2})).save_pretrained(folder)
    load_tokenizer(LLMConfig(arch={}, source=SMOLLM2)).save_pretrained(folder)
    return folder


# ---------------------------------------------------------------------------------------------- OpenAI stand-in


class ChatServer(ThreadingHTTPServer):
    requests: list[dict]
    fail: bool = False


class ChatHandler(BaseHTTPRequestHandler):
    """Answers /v1/chat/completions like a helpful model: picks the first allowed value of every field."""

    server: ChatServer

    def log_message(self, *args: Any) -> None:  # keep test output quiet
        pass

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.requests.append({"path": self.path, "headers": dict(self.headers), "body": body})
        if self.server.fail:
            self.send_response(500)
            self.end_headers()
            self.wfile.write(b"overloaded")
            return
        prompt = body["messages"][-1]["content"]
        reply = {"color": None, "new_object": None, "place": None}
        for key in reply:
            match = re.search(rf'Set "{key}" to one of: (.+?)\.\n', prompt)
            if match:
                reply[key] = match.group(1).split(", ")[0]
        if reply["new_object"] is None and "new_object" in prompt:
            reply["new_object"] = "green lamp"
        reply["sentence"] = "The picture changed in one place"
        answer = {"choices": [{"message": {"role": "assistant", "content": "Sure! " + json.dumps(reply)}}]}
        payload = json.dumps(answer).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)


@contextmanager
def chat_server() -> Iterator[ChatServer]:
    server = ChatServer(("127.0.0.1", 0), ChatHandler)
    server.requests = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
