"""Fixtures for the training tests: a synthetic-data folder in the unified schema, and experiment files.

`write_synth_folder` writes what the synthetic-data stage writes: images (Pillow), `samples.parquet` with
`SynthDifference` rows (two images, the edit as the response) and `SynthCaption` rows (one image, its caption),
category `Synthetic`, split `synth`, and `report.json` with `raw_root: "."`.
"""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import yaml
from PIL import Image, ImageDraw
from vpgc_tiny import tiny_dict

from components.demon.schema import SAMPLE_SCHEMA

COLOURS = {"red": (220, 40, 40), "green": (40, 180, 60), "blue": (40, 80, 220), "yellow": (230, 210, 40)}
BACKGROUNDS = {"white": (245, 245, 245), "black": (15, 15, 15), "grey": (128, 128, 128)}
SHAPES = ("circle", "square", "triangle")
DIFFERENCE = "Describe the difference between the images."
CAPTION = "Describe the image in one sentence."


def draw(shape: str, colour: str, background: str, size: int = 64) -> Image.Image:
    image = Image.new("RGB", (size, size), BACKGROUNDS[background])
    pen = ImageDraw.Draw(image)
    box = (size // 4, size // 4, 3 * size // 4, 3 * size // 4)
    if shape == "circle":
        pen.ellipse(box, fill=COLOURS[colour])
    elif shape == "square":
        pen.rectangle(box, fill=COLOURS[colour])
    else:
        pen.polygon([(size // 2, size // 4), (size // 4, 3 * size // 4), (3 * size // 4, 3 * size // 4)],
                    fill=COLOURS[colour])  # fmt: skip
    return image


def row(task: str, index: int, instruction: str, context: str, images: list[str], response: str) -> dict:
    return {
        "uid": f"{task}/synth/{index}", "task": task, "category": "Synthetic", "split": "synth",
        "sample_id": index, "question_type": "open-ended", "instruction_id": 0, "instruction": instruction,
        "context": context, "images": images, "choice_list": None, "choices_inline": False, "response": response,
        "source": "generated", "source_sha256": hashlib.sha256(response.encode()).hexdigest(),
    }  # fmt: skip


def write_synth_folder(folder: Path, differences: int = 24, captions: int = 24, seed: int = 0) -> Path:
    """A folder `load_samples` accepts, with `differences` + `captions` rows; returns it."""
    rng = random.Random(seed)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(captions):
        shape, colour, background = rng.choice(SHAPES), rng.choice(list(COLOURS)), rng.choice(list(BACKGROUNDS))
        path = f"images/caption-{i}.png"
        draw(shape, colour, background).save(folder / path)
        rows.append(row("SynthCaption", i, CAPTION, "{image#1}", [path], f"A {colour} {shape} on a {background} "
                        "background."))  # fmt: skip
    for i in range(differences):
        shape, background = rng.choice(SHAPES), rng.choice(list(BACKGROUNDS))
        before, after = rng.sample(list(COLOURS), 2)
        paths = [f"images/diff-{i}-a.png", f"images/diff-{i}-b.png"]
        draw(shape, before, background).save(folder / paths[0])
        draw(shape, after, background).save(folder / paths[1])
        rows.append(row("SynthDifference", i, DIFFERENCE, "{image#1}{image#2}", paths,
                        f"The {shape} changed from {before} to {after}."))  # fmt: skip
    table = pa.Table.from_pandas(pd.DataFrame(rows), schema=SAMPLE_SCHEMA, preserve_index=False)
    pq.write_table(table, folder / "samples.parquet")
    (folder / "report.json").write_text(json.dumps({"raw_root": ".", "samples": len(rows)}))
    return folder


def stage(steps: int, mix: dict[str, int], **changes) -> dict:
    settings = {"steps": steps, "mix": mix, "lr": 1e-3, "warmup_steps": 1, "micro_batch": 2,
                "checkpoint_every": 2, "keep_checkpoints": 2}  # fmt: skip
    return settings | changes


def write_experiment(path: Path, train: dict | None = None, model: dict | None = None) -> Path:
    """An experiment file: the tiny random test model (tests/vpgc_tiny.py) + a small `train:` section."""
    train = train or {
        "seed": 0,
        "heldout": 2,
        "align": stage(4, {"SynthCaption": 4}),
        "vpgc": stage(4, {"SynthDifference": 2, "SynthCaption": 2}),
    }
    path.write_text(yaml.safe_dump({"model": model or tiny_dict(), "train": train}, sort_keys=False))
    return path
