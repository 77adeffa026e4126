"""The public drawing vocabulary shared by mini-DEMON and the procedural synthetic source: colours and shapes.

Only the objects are shared (as CC3M photos and DEMON share the world's objects); layouts, backgrounds, scene
grammar and every sentence are each package's own, so training on synthetic scenes stays zero-shot for mini-DEMON.
"""

from __future__ import annotations

import math

from PIL import ImageDraw

Color = tuple[int, int, int]
# Saturated colours far apart in RGB, so JPEG artefacts never turn one into another; backgrounds are greys.
PALETTE: dict[str, Color] = {
    "red": (220, 40, 40),
    "green": (40, 160, 70),
    "blue": (40, 90, 220),
    "yellow": (240, 200, 30),
    "purple": (140, 60, 180),
    "orange": (245, 130, 30),
    "pink": (245, 120, 190),
    "cyan": (40, 190, 210),
    "brown": (125, 80, 40),
}
COLORS = tuple(PALETTE)
SHAPES = ("circle", "square", "triangle", "diamond", "star")


def shape_points(shape: str, cx: float, cy: float, r: float) -> list[tuple[float, float]]:
    """The polygon of a non-round shape of radius `r` centred on (cx, cy)."""
    if shape == "triangle":
        return [(cx, cy - r), (cx + r * 0.95, cy + r * 0.8), (cx - r * 0.95, cy + r * 0.8)]
    if shape == "diamond":
        return [(cx, cy - r), (cx + r * 0.8, cy), (cx, cy + r), (cx - r * 0.8, cy)]
    if shape == "star":
        return [
            (cx + (r if k % 2 == 0 else r * 0.45) * math.sin(k * math.pi / 5),
             cy - (r if k % 2 == 0 else r * 0.45) * math.cos(k * math.pi / 5))
            for k in range(10)
        ]  # fmt: skip
    if shape == "hexagon":
        return [(cx + r * math.cos(k * math.pi / 3), cy + r * math.sin(k * math.pi / 3)) for k in range(6)]
    raise ValueError(f"unknown shape {shape!r}")


def draw_shape(
    draw: ImageDraw.ImageDraw,
    shape: str,
    center: tuple[float, float],
    r: float,
    fill: Color | int | None,
    outline: Color | None = None,
    width: int = 3,
) -> None:
    """Paint `shape` of radius `r` at `center` (no antialiasing, so a mask drawn the same way is exact)."""
    cx, cy = center
    if shape == "circle":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill, outline=outline, width=width)
    elif shape == "square":
        s = r * 0.85
        draw.rectangle((cx - s, cy - s, cx + s, cy + s), fill=fill, outline=outline, width=width)
    else:
        draw.polygon(shape_points(shape, cx, cy, r), fill=fill, outline=outline, width=width)
