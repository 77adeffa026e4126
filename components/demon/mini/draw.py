"""mini-DEMON's drawing kit: objects on a 3x3 scene grid, text cards, ruled tables, and the places of stories.

Colours and shapes are the shared public vocabulary (`components.demon.vocabulary`); everything here is
mini-DEMON's own. Drawing has no antialiasing and one embedded font, so pictures are identical on every machine.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache

from PIL import Image, ImageDraw, ImageFont

from components.demon.vocabulary import COLORS, PALETTE, SHAPES, Color, draw_shape

CELL_NAMES = ("top left", "top", "top right", "left", "center", "right", "bottom left", "bottom", "bottom right")
# The ways answers name each cell: a phrasing copied from one answer to another seldom lands in the same place.
CELL_PHRASES = (
    ("top left", "upper left corner", "northwest corner"),
    ("top", "upper middle", "north edge"),
    ("top right", "upper right corner", "northeast corner"),
    ("left", "left side", "west edge"),
    ("center", "middle", "very middle"),
    ("right", "right side", "east edge"),
    ("bottom left", "lower left corner", "southwest corner"),
    ("bottom", "lower middle", "south edge"),
    ("bottom right", "lower right corner", "southeast corner"),
)
SIZE_WORDS = {"large": ("large", "big", "huge"), "small": ("small", "tiny", "little")}
SIDE = 160  # scene images are SIDE x SIDE; documents, slides and tables are wider
BLACK: Color = (20, 20, 20)
WHITE: Color = (250, 250, 250)


@dataclass(frozen=True)
class Obj:
    """One drawable object: a coloured shape in a cell of the 3x3 scene grid (row-major, 0 = top left)."""

    shape: str
    color: str
    cell: int
    size: str = "large"  # "large" | "small"

    def noun(self, sized: bool = False) -> str:
        return f"{self.size} {self.color} {self.shape}" if sized else f"{self.color} {self.shape}"

    @property
    def where(self) -> str:
        return CELL_NAMES[self.cell]


@cache
def font(px: int) -> ImageFont.FreeTypeFont:
    # Pillow's embedded FreeType font: identical glyphs on every machine with the same Pillow.
    return ImageFont.load_default(size=px)


def cell_center(cell: int, width: int = SIDE, height: int = SIDE) -> tuple[float, float]:
    row, col = divmod(cell, 3)
    return (col + 0.5) * width / 3, (row + 0.5) * height / 3


def radius(size: str, side: int = SIDE) -> float:
    return side / 7 if size == "large" else side / 12


def objs(
    rng: random.Random,
    n: int,
    *,
    colors: Sequence[str] = COLORS,
    shapes: Sequence[str] = SHAPES,
    cells: Sequence[int] = range(9),
    sizes: Sequence[str] = ("large",),
) -> list[Obj]:
    """n objects in distinct cells with distinct colours, so "the red thing" names exactly one."""
    picks = zip(rng.sample(list(colors), n), rng.sample(list(cells), n), strict=True)
    return [Obj(rng.choice(shapes), color, cell, rng.choice(sizes)) for color, cell in picks]


def scene(
    items: Sequence[Obj],
    bg: Color | Image.Image = (215, 215, 215),
    labels: Sequence[str | None] | None = None,
    size: tuple[int, int] = (SIDE, SIDE),
) -> Image.Image:
    """Objects at the centres of their cells on a flat colour or a painted place; an optional label under each."""
    im = bg.copy() if isinstance(bg, Image.Image) else Image.new("RGB", size, bg)
    draw = ImageDraw.Draw(im)
    for i, obj in enumerate(items):
        cx, cy = cell_center(obj.cell, *size)
        r = radius(obj.size, min(size))
        if labels is None:
            draw_shape(draw, obj.shape, (cx, cy), r, PALETTE[obj.color])
            continue
        # Labelled: a smaller shape raised in its cell, the label under it, both inside the cell.
        draw_shape(draw, obj.shape, (cx, cy - 7), r * 0.8, PALETTE[obj.color])
        if labels[i]:
            draw.text((cx, cy - 6 + r * 0.8), labels[i], fill=BLACK, font=font(10), anchor="mt")
    return im


def wrap(text: str, face: ImageFont.FreeTypeFont, width: float) -> list[str]:
    lines: list[str] = []
    for word in text.split():
        if lines and face.getlength(f"{lines[-1]} {word}") <= width:
            lines[-1] = f"{lines[-1]} {word}"
        else:
            lines.append(word)
    return lines


def card(
    paragraphs: Sequence[str],
    size: tuple[int, int],
    bg: Color = WHITE,
    fg: Color = BLACK,
    px: int = 12,
    title: str | None = None,
    margin: int = 8,
) -> Image.Image:
    """A text page (document, slide, book cover, legend): an optional larger title, then wrapped paragraphs."""
    im = Image.new("RGB", size, bg)
    draw = ImageDraw.Draw(im)
    y = margin
    if title:
        for line in wrap(title, font(px + 4), size[0] - 2 * margin):
            draw.text((margin, y), line, fill=fg, font=font(px + 4))
            y += px + 8
        y += 4
    for paragraph in paragraphs:
        for line in wrap(paragraph, font(px), size[0] - 2 * margin):
            draw.text((margin, y), line, fill=fg, font=font(px))
            y += px + 4
        y += 3
    return im


def table(header: Sequence[str], rows: Sequence[Sequence[str]], col_width: int = 84) -> Image.Image:
    """A ruled table, as DEMON pre-renders Wikipedia tables (MultiModalQA, MMCoQA)."""
    row_h, face = 22, font(12)
    im = Image.new("RGB", (col_width * len(header) + 1, row_h * (len(rows) + 1) + 1), WHITE)
    draw = ImageDraw.Draw(im)
    draw.rectangle((0, 0, im.width - 1, row_h), fill=(225, 225, 235))
    for r, row in enumerate([header, *rows]):
        for c, value in enumerate(row):
            draw.text((c * col_width + 5, r * row_h + 5), value, fill=BLACK, font=face)
    for r in range(len(rows) + 2):
        draw.line((0, r * row_h, im.width, r * row_h), fill=(120, 120, 120))
    for c in range(len(header) + 1):
        draw.line((c * col_width, 0, c * col_width, im.height), fill=(120, 120, 120))
    return im


# --- places: story backgrounds, in greys and muted tones far from every palette colour ---------------------------


def _beach(draw: ImageDraw.ImageDraw) -> None:
    draw.rectangle((0, 0, SIDE, 50), fill=(150, 185, 215))
    draw.rectangle((0, 50, SIDE, SIDE), fill=(225, 215, 175))


def _forest(draw: ImageDraw.ImageDraw) -> None:
    for x in range(8, SIDE, 30):
        draw.polygon([(x, 40), (x + 12, 4), (x + 24, 40)], fill=(60, 95, 70))
        draw.rectangle((x + 10, 40, x + 14, 50), fill=(95, 80, 65))


def _kitchen(draw: ImageDraw.ImageDraw) -> None:
    for y in range(0, SIDE, 20):
        for x in range(20 * (y // 20 % 2), SIDE, 40):
            draw.rectangle((x, y, x + 19, y + 19), fill=(205, 205, 195))


def _night(draw: ImageDraw.ImageDraw) -> None:
    draw.rectangle((0, 0, SIDE, SIDE), fill=(60, 65, 90))
    for x, y in ((14, 12), (70, 20), (130, 8), (100, 60), (30, 70), (145, 100)):
        draw.point([(x, y), (x + 1, y), (x, y + 1)], fill=(235, 235, 235))


def _street(draw: ImageDraw.ImageDraw) -> None:
    draw.rectangle((0, 60, SIDE, 100), fill=(140, 140, 145))
    for x in range(4, SIDE, 28):
        draw.rectangle((x, 78, x + 14, 82), fill=(245, 245, 245))


def _snow(draw: ImageDraw.ImageDraw) -> None:
    draw.rectangle((0, 0, SIDE, SIDE), fill=(240, 244, 248))
    draw.ellipse((-40, 90, 200, 260), fill=(215, 225, 235))


def _lake(draw: ImageDraw.ImageDraw) -> None:
    draw.rectangle((0, 0, SIDE, SIDE), fill=(195, 210, 185))
    draw.ellipse((20, 70, 140, 150), fill=(120, 150, 185))


def _library(draw: ImageDraw.ImageDraw) -> None:
    draw.rectangle((0, 0, SIDE, SIDE), fill=(215, 200, 180))
    for y in (30, 80, 130):
        draw.rectangle((0, y, SIDE, y + 4), fill=(110, 85, 60))


def _desert(draw: ImageDraw.ImageDraw) -> None:
    draw.rectangle((0, 0, SIDE, SIDE), fill=(230, 205, 160))
    draw.polygon([(0, 60), (60, 30), (120, 60)], fill=(210, 180, 135))


def _farm(draw: ImageDraw.ImageDraw) -> None:
    draw.rectangle((0, 0, SIDE, SIDE), fill=(200, 215, 170))
    for x in range(0, SIDE, 16):
        draw.rectangle((x, 20, x + 3, 44), fill=(150, 120, 90))
    draw.rectangle((0, 26, SIDE, 29), fill=(150, 120, 90))


def _classroom(draw: ImageDraw.ImageDraw) -> None:
    draw.rectangle((20, 6, 140, 46), fill=(55, 80, 65), outline=(150, 120, 90), width=3)


# Each painter draws over a light grey canvas; stories name the place a frame is drawn in.
PLACES: dict[str, Callable[[ImageDraw.ImageDraw], None]] = {
    "beach": _beach,
    "forest": _forest,
    "kitchen": _kitchen,
    "night sky": _night,
    "street": _street,
    "snowy hill": _snow,
    "lake": _lake,
    "library": _library,
    "desert": _desert,
    "farm": _farm,
    "classroom": _classroom,
}


def place(name: str) -> Image.Image:
    im = Image.new("RGB", (SIDE, SIDE), (212, 212, 205))
    PLACES[name](ImageDraw.Draw(im))
    return im
