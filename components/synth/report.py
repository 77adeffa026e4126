"""The contact sheet: kept pairs at a glance, with where the VPG looked.

One row per pair: the original with the edited object's box (red), the VPG's attention map (bright = attended),
the edited image, and the edit type and sentence underneath.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

PANEL = 160  # each picture is fitted into PANEL x PANEL
TEXT = 28  # pixels of text under each row


def _fit(image: Image.Image) -> Image.Image:
    scale = PANEL / max(image.size)
    return image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))))


def attention_panel(grid: list[list[float]], size: tuple[int, int]) -> Image.Image:
    """The attention grid (g, g), min-max scaled through matplotlib's viridis, at `size` (width, height)."""
    from matplotlib import colormaps

    values = np.asarray(grid, dtype=np.float32)
    span = float(values.max() - values.min())
    scaled = (values - values.min()) / span if span > 0 else np.zeros_like(values)
    rgb = (colormaps["viridis"](scaled)[..., :3] * 255).astype(np.uint8)
    return Image.fromarray(rgb).resize(size, Image.Resampling.BILINEAR)


def contact_sheet(out: Path, pairs: list[dict]) -> Image.Image:
    """`pairs`: kept records of edits.jsonl (their images are under `out`)."""
    font = ImageFont.load_default(size=11)
    width = 3 * PANEL + 4 * 4
    sheet = Image.new("RGB", (width, max(1, len(pairs)) * (PANEL + TEXT + 4) + 4), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    if not pairs:
        draw.text((8, 8), "no kept pairs", fill=(0, 0, 0), font=font)
        return sheet
    for row, record in enumerate(pairs):
        top = 4 + row * (PANEL + TEXT + 4)
        with Image.open(out / "images" / f"{record['index']:06d}.png") as image:
            original = image.convert("RGB")
        with Image.open(out / "images" / f"{record['index']:06d}-{record['edit']}.png") as image:
            edited = image.convert("RGB")
        marked = original.copy()
        if record.get("target"):  # an add has none: it goes onto background
            box = record["target"]["box"]
            ImageDraw.Draw(marked).rectangle(box, outline=(255, 0, 0), width=max(1, original.width // 120))
        panels = [_fit(marked), attention_panel(record["attention"], _fit(original).size), _fit(edited)]
        for k, panel in enumerate(panels):
            sheet.paste(panel, (4 + k * (PANEL + 4), top))
        text = f"{record['type']}: {record['sentence']}"
        draw.text((6, top + PANEL + 4), text[:95], fill=(0, 0, 0), font=font)
    return sheet
