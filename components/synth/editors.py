"""Applying an edit (paper section 2, step 6): the four edit types, each local to a known region.

- `RenderEditor`: procedural scenes are data, so the edit is applied to the scene and drawn again (exact).
- `PixelEditor`: the offline editor for real photos: delete = inpaint the hole (push-pull diffusion fill), modify =
  recolour (hue set, saturation lifted, brightness kept), swap = fill the object and paste another object of the image
  into its box, add = paste an object of the image onto a background spot.
- `DiffusersEditor`: a mask-guided, text-driven inpainting pipeline from `diffusers` (the paper used Blended
  Diffusion); the result is composited back through the mask, so pixels outside it stay the original's.

Every editor returns the edited image and `changed`, the pixels the edit was allowed to touch; the filter checks
that nothing outside `changed` moved.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

from components.demon.vocabulary import PALETTE
from components.synth.config import EditorConfig
from components.synth.planner import EditPlan, Options
from components.synth.regions import Region, background, free_places
from components.synth.scenes import ZONES, Obj, new_objects, object_mask, parse_object, render
from components.synth.sources import Item

RIM = 2  # pixels around a mask that an edit may also touch (anti-aliased or JPEG-blurred object edges)


class EditError(Exception):
    """The edit could not be applied; `code` groups the reasons in the report."""

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(reason)
        self.code = code


@dataclass
class Edited:
    image: Image.Image
    changed: np.ndarray  # (H, W) bool: where the edit may have changed pixels


def grow(mask: np.ndarray, pixels: int = RIM) -> np.ndarray:
    return ndimage.binary_dilation(mask, iterations=pixels) if pixels else mask


# ---------------------------------------------------------------------------------------------- procedural


class RenderEditor:
    """Exact edits of procedural scenes: the edited scene is rendered again; masks come from the same drawing."""

    def options(self, item: Item, regions: list[Region], edit_type: str, target: Region | None) -> Options:
        scene = item.scene
        exclude = target.kind if edit_type == "swap" and target is not None else None
        return Options(scene.unused_colors(), new_objects(scene, exclude), scene.open_zones())

    def apply(self, item: Item, regions: list[Region], plan: EditPlan, rng: random.Random) -> Edited:
        scene, size = item.scene, item.scene.size
        old = plan.target.obj if plan.target is not None else None
        new: Obj | None = None
        if plan.type in ("swap", "add"):
            parsed = parse_object(plan.new_object or "")
            if parsed is None:
                raise EditError("editor_unusable", f"{plan.new_object!r} is not a colour and a shape the scene knows")
            color, shape = parsed
            if plan.type == "swap":  # the new shape takes the old one's place, size and tilt
                new = replace(old, shape=shape, color=color)
            else:
                new = scene.place(shape, color, rng, plan.place)
                if new is None:
                    raise EditError("no_background_space", f"no room in the {plan.place} area to add onto")
                plan.details.update(center_xy=[new.x, new.y], radius=new.radius, angle=new.angle)
        if plan.type == "modify":
            new = replace(old, color=plan.color)
        edited = {
            "modify": lambda: scene.replacing(old, new),
            "swap": lambda: scene.replacing(old, new),
            "delete": lambda: scene.without(old),
            "add": lambda: scene.adding(new),
        }[plan.type]()
        changed = np.zeros((size, size), dtype=bool)
        for obj in (old, new):
            if obj is not None:
                changed |= object_mask(obj, size)
        return Edited(render(edited), changed)


# ---------------------------------------------------------------------------------------------- real pixels


def fill(pixels: np.ndarray, hole: np.ndarray) -> np.ndarray:
    """Inpaint `hole` (H, W) in `pixels` (H, W, 3) float by push-pull: average the known pixels down a pyramid until
    every cell has some, then come back up, using a level's own mean where it has data and the coarser, smoothly
    upsampled level where it has none. A smooth fill from the surrounding colours; pixels outside `hole` are kept."""
    known = (~hole).astype(np.float32)
    if not known.any():
        raise EditError("editor_failed", "the mask covers the whole image; nothing to fill from")
    sums, weights = [pixels * known[..., None]], [known]
    while weights[-1].min() == 0 and min(weights[-1].shape) > 1:
        s, w = sums[-1], weights[-1]
        h, wd = (s.shape[0] + 1) // 2 * 2, (s.shape[1] + 1) // 2 * 2
        s = np.pad(s, ((0, h - s.shape[0]), (0, wd - s.shape[1]), (0, 0)))
        w = np.pad(w, ((0, h - w.shape[0]), (0, wd - w.shape[1])))
        sums.append(s.reshape(h // 2, 2, wd // 2, 2, 3).sum((1, 3)))
        weights.append(w.reshape(h // 2, 2, wd // 2, 2).sum((1, 3)))
    value = sums[-1] / np.maximum(weights[-1], 1e-6)[..., None]
    for s, w in zip(reversed(sums[:-1]), reversed(weights[:-1]), strict=True):
        factors = (s.shape[0] / value.shape[0], s.shape[1] / value.shape[1], 1)
        up = ndimage.zoom(value, factors, order=1, mode="nearest", grid_mode=True)[: s.shape[0], : s.shape[1]]
        alpha = np.minimum(w, 1.0)[..., None]
        value = alpha * (s / np.maximum(w, 1e-6)[..., None]) + (1 - alpha) * up
    out = pixels.copy()
    out[hole] = value[hole]
    return out


def recolour(pixels: np.ndarray, mask: np.ndarray, color: str) -> np.ndarray:
    """Set the hue of the masked pixels to `color`'s, lift their saturation to at least 0.6, keep their brightness
    (so shading and texture survive). `pixels` (H, W, 3) float in 0..1."""
    from skimage.color import hsv2rgb, rgb2hsv

    target = rgb2hsv(np.asarray(PALETTE[color], dtype=np.float32)[None, None] / 255)[0, 0]
    hsv = rgb2hsv(pixels[mask][None])[0]
    hsv[:, 0] = target[0]
    hsv[:, 1] = np.maximum(hsv[:, 1], 0.6)
    hsv[:, 2] = np.clip(hsv[:, 2], 0.25, 1.0)  # a black object has no hue to show: lift it into visibility
    out = pixels.copy()
    out[mask] = hsv2rgb(hsv[None])[0]
    return out


def cut_out(pixels: np.ndarray, mask: np.ndarray, max_side: float) -> tuple[np.ndarray, np.ndarray]:
    """The object under `mask` cropped to its box and scaled to fit `max_side`: (h, w, 3) pixels, (h, w) mask."""
    ys, xs = np.nonzero(mask)
    top, left, bottom, right = ys.min(), xs.min(), ys.max() + 1, xs.max() + 1
    crop, crop_mask = pixels[top:bottom, left:right], mask[top:bottom, left:right]
    scale = min(1.0, max_side / max(crop.shape[:2]))
    if scale < 1.0:
        size = (max(1, round(crop.shape[1] * scale)), max(1, round(crop.shape[0] * scale)))
        crop = np.asarray(Image.fromarray((crop * 255).astype(np.uint8)).resize(size, Image.Resampling.BILINEAR))
        crop = crop.astype(np.float32) / 255
        crop_mask = np.asarray(Image.fromarray(crop_mask).resize(size, Image.Resampling.NEAREST))
    return crop, crop_mask


def paste(pixels: np.ndarray, crop: np.ndarray, crop_mask: np.ndarray, center: tuple[int, int]) -> np.ndarray:
    """Paste the masked crop centred at (y, x), clipped to the image; returns the (H, W) mask of pasted pixels."""
    height, width = pixels.shape[:2]
    h, w = crop_mask.shape
    top, left = center[0] - h // 2, center[1] - w // 2
    y0, x0, y1, x1 = max(top, 0), max(left, 0), min(top + h, height), min(left + w, width)
    region = crop_mask[y0 - top : y1 - top, x0 - left : x1 - left]
    pixels[y0:y1, x0:x1][region] = crop[y0 - top : y1 - top, x0 - left : x1 - left][region]
    pasted = np.zeros((height, width), dtype=bool)
    pasted[y0:y1, x0:x1] = region
    return pasted


def donor_names(regions: list[Region], target: Region | None) -> dict[str, Region]:
    """Other objects of the image, by name (the first, least attended, of a name wins)."""
    donors: dict[str, Region] = {}
    for region in regions:
        if region is not target and region.name != (target.name if target else None):
            donors.setdefault(region.name, region)
    return donors


def add_radius(shape: tuple[int, int]) -> float:
    """Half the diagonal of the largest box an added object may take (a quarter of the shorter side)."""
    return min(shape) / 4 / 2 * np.sqrt(2) + RIM


def real_options(regions: list[Region], edit_type: str, target: Region | None, objects: list[str] | None) -> Options:
    """Any chromatic colour but the object's own; for add, the zones where background has room for an object."""
    colors = [c for c in PALETTE if target is None or c != target.color]
    places: list[str] = []
    if edit_type == "add":
        free = background(regions, regions[0].mask.shape)
        places = sorted(free_places(free, add_radius(free.shape)), key=ZONES.index)
    return Options(colors, objects, places)


class PixelEditor:
    """The four edit types on real pixels, no model needed (the offline counterpart of the diffusers editor)."""

    def options(self, item: Item, regions: list[Region], edit_type: str, target: Region | None) -> Options:
        return real_options(regions, edit_type, target, list(donor_names(regions, target)))

    def apply(self, item: Item, regions: list[Region], plan: EditPlan, rng: random.Random) -> Edited:
        pixels = np.asarray(item.image, dtype=np.float32) / 255
        target = plan.target
        if plan.type == "modify":
            changed = target.mask
            out = recolour(pixels, changed, plan.color)
        elif plan.type == "delete":
            changed = grow(target.mask)
            out = fill(pixels, changed)
        else:
            donor = donor_names(regions, target).get(plan.new_object)
            if donor is None:
                raise EditError("editor_unusable", f"no object named {plan.new_object!r} in this image to copy")
            plan.details["copied_from"] = donor.summary()
            if plan.type == "swap":
                hole = grow(target.mask)
                out = fill(pixels, hole)
                ys, xs = np.nonzero(target.mask)
                box = max(ys.max() - ys.min(), xs.max() - xs.min()) + 1
                crop, crop_mask = cut_out(pixels, donor.mask, box)
                center = ((ys.min() + ys.max()) // 2, (xs.min() + xs.max()) // 2)
                changed = hole | paste(out, crop, crop_mask, center)
            else:
                free = background(regions, target_shape := pixels.shape[:2])
                spots = free_places(free, add_radius(target_shape)).get(plan.place)
                if spots is None:
                    raise EditError("no_background_space", f"no background room at the {plan.place} to add onto")
                center = tuple(int(v) for v in spots[rng.randrange(len(spots))])
                plan.details["center_yx"] = list(center)
                crop, crop_mask = cut_out(pixels, donor.mask, min(target_shape) / 4)
                out = pixels.copy()
                changed = paste(out, crop, crop_mask, center)
        image = Image.fromarray(np.clip(np.rint(out * 255), 0, 255).astype(np.uint8))
        return Edited(image, changed)


# ---------------------------------------------------------------------------------------------- diffusion


class DiffusersEditor:
    """Text-driven inpainting inside the mask (any `diffusers` inpainting pipeline), composited back so only the
    masked pixels change. Seeded per edit through a `torch.Generator`, never the global RNG."""

    def __init__(self, config: EditorConfig) -> None:
        import torch
        from diffusers import AutoPipelineForInpainting

        self.config = config
        location = Path(config.model).expanduser()
        dtype = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[config.dtype]
        pipe = AutoPipelineForInpainting.from_pretrained(str(location) if location.exists() else config.model)
        self.pipe = pipe.to(config.device, dtype)  # not a from_pretrained argument: its name changed across versions
        self.pipe.set_progress_bar_config(disable=True)

    def options(self, item: Item, regions: list[Region], edit_type: str, target: Region | None) -> Options:
        return real_options(regions, edit_type, target, None)

    def apply(self, item: Item, regions: list[Region], plan: EditPlan, rng: random.Random) -> Edited:
        import torch

        target, shape = plan.target, (item.image.height, item.image.width)
        negative = None
        if plan.type == "add":
            spots = free_places(background(regions, shape), add_radius(shape)).get(plan.place)
            if spots is None:
                raise EditError("no_background_space", f"no background room at the {plan.place} to add onto")
            cy, cx = (int(v) for v in spots[rng.randrange(len(spots))])
            yy, xx = np.ogrid[: shape[0], : shape[1]]
            mask = (yy - cy) ** 2 + (xx - cx) ** 2 <= (add_radius(shape) - RIM) ** 2
            prompt = plan.new_object
        else:
            mask = grow(target.mask)
            prompt = {
                "modify": f"a {plan.color} {target.kind}",
                "swap": plan.new_object,
                "delete": "empty background, nothing there",
            }[plan.type]
            negative = target.name if plan.type == "delete" else None
        plan.details["inpaint_prompt"] = prompt
        side = self.config.size
        generator = torch.Generator(self.config.device).manual_seed(rng.randrange(2**31))
        try:
            result = self.pipe(
                prompt=prompt,
                negative_prompt=negative,
                image=item.image.resize((side, side), Image.Resampling.BICUBIC),
                mask_image=Image.fromarray(mask).resize((side, side), Image.Resampling.NEAREST),
                height=side,
                width=side,
                num_inference_steps=self.config.steps,
                guidance_scale=self.config.guidance_scale,
                generator=generator,
            ).images[0]
        except (RuntimeError, ValueError) as error:  # out of memory, a pipeline that rejects the inputs
            raise EditError("editor_failed", f"inpainting failed: {str(error).splitlines()[0][:200]}") from None
        inpainted = np.asarray(result.convert("RGB").resize(item.image.size, Image.Resampling.BICUBIC))
        out = np.asarray(item.image).copy()
        out[mask] = inpainted[mask]
        return Edited(Image.fromarray(out), mask)


Editor = RenderEditor | PixelEditor | DiffusersEditor


def build_editor(config: EditorConfig) -> Editor:
    if config.kind == "render":
        return RenderEditor()
    if config.kind == "pixel":
        return PixelEditor()
    return DiffusersEditor(config)
