"""The unified sample schema (DESIGN.md, Data contracts) and the interleaved parts a model sees.

One row per DEMON instruction; synthetic training data uses the same columns under its own task names, so one
loader feeds training and evaluation. Image paths are relative to the dataset root, which a normalized folder
records in `report.json` (`raw_root`, relative to that folder).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Literal, TypedDict

import pandas as pd
import pyarrow as pa

PLACEHOLDER = re.compile(r"\{(image|table)#(\d+)\}")

SAMPLE_SCHEMA = pa.schema(
    [
        ("uid", pa.string()),  # "<task>/<split>/<sample_id>"
        ("task", pa.string()),  # canonical folder name
        ("category", pa.string()),
        ("split", pa.string()),
        ("sample_id", pa.int64()),
        ("question_type", pa.string()),  # open-ended | multi-choice | image-choice
        ("instruction_id", pa.int64()),
        ("instruction", pa.string()),  # the chosen template text
        ("context", pa.string()),  # with {image#k} / {table#k}, 1-indexed into images
        ("images", pa.list_(pa.string())),  # paths relative to the dataset root
        ("choice_list", pa.list_(pa.string())),  # null for open-ended samples
        ("choices_inline", pa.bool_()),  # options were only given inside `context`
        ("response", pa.string()),
        ("source", pa.string()),  # the file the sample came from, relative to the dataset root
        ("source_sha256", pa.string()),
    ]
)
COLUMNS = tuple(SAMPLE_SCHEMA.names)


class TextPart(TypedDict):
    type: Literal["text"]
    text: str


class ImagePart(TypedDict):
    type: Literal["image"]
    path: str
    index: int  # 1-based position in `images`


Part = TextPart | ImagePart


def placeholder_indices(context: str) -> list[int]:
    """The 1-based image indices `{image#k}` / `{table#k}` reference, in order of appearance."""
    return [int(m.group(2)) for m in PLACEHOLDER.finditer(context)]


def to_parts(text: str, images: list[str]) -> list[Part]:
    """Split text with `{image#k}`/`{table#k}` into ordered text and image parts.

    Tables are pre-rendered images that share numbering with `images`, so both map to image parts.
    Empty text between adjacent placeholders is dropped.
    """
    parts: list[Part] = []
    cursor = 0
    for match in PLACEHOLDER.finditer(text):
        if match.start() > cursor:
            parts.append({"type": "text", "text": text[cursor : match.start()]})
        k = int(match.group(2))
        parts.append({"type": "image", "path": images[k - 1], "index": k})
        cursor = match.end()
    if cursor < len(text):
        parts.append({"type": "text", "text": text[cursor:]})
    return parts


def official_prompt(sample: Mapping[str, Any]) -> str:
    """The user turn's text as the official DEMON runner builds it: template + context (no separator), then the
    options when the sample has a `choice_list` (with `{image#k}` placeholders still in place).

    The release (`Cheetah/i4_cheetah_llama2.py`, `IDataset.__getitem__`) joins the options by hand,
    `"Choice list:['" + "', '".join(choices) + "']. Your answer is:"`, which is not Python's list repr: an option
    holding a quote stays inside single quotes (`'it's'`, where repr would write `"it's"`).
    """
    text = f"{sample['instruction']}{sample['context']}"
    choices = sample.get("choice_list")
    if choices is not None and len(choices) and not sample.get("choices_inline"):
        text += "Choice list:['" + "', '".join(str(c) for c in choices) + "']. Your answer is:"
    return text


def sample_parts(sample: Mapping[str, Any]) -> list[Part]:
    """The interleaved parts of one normalized sample (training and evaluation share this prompt)."""
    return to_parts(official_prompt(sample), list(sample["images"]))


def empty_frame() -> pd.DataFrame:
    return SAMPLE_SCHEMA.empty_table().to_pandas()
