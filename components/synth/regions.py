"""Objects in an image, as masks with a short description, from one of the segmenters.

- `exact`: the procedural renderer's own masks (the scene is known, so masks and names are exact).
- `felzenszwalb` / `slic`: scikit-image regions, the offline segmenter for any photo (no weights needed).
- `sam`: Segment Anything through transformers' `SamModel`, prompted with a grid of points (the paper's step 3).

Candidates to edit are masks covering `min_area`..`max_area` of the image; what no candidate covers is background,
the only place an object may be added.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from components.demon.vocabulary import PALETTE
from components.synth.config import SegmenterConfig, SelectionConfig
from components.synth.scenes import ZONES, Obj, object_mask, zone_index, zone_of
from components.synth.sources import Item, Skip

# Names for the mean colour of a real region: the shared palette plus the achromatic ones.
NAMED_COLORS: dict[str, tuple[int, int, int]] = {
    **PALETTE,
    "black": (25, 25, 25),
    "grey": (128, 128, 128),
    "white": (240, 240, 240),
}


@dataclass
class Region:
    """One object: its mask (H, W) bool and what a sentence calls it."""

    mask: np.ndarray
    color: str  # a key of NAMED_COLORS (the scene's own colour for procedural objects)
    where: str  # the zone of its centroid (`scenes.ZONES`), e.g. "upper left"
    kind: str = "object"  # the shape for procedural objects
    obj: Obj | None = None  # procedural: the scene object it is
    size: str = ""  # procedural: "big", "little" or "" (by radius)
    significance: float = math.nan  # mean VPG attention inside the mask

    @property
    def area(self) -> float:
        return float(self.mask.mean())

    @property
    def name(self) -> str:
        return " ".join(w for w in (self.size, self.color, self.kind) if w)

    def summary(self) -> dict:
        ys, xs = np.nonzero(self.mask)
        box = [int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1]  # x0, y0, x1, y1
        return {
            "name": self.name,
            "where": self.where,
            "area": round(self.area, 4),
            "box": box,
            "significance": self.significance,
        }


def color_name(rgb: np.ndarray) -> str:
    names = list(NAMED_COLORS)
    table = np.asarray([NAMED_COLORS[n] for n in names], dtype=np.float32)
    return names[int(np.argmin(((table - rgb[None].astype(np.float32)) ** 2).sum(1)))]


def describe(mask: np.ndarray, pixels: np.ndarray) -> Region:
    """A region of a real image: named by its mean colour and the zone of its centroid."""
    ys, xs = np.nonzero(mask)
    return Region(mask, color_name(pixels[mask].mean(0)), zone_of(ys.mean(), xs.mean(), *mask.shape))


# ---------------------------------------------------------------------------------------------- segmenters


class ExactSegmenter:
    def __call__(self, item: Item) -> list[Region]:
        if item.scene is None:
            raise Skip("no_scene", f"item {item.key} has no scene; the exact segmenter needs the procedural source")
        scene = item.scene
        return [
            Region(object_mask(o, scene.size), o.color, scene.zone(o), o.shape, o, size=o.size_word(scene.size))
            for o in scene.objects
        ]


class SkimageSegmenter:
    """Felzenszwalb's graph-based regions or SLIC superpixels: a partition of the whole image."""

    def __init__(self, config: SegmenterConfig) -> None:
        self.config = config

    def __call__(self, item: Item) -> list[Region]:
        from skimage.segmentation import felzenszwalb, slic

        pixels = np.asarray(item.image)
        c = self.config
        if c.kind == "felzenszwalb":
            labels = felzenszwalb(pixels, scale=c.scale, sigma=c.sigma, min_size=c.min_size)
        else:
            labels = slic(pixels, n_segments=c.n_segments, compactness=c.compactness, sigma=c.sigma, start_label=0)
        return [describe(labels == label, pixels) for label in np.unique(labels)]


class SamSegmenter:
    """Segment Anything with a `points_per_side`^2 grid of single-point prompts, one batch per image; the best of
    SAM's three masks per point, kept above `min_score` predicted IoU, duplicates (IoU > `dedupe_iou`) dropped."""

    def __init__(self, config: SegmenterConfig) -> None:
        from transformers import SamModel, SamProcessor

        self.config = config
        location = str(Path(config.model).expanduser()) if Path(config.model).expanduser().exists() else config.model
        self.model = SamModel.from_pretrained(location).to(config.device).eval()
        self.processor = SamProcessor.from_pretrained(location)

    def __call__(self, item: Item) -> list[Region]:
        import torch

        width, height = item.image.size
        n = self.config.points_per_side
        points = [[[(i + 0.5) * width / n, (j + 0.5) * height / n]] for j in range(n) for i in range(n)]
        inputs = self.processor(images=item.image, input_points=[points], return_tensors="pt").to(self.config.device)
        with torch.no_grad():
            out = self.model(**inputs, multimask_output=True)
        masks = self.processor.image_processor.post_process_masks(
            out.pred_masks.cpu(), inputs["original_sizes"].cpu(), inputs["reshaped_input_sizes"].cpu()
        )[0]  # (P, 3, H, W) bool
        scores = out.iou_scores[0].cpu()  # (P, 3)
        best = scores.argmax(-1)
        picked = [(float(scores[p, best[p]]), masks[p, best[p]].numpy()) for p in range(len(points))]
        pixels = np.asarray(item.image)
        kept: list[np.ndarray] = []
        for score, mask in sorted(picked, key=lambda sm: -sm[0]):
            if score < self.config.min_score or not mask.any():
                continue
            if any(np.logical_and(mask, k).sum() / np.logical_or(mask, k).sum() > self.config.dedupe_iou for k in kept):
                continue
            kept.append(mask)
        return [describe(mask, pixels) for mask in kept]


Segmenter = ExactSegmenter | SkimageSegmenter | SamSegmenter


def build_segmenter(config: SegmenterConfig) -> Segmenter:
    if config.kind == "exact":
        return ExactSegmenter()
    if config.kind == "sam":
        return SamSegmenter(config)
    return SkimageSegmenter(config)


def candidates(regions: list[Region], selection: SelectionConfig, item: Item) -> list[Region]:
    """Regions of a size worth editing; `Skip` (with the reason) when none is."""
    kept = [r for r in regions if selection.min_area <= r.area <= selection.max_area]
    if kept:
        return kept
    if regions and all(r.area > selection.max_area for r in regions):
        raise Skip(
            "mask_covers_image",
            f"{item.key}: every mask covers more than {selection.max_area:.0%} of the "
            "image (a flat or blank image?); nothing to edit",
        )
    raise Skip(
        "no_objects",
        f"{item.key}: no object covers {selection.min_area:.0%}..{selection.max_area:.0%} of "
        "the image; adjust synth.selection.min_area/max_area or the segmenter",
    )


def background(objects: list[Region], shape: tuple[int, int], margin: int = 2) -> np.ndarray:
    """(H, W) bool: pixels no candidate object covers, `margin` pixels away from every object."""
    covered = np.zeros(shape, dtype=bool)
    for region in objects:
        covered |= region.mask
    return ~ndimage.binary_dilation(covered, iterations=margin) if margin else ~covered


def free_places(free: np.ndarray, radius: float) -> dict[str, np.ndarray]:
    """Zone name -> (K, 2) pixel centres (y, x) where a disc of `radius` lies wholly inside `free`."""
    padded = np.pad(free, 1, constant_values=False)  # the image border counts as occupied
    room = ndimage.distance_transform_edt(padded)[1:-1, 1:-1]
    ys, xs = np.nonzero(room > radius)
    height, width = free.shape
    zones = zone_index(ys, xs, height, width)
    points = np.stack([ys, xs], axis=1)
    return {ZONES[zone]: points[zones == zone] for zone in np.unique(zones).tolist()}


def significance(grid: torch.Tensor, regions: list[Region]) -> None:
    """Set each region's significance: mean attention inside its mask / mean over the image.

    `grid` (g, g) is upsampled bilinearly to the mask size at pixel centres (`align_corners=False`), i.e. RoIAlign
    with one sample per pixel, so small masks get interpolated values rather than one whole grid cell's."""
    height, width = regions[0].mask.shape
    dense = F.interpolate(grid[None, None].float(), size=(height, width), mode="bilinear", align_corners=False)[0, 0]
    dense = dense.cpu().numpy()
    mean = float(dense.mean())
    for region in regions:
        region.significance = round(float(dense[region.mask].mean()) / mean, 6)


def select(regions: list[Region], selection: SelectionConfig, item: Item) -> list[Region]:
    """The least-attended regions by the configured rule, least first; `Skip` when the rule leaves none."""
    ranked = sorted(regions, key=lambda r: (r.significance, r.where, r.name))  # ties: a fixed, readable order
    if selection.rule == "below_mean":
        ranked = [r for r in ranked if r.significance < selection.ratio]
        if not ranked:
            raise Skip(
                "all_attended",
                f"{item.key}: no object gets less than {selection.ratio} x the image's mean "
                "attention; raise synth.selection.ratio or use rule lowest_k",
            )
    return ranked[: selection.k]
