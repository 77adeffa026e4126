"""The procedural image-caption source: scenes of coloured shapes with exact masks, attributes and captions.

The vocabulary (shapes x colours x 3x3 grid cells x two sizes) and the drawing code are mini-DEMON's, so what the
synthetic pairs teach is what the embedded benchmark's difference tasks ask. A scene is plain data (`Scene`), so the
render editor can apply an edit to the data and draw it again: the pair differs exactly where the edit says.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace

import numpy as np
from PIL import Image, ImageDraw

from components.demon.mini import CELL_NAMES, Obj, _cell_center, _objs, _radius
from components.demon.vocabulary import COLORS, PALETTE, SHAPES, draw_shape

BACKGROUNDS: tuple[tuple[int, int, int], ...] = ((215, 215, 215), (165, 165, 165), (235, 225, 205), (205, 220, 235))
CAPTION_OPENINGS = ("A picture of", "An image with", "A scene showing", "A plain background with")


@dataclass(frozen=True)
class Scene:
    """Objects in distinct cells with distinct colours (so "the red thing" names one), on a flat background."""

    objects: tuple[Obj, ...]
    background: tuple[int, int, int]
    size: int

    def without(self, target: Obj) -> Scene:
        return replace(self, objects=tuple(o for o in self.objects if o != target))

    def replacing(self, target: Obj, new: Obj) -> Scene:
        return replace(self, objects=tuple(new if o == target else o for o in self.objects))

    def adding(self, new: Obj) -> Scene:
        return replace(self, objects=(*self.objects, new))

    def free_cells(self) -> list[int]:
        taken = {o.cell for o in self.objects}
        return [cell for cell in range(9) if cell not in taken]

    def unused_colors(self) -> list[str]:
        taken = {o.color for o in self.objects}
        return [color for color in COLORS if color not in taken]


def random_scene(rng: random.Random, objects: tuple[int, int], size: int) -> Scene:
    n = rng.randint(*objects)
    return Scene(tuple(_objs(rng, n, sizes=("large", "small"))), rng.choice(BACKGROUNDS), size)


def object_mask(obj: Obj, size: int) -> np.ndarray:
    """(size, size) bool: exactly the pixels `render` paints for `obj` (same drawing call, no antialiasing)."""
    canvas = Image.new("L", (size, size), 0)
    draw_shape(ImageDraw.Draw(canvas), obj.shape, _cell_center(obj.cell, size, size), _radius(obj.size, size), 255)
    return np.asarray(canvas) > 0


def render(scene: Scene) -> Image.Image:
    image = Image.new("RGB", (scene.size, scene.size), scene.background)
    draw = ImageDraw.Draw(image)
    for obj in scene.objects:
        center = _cell_center(obj.cell, scene.size, scene.size)
        draw_shape(draw, obj.shape, center, _radius(obj.size, scene.size), PALETTE[obj.color])
    return image


def at(where: str) -> str:
    """ "at the top left", "in the center"."""
    return "in the center" if where == "center" else f"at the {where}"


def article(noun: str) -> str:
    return f"{'an' if noun[0] in 'aeiou' else 'a'} {noun}"


def describe(obj: Obj) -> str:
    """ "a small red circle at the top left"."""
    noun = f"small {obj.color} {obj.shape}" if obj.size == "small" else f"{obj.color} {obj.shape}"
    return f"{article(noun)} {at(CELL_NAMES[obj.cell])}"


def caption(scene: Scene, rng: random.Random) -> str:
    """One sentence naming every object with its colour, shape, size and place (reading order)."""
    parts = [describe(o) for o in sorted(scene.objects, key=lambda o: o.cell)]
    listed = parts[0] if len(parts) == 1 else f"{', '.join(parts[:-1])} and {parts[-1]}"
    return f"{rng.choice(CAPTION_OPENINGS)} {listed}."


def new_objects(scene: Scene, exclude_shape: str | None = None) -> list[str]:
    """Objects that could appear without breaking the scene's rules: an unused colour, any (other) shape."""
    return [f"{c} {s}" for c in scene.unused_colors() for s in SHAPES if s != exclude_shape]


def parse_object(text: str) -> tuple[str, str] | None:
    """ "yellow star" -> ("yellow", "star"); None when it is not a colour and a shape of the vocabulary."""
    words = text.lower().replace(".", " ").split()
    color = next((w for w in words if w in PALETTE), None)
    shape = next((w for w in words if w in SHAPES), None)
    return (color, shape) if color and shape else None
