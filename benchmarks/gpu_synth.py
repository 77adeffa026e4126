"""GPU benchmark of the real-run synth path at real shapes with random weights: the attention step (EVA ViT-g/14 +
the BLIP-2 Q-Former with output_attentions, experiments/vicuna7b.yaml shapes) and Stable-Diffusion-1.5-shaped
text-driven inpainting (9-channel UNet 320-640-1280-1280, VAE 128-256-512-512, CLIP ViT-L/14 text encoder) at
512 px, called the way `components.synth.editors.DiffusersEditor` calls it.

Needs torch, transformers, diffusers, numpy, Pillow and components/vpgc + components/synth/attention.py (no pandas,
scipy or downloads: the tokenizer is a character-level CLIP BPE built on the spot). Prints attention images/s,
inpainting s/image (batch 1 and `--batch`), peak memory, and hours for the paper's 64,000 pairs on one GPU (each
pair needs one attention pass on the original + one inpainting call; CPU steps overlap and are not counted).

    python benchmarks/gpu_synth.py [--steps 30] [--batch 4] [--json out.json]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import yaml
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a bare checkout, without installing the package

PAPER_PAIRS = 64_000


def sync() -> float:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter()


def attention_step(device: str, batch: int, repeats: int) -> dict:
    from components.synth.attention import VisionSide
    from components.vpgc.config import model_config_from_dict

    document = yaml.safe_load((ROOT / "experiments/vicuna7b.yaml").read_text())["model"]
    config = model_config_from_dict(document)
    config = config.replace(  # random weights: no files
        vision=dataclasses.replace(config.vision, weights=None),
        vpg=dataclasses.replace(config.vpg, weights=None),
        checkpoint=None,
    )
    vision = VisionSide(config, device=device)
    images = [
        Image.fromarray(np.random.default_rng(i).integers(0, 255, (384, 512, 3), dtype=np.uint8)) for i in range(batch)
    ]
    vision.attention(vision.encode(images))  # warm-up
    start = sync()
    for _ in range(repeats):
        grid = vision.attention(vision.encode(images))
    seconds = (sync() - start) / repeats
    return {"grid": list(grid.shape[1:]), "batch": batch, "images_per_s": round(batch / seconds, 1)}


def tokenizer(folder: Path):
    from transformers import CLIPTokenizer

    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for char in "abcdefghijklmnopqrstuvwxyz0123456789.,!'-":
        vocab.setdefault(char, len(vocab))
        vocab.setdefault(char + "</w>", len(vocab))
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    return CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=77)


def inpainting(device: str, dtype: torch.dtype, steps: int, batch: int) -> dict:
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionInpaintPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    with tempfile.TemporaryDirectory() as tmp, torch.device(device):
        unet = UNet2DConditionModel(in_channels=9, out_channels=4, cross_attention_dim=768, sample_size=64)
        vae = AutoencoderKL(
            block_out_channels=(128, 256, 512, 512),
            latent_channels=4,
            sample_size=512,
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
        )
        text = CLIPTextModel(
            CLIPTextConfig(
                hidden_size=768,
                intermediate_size=3072,
                num_hidden_layers=12,
                num_attention_heads=12,
                vocab_size=49408,
                max_position_embeddings=77,
            )
        )
        pipe = StableDiffusionInpaintPipeline(
            vae=vae,
            text_encoder=text,
            tokenizer=tokenizer(Path(tmp)),
            unet=unet,
            scheduler=DDIMScheduler(steps_offset=1),
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        ).to(device, dtype)
    pipe.set_progress_bar_config(disable=True)
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (512, 512, 3), dtype=np.uint8))
    mask = Image.new("L", (512, 512), 0)
    mask.paste(255, (160, 160, 352, 352))
    results = {}
    for n in sorted({1, batch}):
        call = {
            "prompt": ["a red ball"] * n,
            "image": [image] * n,
            "mask_image": [mask] * n,
            "height": 512,
            "width": 512,
            "num_inference_steps": steps,
            "guidance_scale": 7.5,
            "generator": torch.Generator(device).manual_seed(0),
        }
        pipe(**{**call, "num_inference_steps": 2})  # warm-up
        start = sync()
        pipe(**call)
        results[f"batch_{n}_s_per_image"] = round((sync() - start) / n, 3)
    return {"steps": steps, **results}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=30, help="denoising steps (synth.editor.steps)")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--attention-batch", type=int, default=32)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    try:
        import diffusers  # noqa: F401
    except ImportError:
        sys.exit("gpu_synth: the inpainting benchmark needs `diffusers` (pip install diffusers); it is not installed")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        sys.exit("gpu_synth: no CUDA device; run on a GPU machine (or --device cpu --steps 2 for a dry run)")
    dtype = torch.float16 if args.device.startswith("cuda") else torch.float32
    result = {
        "device": torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu",
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
    }
    result["attention"] = attention_step(args.device, args.attention_batch, repeats=3)
    result["inpainting"] = inpainting(args.device, dtype, args.steps, args.batch)
    per_pair = 1 / result["attention"]["images_per_s"] + result["inpainting"][f"batch_{args.batch}_s_per_image"]
    result["hours_for_64k_pairs"] = round(PAPER_PAIRS * per_pair / 3600, 2)
    if torch.cuda.is_available():
        result["peak_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
