"""The `synth:` section of an experiment config: typed dataclasses, one per swappable step.

Every step is chosen by a `kind` and carries its own options; unknown keys are errors that name the key (a typo
must never fall back to a default silently). `experiments/tiny.yaml` lists every key with the embedded default.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal, get_args

from components.config_schema import Bounds, Count, Fraction, NonNegative, Positive, build, raise_problems, show
from components.experiment import plain

EditType = Literal["modify", "swap", "delete", "add"]
EDIT_TYPES: tuple[str, ...] = get_args(EditType)
# The tasks the synthetic data is written as (unified schema): training mixes name them.
DIFFERENCE_TASK, CAPTION_TASK = "SynthDifference", "SynthCaption"
SYNTH_TASKS = (DIFFERENCE_TASK, CAPTION_TASK)
NonNegativeFloat = Annotated[float, Bounds(ge=0)]
Cosine = Annotated[float, Bounds(ge=-1, le=1)]  # a cosine similarity


@dataclass(frozen=True)
class SourceConfig:
    """Where image-caption pairs come from. `procedural` renders scenes with exact masks (deterministic by seed);
    `folder` reads a captions table (TSV/CSV/JSONL/Parquet; CC3M's headerless TSV with `header: false` and column
    numbers) naming image files under `root`; `webdataset` reads `.tar` shards (`<key>.jpg` + `<key>.txt`)."""

    kind: Literal["procedural", "folder", "webdataset"] = "procedural"
    objects: tuple[Count, Count] = (2, 5)  # procedural: objects per scene (min, max)
    size: Count = 160  # procedural: scene side in pixels
    root: str | None = None  # folder: images are relative to it (default: the captions file's folder)
    captions: str | None = None  # folder: the captions table
    image_column: str | NonNegative = "image"
    caption_column: str | NonNegative = "caption"
    header: bool = True  # folder, TSV/CSV: whether the first line names the columns
    shards: str | None = None  # webdataset: a glob of .tar files
    image_extensions: tuple[str, ...] = ("jpg", "jpeg", "png", "webp")
    caption_extensions: tuple[str, ...] = ("txt", "caption")
    max_side: Count = 384  # real images are downscaled so their longer side is at most this


@dataclass(frozen=True)
class SegmenterConfig:
    """Objects in an image: the renderer's `exact` masks, scikit-image `felzenszwalb`/`slic` regions, or `sam`."""

    kind: Literal["exact", "felzenszwalb", "slic", "sam"] = "exact"
    scale: Positive = 300.0  # felzenszwalb
    sigma: NonNegativeFloat = 0.8  # felzenszwalb / slic pre-smoothing
    min_size: Count = 80  # felzenszwalb: smallest region in pixels
    n_segments: Count = 24  # slic
    compactness: Positive = 10.0  # slic
    model: str | None = None  # sam: a SamModel folder (or hub id)
    points_per_side: Count = 8  # sam: a grid of point prompts
    min_score: float = 0.7  # sam: predicted IoU below this drops the mask (a regression output, not bounded to 0..1)
    dedupe_iou: Fraction = 0.8  # sam: a mask overlapping a better one this much is a duplicate
    device: str = "cpu"


@dataclass(frozen=True)
class SelectionConfig:
    """Which objects to edit: candidates are masks covering `min_area`..`max_area` of the image; then `lowest_k`
    takes the k least-attended, `below_mean` those under `ratio` x the image's mean attention (at most k)."""

    rule: Literal["lowest_k", "below_mean"] = "lowest_k"
    k: Count = 1
    ratio: Positive = 1.0
    min_area: Fraction = 0.01
    max_area: Fraction = 0.4


@dataclass(frozen=True)
class PlannerConfig:
    """Who writes the edit: a deterministic `template`, a local instruct LLM (`transformers`), or an
    OpenAI-compatible endpoint (`openai`: POST `<base_url>/v1/chat/completions`, key from env var `api_key_env`)."""

    kind: Literal["template", "transformers", "openai"] = "template"
    model: str | None = None  # transformers: folder / hub id / .gguf / package:...; openai: the model name
    base_url: str | None = None
    api_key_env: str | None = None  # the NAME of the environment variable holding the key, never the key
    max_new_tokens: Count = 96
    temperature: NonNegativeFloat = 0.0
    timeout_s: Positive = 60.0
    device: str = "cpu"


@dataclass(frozen=True)
class EditorConfig:
    """Who applies the edit: exact re-`render` (procedural), the offline `pixel` editor, or a `diffusers`
    inpainting pipeline (`model`: a folder with model_index.json, or a hub id)."""

    kind: Literal["render", "pixel", "diffusers"] = "render"
    model: str | None = None
    steps: Count = 30
    guidance_scale: NonNegativeFloat = 7.5
    size: Count = 512  # diffusers works at this square resolution; the result is resized back
    device: str = "cpu"
    dtype: Literal["float32", "float16", "bfloat16"] = "float32"


@dataclass(frozen=True)
class FilterConfig:
    """Which edits are kept. Both kinds first check pixels: outside the changed region nothing moved more than
    `max_outside_change`, inside the mean change is at least `min_inside_change` (both in 0..1 units).
    `encoder`: the frozen vision encoder's per-token change inside the region is at least `min_encoder_ratio`
    x the change outside. `clip`: CLIP image-image similarity in `clip_min`..`clip_max`, and the edited image not
    further from the edit sentence than the original by more than `clip_min_direction`."""

    kind: Literal["encoder", "clip"] = "encoder"
    max_outside_change: Fraction = 0.0
    min_inside_change: Fraction = 0.05
    min_encoder_ratio: NonNegativeFloat = 1.5
    model: str | None = None  # clip: a CLIPModel folder or hub id
    clip_min: Cosine = 0.5
    clip_max: Cosine = 0.995
    clip_min_direction: float = 0.0
    device: str = "cpu"


@dataclass(frozen=True)
class SynthConfig:
    """The whole `synth:` section."""

    count: Count | None = 300  # source items to use; null = every item of a real source
    seed: int = 0
    chunk_size: Count = 16  # items per journaled shard (and per vision batch): fixed, so workers == serial
    init_seed: int = 0  # seeds the random init of a VPG without weights, identically in every process
    edits_per_image: NonNegative = 1  # 0: captions only (the alignment stage's data)
    edit_types: dict[EditType, NonNegativeFloat] = field(default_factory=lambda: dict.fromkeys(EDIT_TYPES, 1.0))
    difference_instructions: tuple[str, ...] = (  # the paper's, then rewordings; none is a DEMON template
        "Describe the difference between the images.",
        "Tell me what was edited between the first picture and the second one.",
        "Which object changed from one picture to the other, and how?",
        "Compare the two pictures and say what is different.",
    )
    caption_instructions: tuple[str, ...] = (
        "Describe this image briefly.",
        "Write a short caption for the image.",
        "What does this image show? Answer in one sentence.",
    )
    contact_sheet_pairs: NonNegative = 12
    device: str = "cpu"  # where the vision encoder and the VPG run (attention step, encoder filter)
    threads: Count | None = 1  # torch CPU threads per process (null: torch's default); 1 is fastest on shared cores
    source: SourceConfig = SourceConfig()
    segmenter: SegmenterConfig = SegmenterConfig()
    selection: SelectionConfig = SelectionConfig()
    planner: PlannerConfig = PlannerConfig()
    editor: EditorConfig = EditorConfig()
    filter: FilterConfig = FilterConfig()

    def to_dict(self) -> dict[str, Any]:
        return plain(dataclasses.asdict(self))


@dataclass(frozen=True)
class SynthParams:
    """`params.yaml` `synth:`: where the captions and synth stages write, and their knobs (flows/synth.py)."""

    out: str
    captions: str | None = None  # the captions stage's output (the alignment data); a pipeline without it: null
    vpg_checkpoint: str | None = None
    seed: int | None = None
    workers: Count = 1
    limit: Count | None = None


def synth_config_from_dict(data: Any, where: str = "synth") -> SynthConfig:
    """Build and validate a `SynthConfig` from the `synth:` mapping (`where`: its key path in errors); a
    `ConfigError` lists every problem."""
    config = build(SynthConfig, data, where)
    raise_problems(problems(config, where))
    return config


def problems(config: SynthConfig, where: str = "synth") -> list[str]:
    """Rules between fields: each kind has what it needs, and the steps fit together."""
    source, seg, sel = config.source, config.segmenter, config.selection
    found = []
    if source.kind == "procedural" and config.count is None:
        found.append(f"{where}.count: the procedural source is endless; set how many scenes to render, got null")
    if source.kind == "procedural" and not source.objects[0] <= source.objects[1] <= 9:
        found.append(f"{where}.source.objects: need min <= max <= 9 (one per colour), got {show(source.objects)}")
    if source.kind == "folder" and not source.captions:
        found.append(f"{where}.source.captions: the folder source needs a captions file (TSV/CSV/JSONL/Parquet), "
                     f"got {show(source.captions)}")  # fmt: skip
    if source.kind == "webdataset" and not source.shards:
        found.append(f"{where}.source.shards: the webdataset source needs a glob of .tar shards, got null")
    if not any(weight > 0 for weight in config.edit_types.values()):
        found.append(f"{where}.edit_types: at least one weight must be positive, got {show(config.edit_types)}")
    if sel.min_area >= sel.max_area:
        found.append(f"{where}.selection.min_area: must be below max_area ({sel.max_area:g}), got {sel.min_area:g}")
    found += [f"{where}.{name}: give at least one instruction, got []"
              for name in ("difference_instructions", "caption_instructions") if not getattr(config, name)]  # fmt: skip
    if source.kind != "procedural":  # exact masks and re-rendering exist only for scenes the source drew
        if seg.kind == "exact":
            found.append(f"{where}.segmenter.kind: exact needs the procedural source; use felzenszwalb, slic or sam "
                         "for real images, got 'exact'")  # fmt: skip
        if config.editor.kind == "render":
            found.append(f"{where}.editor.kind: render needs the procedural source; use pixel or diffusers for real "
                         "images, got 'render'")  # fmt: skip
    elif config.editor.kind == "render" and seg.kind != "exact":
        found.append(f"{where}.segmenter.kind: the render editor re-draws the scene's own objects, so it needs "
                     f"exact, got {seg.kind!r}")  # fmt: skip
    needs_model = {
        "segmenter": seg.kind == "sam" and not seg.model,
        "planner": config.planner.kind != "template" and not config.planner.model,
        "editor": config.editor.kind == "diffusers" and not config.editor.model,
        "filter": config.filter.kind == "clip" and not config.filter.model,
    }
    found += [f"{where}.{name}.model: the {getattr(config, name).kind} {name} needs a model, got null"
              for name, missing in needs_model.items() if missing]  # fmt: skip
    if config.planner.kind == "openai" and not config.planner.base_url:
        found.append(
            f"{where}.planner.base_url: the openai planner needs the endpoint, e.g. http://host:8000, got null"
        )
    return found
