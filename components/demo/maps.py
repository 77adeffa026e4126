"""What the model looked at (paper section 2): for every image of a prompt, the VPG's cross-attention with its own
queries (the first pass) and with VPG-C's instruction-guided queries (the re-extraction), laid on the image.

    conversation --layout, encode--> batch, features (M, N, Dv)
    VPGCModel.vpg_attention -> first, guided (M, N) --to_grid--> (M, g, g) each --overlay--> RGB images

Both maps of an image share one colour scale, so a region VPG-C looks at more is brighter in its overlay; `moved` is
the share of attention that moved (total variation distance between the two maps).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from matplotlib import colormaps
from PIL import Image

from components.synth.attention import to_grid
from components.vpgc.model import VPGCModel
from components.vpgc.prompts import Conversation

OVERLAY_SIDE = 320  # px: the longer side of an overlay in the page
HEAT_SHARE = 0.55  # of each pixel: the heat colour; the rest is the image


@dataclass(frozen=True)
class ImageMaps:
    label: str  # "{image#k}", with the turn when the conversation has several
    path: str
    first: np.ndarray  # (g, g) first pass; a ViT's CLS token is dropped, so the grid may sum to a little under 1
    guided: np.ndarray  # (g, g) VPG-C re-extraction

    @property
    def moved(self) -> float:
        return float(np.abs(self.first - self.guided).sum() / 2)


def image_maps(model: VPGCModel, conversation: Conversation) -> list[ImageMaps]:
    """The maps of every image in the conversation's prompt, in prompt order (the last turn's guidance)."""
    layouts = model.layouts([conversation])
    batch, features = model.prepare(layouts, model.load_pixels(layouts[0].images), cached=True)
    first, guided = (to_grid(maps.float().cpu()).numpy() for maps in model.vpg_attention(batch, features))
    shown = [(t, part) for t, turn in enumerate(conversation, 1) for part in turn.user if part["type"] == "image"]
    several = len(conversation) > 1
    return [
        ImageMaps(
            f"turn {t}, {{image#{part['index']}}}" if several else f"{{image#{part['index']}}}",
            part["path"],
            first[m],
            guided[m],
        )
        for m, (t, part) in enumerate(shown)
    ]


def overlay(image: Image.Image, grid: np.ndarray, scale: float) -> Image.Image:
    """The image (shrunk to OVERLAY_SIDE) under the grid upsampled to its size, coloured on [0, scale]."""
    image = image.convert("RGB")
    image.thumbnail((OVERLAY_SIDE, OVERLAY_SIDE))
    level = np.clip(grid / scale, 0.0, 1.0) if scale > 0 else np.zeros_like(grid)
    heat = Image.fromarray((level * 255).astype(np.uint8)).resize(image.size, Image.Resampling.BILINEAR)
    colour = colormaps["inferno"](np.asarray(heat, dtype=np.float32) / 255.0)[..., :3]
    mixed = (1 - HEAT_SHARE) * np.asarray(image, dtype=np.float32) / 255.0 + HEAT_SHARE * colour
    return Image.fromarray((mixed * 255).round().astype(np.uint8))


def overlays(maps: ImageMaps) -> tuple[Image.Image, Image.Image]:
    """(first pass, re-extraction) overlays of one image on a shared colour scale."""
    with Image.open(maps.path) as image:
        scale = float(max(maps.first.max(), maps.guided.max()))
        return overlay(image, maps.first, scale), overlay(image, maps.guided, scale)
