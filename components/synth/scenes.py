"""The procedural image-caption source: a world of coloured shapes of its own, with exact masks and captions.

Only the objects come from the shared vocabulary (`components.demon.vocabulary`: colours, shapes, their outlines), as
CC3M photos and DEMON share the world's objects; everything else is this module's, so VPG-C trained on these scenes
meets mini-DEMON zero-shot (no shared layouts, looks or sentences; measured in tests/test_synth_separation.py):
- layout: objects anywhere (a random free pixel), of any radius in `RADIUS` x the side, tilted by up to `TILT`
  degrees, never touching: their bounding discs (`BOUND` x radius) stay `GAP` pixels apart and inside the picture;
- backdrops (`Backdrop`): a two-tone gradient, a wall over a floor, or a mottled texture, in muted `TONES`;
- words: nine `ZONES` ("upper left" .. "middle" .. "lower right"), "big"/"little" by radius, captions that name the
  backdrop too.
A scene is plain data (`Scene`), so the render editor can apply an edit to the data and draw it again: the pair
differs exactly where the edit says.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, replace

import numpy as np
from PIL import Image, ImageDraw

from components.demon.vocabulary import COLORS, PALETTE, SHAPES, Color, draw_shape, shape_points

ZONES = (
    "upper left", "upper middle", "upper right",
    "middle left", "middle", "middle right",
    "lower left", "lower middle", "lower right",
)  # fmt: skip
RADIUS = (0.06, 0.15)  # object radius as a fraction of the side; below 0.08 "little", above 0.12 "big"
BOUND = 1.21  # any vocabulary shape of radius r, tilted any way, lies in a disc of 1.21 r (square corners: 0.85 sqrt 2)
GAP = 3.0  # pixels between two bounding discs, and between a disc and the border
TILT = 15.0  # degrees either way; more would turn a square into a diamond (and back)
SQUARE = 0.85  # a square's half side per unit radius, as `draw_shape` draws it
# Muted tones, far from the saturated object palette (so no object pixel ever equals its backdrop's).
TONES: dict[str, Color] = {
    "sand": (206, 190, 160),
    "ivory": (236, 232, 218),
    "sage": (168, 184, 160),
    "slate": (128, 140, 156),
    "dusk": (150, 138, 166),
    "stone": (178, 172, 164),
    "charcoal": (72, 76, 84),
}
BACKDROP_KINDS = ("gradient", "floor", "mottled")
OPENINGS = ("This picture holds", "Here we see", "The picture contains", "Shown are")


def zone_index(y: np.ndarray | float, x: np.ndarray | float, height: int, width: int) -> np.ndarray:
    """Row-major index into `ZONES` of the point(s) (y, x) on a height x width picture."""
    rows = np.minimum(2, 3 * np.asarray(y) // height)
    cols = np.minimum(2, 3 * np.asarray(x) // width)
    return (rows * 3 + cols).astype(int)


def zone_of(y: float, x: float, height: int, width: int) -> str:
    return ZONES[int(zone_index(y, x, height, width))]


@dataclass(frozen=True)
class Obj:
    """One object: a vocabulary shape in a palette colour, centred at (x, y) pixels, tilted by `angle` degrees."""

    shape: str
    color: str
    x: float
    y: float
    radius: float
    angle: float = 0.0

    def size_word(self, side: int) -> str:
        """ "little", "big" or "" (medium): how a sentence sizes it."""
        fraction = self.radius / side
        return "little" if fraction < 0.08 else "big" if fraction > 0.12 else ""

    def draw(self, draw: ImageDraw.ImageDraw, fill: Color | int) -> None:
        """Paint it (no antialiasing, so a mask drawn the same way is exact)."""
        if self.shape == "circle":  # tilting changes nothing
            draw_shape(draw, "circle", (self.x, self.y), self.radius, fill)
            return
        if self.shape == "square":
            s = SQUARE * self.radius
            corners = [(-s, -s), (s, -s), (s, s), (-s, s)]
        else:
            corners = shape_points(self.shape, 0.0, 0.0, self.radius)
        cos, sin = math.cos(math.radians(self.angle)), math.sin(math.radians(self.angle))
        draw.polygon([(self.x + cos * u - sin * v, self.y + sin * u + cos * v) for u, v in corners], fill=fill)


@dataclass(frozen=True)
class Backdrop:
    """What the objects stand on: `gradient` from the first tone to the second along `angle` degrees; `floor`, a wall
    in the first tone above a horizon at `horizon` x the height and a floor in the second, darkening toward the viewer;
    `mottled`, the two tones mixed by smooth value noise drawn from `seed`."""

    kind: str
    tones: tuple[str, str]
    angle: float = 0.0
    horizon: float = 0.5
    seed: int = 0

    def paint(self, side: int) -> np.ndarray:
        """(side, side, 3) uint8."""
        yy, xx = np.mgrid[0:side, 0:side].astype(np.float32) / (side - 1)
        first, second = (np.asarray(TONES[t], dtype=np.float32) for t in self.tones)
        if self.kind == "gradient":
            along = math.cos(math.radians(self.angle)) * xx + math.sin(math.radians(self.angle)) * yy
            mix = (along - along.min()) / (along.max() - along.min())
        elif self.kind == "floor":
            depth = np.clip((yy - self.horizon) / (1 - self.horizon), 0, 1)
            floor = np.where(yy > self.horizon, 1.0, 0.0)
            pixels = first + (second - first) * floor[..., None]
            return np.rint(pixels * (1 - 0.25 * depth[..., None])).astype(np.uint8)
        else:
            coarse = np.random.default_rng(self.seed).integers(0, 256, (5, 5), dtype=np.uint8)
            smooth = Image.fromarray(coarse).resize((side, side), Image.Resampling.BICUBIC)
            mix = np.asarray(smooth, dtype=np.float32) / 255
        return np.rint(first + (second - first) * mix[..., None]).astype(np.uint8)

    def phrase(self) -> str:
        """ "against a sand-to-slate gradient"."""
        first, second = self.tones
        return {
            "gradient": f"against {article(f'{first}-to-{second}')} gradient",
            "floor": f"in front of {article(first)} wall over {article(second)} floor",
            "mottled": f"over a mottled {first} and {second} backdrop",
        }[self.kind]


@dataclass(frozen=True)
class Scene:
    """Objects with distinct colours (so "the red thing" names one), apart from each other, on a backdrop."""

    objects: tuple[Obj, ...]
    backdrop: Backdrop
    size: int

    def without(self, target: Obj) -> Scene:
        return replace(self, objects=tuple(o for o in self.objects if o != target))

    def replacing(self, target: Obj, new: Obj) -> Scene:
        return replace(self, objects=tuple(new if o == target else o for o in self.objects))

    def adding(self, new: Obj) -> Scene:
        return replace(self, objects=(*self.objects, new))

    def zone(self, obj: Obj) -> str:
        return zone_of(obj.y, obj.x, self.size, self.size)

    def unused_colors(self) -> list[str]:
        taken = {o.color for o in self.objects}
        return [color for color in COLORS if color not in taken]

    def room(self) -> np.ndarray:
        """(size, size): the largest bounding-disc radius a new object centred on each pixel may have."""
        yy, xx = np.mgrid[0 : self.size, 0 : self.size].astype(np.float32)
        room = np.minimum(np.minimum(xx, yy), np.minimum(self.size - 1 - xx, self.size - 1 - yy))
        for o in self.objects:
            room = np.minimum(room, np.hypot(xx - o.x, yy - o.y) - BOUND * o.radius - GAP)
        return room - GAP

    def spots(self, zone: str | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Pixel centres (ys, xs) where at least a smallest object fits, in `zone` (None: anywhere)."""
        ys, xs = np.nonzero(self.room() >= BOUND * RADIUS[0] * self.size)
        if zone is not None:
            keep = zone_index(ys, xs, self.size, self.size) == ZONES.index(zone)
            ys, xs = ys[keep], xs[keep]
        return ys, xs

    def open_zones(self) -> list[str]:
        """Zones with room for a new object, in `ZONES` order."""
        ys, xs = self.spots()
        return [ZONES[i] for i in sorted(set(zone_index(ys, xs, self.size, self.size).tolist()))]

    def place(self, shape: str, color: str, rng: random.Random, zone: str | None = None) -> Obj | None:
        """A new object on a random free spot (in `zone`), a random tilt and a random radius shrunk to the room there
        is; None when not even the smallest fits."""
        ys, xs = self.spots(zone)
        if not len(ys):
            return None
        room = self.room()[ys, xs]
        radius = rng.uniform(*RADIUS) * self.size
        fits = room >= BOUND * radius
        if fits.any():  # prefer the drawn radius; a crowded scene gets a smaller object instead
            ys, xs, room = ys[fits], xs[fits], room[fits]
        k = rng.randrange(len(ys))
        radius = math.floor(min(radius, room[k] / BOUND) * 10) / 10
        return Obj(shape, color, float(xs[k]), float(ys[k]), radius, round(rng.uniform(-TILT, TILT), 1))


def random_scene(rng: random.Random, objects: tuple[int, int], size: int) -> Scene:
    """Up to `objects` objects (fewer only when the picture is full) on a random backdrop."""
    tones = tuple(rng.sample(list(TONES), 2))
    backdrop = Backdrop(rng.choice(BACKDROP_KINDS), tones, rng.uniform(0, 360), rng.uniform(0.3, 0.65),
                        rng.randrange(2**31))  # fmt: skip
    scene = Scene((), backdrop, size)
    for color in rng.sample(COLORS, rng.randint(*objects)):
        obj = scene.place(rng.choice(SHAPES), color, rng)
        if obj is None:
            break
        scene = scene.adding(obj)
    return scene


def object_mask(obj: Obj, size: int) -> np.ndarray:
    """(size, size) bool: exactly the pixels `render` paints for `obj` (same drawing call, no antialiasing)."""
    canvas = Image.new("L", (size, size), 0)
    obj.draw(ImageDraw.Draw(canvas), 255)
    return np.asarray(canvas) > 0


def render(scene: Scene) -> Image.Image:
    image = Image.fromarray(scene.backdrop.paint(scene.size))
    draw = ImageDraw.Draw(image)
    for obj in scene.objects:
        obj.draw(draw, PALETTE[obj.color])
    return image


def at(zone: str) -> str:
    """ "in the upper left area", "in the middle"."""
    return "in the middle" if zone == "middle" else f"in the {zone} area"


def article(noun: str) -> str:
    return f"{'an' if noun[0] in 'aeiou' else 'a'} {noun}"


def describe(obj: Obj, scene: Scene) -> str:
    """ "a little red star in the upper left area"."""
    noun = " ".join(w for w in (obj.size_word(scene.size), obj.color, obj.shape) if w)
    return f"{article(noun)} {at(scene.zone(obj))}"


def caption(scene: Scene, rng: random.Random) -> str:
    """One sentence naming every object with its colour, shape, size and zone (zone order), then the backdrop."""
    ordered = sorted(scene.objects, key=lambda o: (ZONES.index(scene.zone(o)), o.x))
    parts = [describe(o, scene) for o in ordered]
    listed = parts[0] if len(parts) == 1 else f"{', '.join(parts[:-1])} and {parts[-1]}"
    return f"{rng.choice(OPENINGS)} {listed}, {scene.backdrop.phrase()}."


def new_objects(scene: Scene, exclude_shape: str | None = None) -> list[str]:
    """Objects that could appear without breaking the scene's rules: an unused colour, any (other) shape."""
    return [f"{c} {s}" for c in scene.unused_colors() for s in SHAPES if s != exclude_shape]


def parse_object(text: str) -> tuple[str, str] | None:
    """ "yellow star" -> ("yellow", "star"); None when it is not a colour and a shape of the vocabulary."""
    words = text.lower().replace(".", " ").split()
    color = next((w for w in words if w in PALETTE), None)
    shape = next((w for w in words if w in SHAPES), None)
    return (color, shape) if color and shape else None
