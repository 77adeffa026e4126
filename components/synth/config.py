"""The `synth:` section of an experiment config: typed dataclasses, one per swappable step.

Every step is chosen by a `kind` and carries its own options; unknown keys are errors that name the key (a typo
must never fall back to a default silently). `experiments/tiny.yaml` lists every key with the embedded default.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from components.errors import UserError
from components.experiment import plain

EDIT_TYPES = ("modify", "swap", "delete", "add")
SOURCE_KINDS = ("procedural", "folder", "webdataset")
SEGMENTER_KINDS = ("exact", "felzenszwalb", "slic", "sam")
SELECTION_RULES = ("lowest_k", "below_mean")
PLANNER_KINDS = ("template", "transformers", "openai")
EDITOR_KINDS = ("render", "pixel", "diffusers")
FILTER_KINDS = ("encoder", "clip")


@dataclass(frozen=True)
class SourceConfig:
    """Where image-caption pairs come from. `procedural` renders scenes with exact masks (deterministic by seed);
    `folder` reads a captions table (TSV/CSV/JSONL/Parquet; CC3M's headerless TSV with `header: false` and column
    numbers) naming image files under `root`; `webdataset` reads `.tar` shards (`<key>.jpg` + `<key>.txt`)."""

    kind: str = "procedural"
    objects: tuple[int, int] = (2, 5)  # procedural: objects per scene (min, max)
    size: int = 160  # procedural: scene side in pixels
    root: str | None = None  # folder: images are relative to it (default: the captions file's folder)
    captions: str | None = None  # folder: the captions table
    image_column: str | int = "image"
    caption_column: str | int = "caption"
    header: bool = True  # folder, TSV/CSV: whether the first line names the columns
    shards: str | None = None  # webdataset: a glob of .tar files
    image_extensions: tuple[str, ...] = ("jpg", "jpeg", "png", "webp")
    caption_extensions: tuple[str, ...] = ("txt", "caption")
    max_side: int = 384  # real images are downscaled so their longer side is at most this


@dataclass(frozen=True)
class SegmenterConfig:
    """Objects in an image: the renderer's `exact` masks, scikit-image `felzenszwalb`/`slic` regions, or `sam`."""

    kind: str = "exact"
    scale: float = 300.0  # felzenszwalb
    sigma: float = 0.8  # felzenszwalb / slic pre-smoothing
    min_size: int = 80  # felzenszwalb: smallest region in pixels
    n_segments: int = 24  # slic
    compactness: float = 10.0  # slic
    model: str | None = None  # sam: a SamModel folder (or hub id)
    points_per_side: int = 8  # sam: a grid of point prompts
    min_score: float = 0.7  # sam: predicted IoU below this drops the mask
    dedupe_iou: float = 0.8  # sam: a mask overlapping a better one this much is a duplicate
    device: str = "cpu"


@dataclass(frozen=True)
class SelectionConfig:
    """Which objects to edit: candidates are masks covering `min_area`..`max_area` of the image; then `lowest_k`
    takes the k least-attended, `below_mean` those under `ratio` x the image's mean attention (at most k)."""

    rule: str = "lowest_k"
    k: int = 1
    ratio: float = 1.0
    min_area: float = 0.01
    max_area: float = 0.4


@dataclass(frozen=True)
class PlannerConfig:
    """Who writes the edit: a deterministic `template`, a local instruct LLM (`transformers`), or an
    OpenAI-compatible endpoint (`openai`: POST `<base_url>/v1/chat/completions`, key from env var `api_key_env`)."""

    kind: str = "template"
    model: str | None = None  # transformers: folder / hub id / .gguf / package:...; openai: the model name
    base_url: str | None = None
    api_key_env: str | None = None  # the NAME of the environment variable holding the key, never the key
    max_new_tokens: int = 96
    temperature: float = 0.0
    timeout_s: float = 60.0
    device: str = "cpu"


@dataclass(frozen=True)
class EditorConfig:
    """Who applies the edit: exact re-`render` (procedural), the offline `pixel` editor, or a `diffusers`
    inpainting pipeline (`model`: a folder with model_index.json, or a hub id)."""

    kind: str = "render"
    model: str | None = None
    steps: int = 30
    guidance_scale: float = 7.5
    size: int = 512  # diffusers works at this square resolution; the result is resized back
    device: str = "cpu"
    dtype: str = "float32"


@dataclass(frozen=True)
class FilterConfig:
    """Which edits are kept. Both kinds first check pixels: outside the changed region nothing moved more than
    `max_outside_change`, inside the mean change is at least `min_inside_change` (both in 0..1 units).
    `encoder`: the frozen vision encoder's per-token change inside the region is at least `min_encoder_ratio`
    x the change outside. `clip`: CLIP image-image similarity in `clip_min`..`clip_max`, and the edited image not
    further from the edit sentence than the original by more than `clip_min_direction`."""

    kind: str = "encoder"
    max_outside_change: float = 0.0
    min_inside_change: float = 0.05
    min_encoder_ratio: float = 1.5
    model: str | None = None  # clip: a CLIPModel folder or hub id
    clip_min: float = 0.5
    clip_max: float = 0.995
    clip_min_direction: float = 0.0
    device: str = "cpu"


@dataclass(frozen=True)
class SynthConfig:
    """The whole `synth:` section."""

    count: int | None = 300  # source items to use; null = every item of a real source
    seed: int = 0
    chunk_size: int = 16  # items per journaled shard (and per vision batch): fixed, so workers == serial
    init_seed: int = 0  # seeds the random init of a VPG without weights, identically in every process
    edits_per_image: int = 1
    edit_types: dict[str, float] = field(default_factory=lambda: dict.fromkeys(EDIT_TYPES, 1.0))
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
    contact_sheet_pairs: int = 12
    device: str = "cpu"  # where the vision encoder and the VPG run (attention step, encoder filter)
    threads: int | None = 1  # torch CPU threads per process (null: torch's default); 1 is fastest on shared cores
    source: SourceConfig = SourceConfig()
    segmenter: SegmenterConfig = SegmenterConfig()
    selection: SelectionConfig = SelectionConfig()
    planner: PlannerConfig = PlannerConfig()
    editor: EditorConfig = EditorConfig()
    filter: FilterConfig = FilterConfig()

    def to_dict(self) -> dict[str, Any]:
        return plain(dataclasses.asdict(self))


SECTIONS = {
    "source": SourceConfig,
    "segmenter": SegmenterConfig,
    "selection": SelectionConfig,
    "planner": PlannerConfig,
    "editor": EditorConfig,
    "filter": FilterConfig,
}


def _typed(cls: type, data: Any, where: str) -> Any:
    """Dataclass `cls` from a mapping: unknown keys are errors, lists become tuples where the default is one."""
    if not isinstance(data, dict):
        raise UserError(f"{where}: expected a mapping, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise UserError(f"{where}: unknown key(s) {unknown}; allowed: {sorted(fields)}")
    values = {}
    for name, value in data.items():
        default = fields[name].default
        if isinstance(default, tuple) and isinstance(value, list):
            value = tuple(value)
        values[name] = value
    return cls(**values)


def synth_config_from_dict(data: Any, where: str = "synth") -> SynthConfig:
    """Build and validate a `SynthConfig` from the `synth:` mapping; `where` names the file in errors."""
    if not isinstance(data, dict):
        raise UserError(f"{where}: expected a mapping, got {type(data).__name__}")
    data = dict(data)
    sections = {name: _typed(cls, data.pop(name, {}) or {}, f"{where}.{name}") for name, cls in SECTIONS.items()}
    config = _typed(SynthConfig, {**data, **sections}, where)
    validate(config, where)
    return config


def _choice(value: str, allowed: tuple[str, ...], where: str) -> None:
    if value not in allowed:
        raise UserError(f"{where}: {value!r} is not one of {list(allowed)}")


def validate(config: SynthConfig, where: str = "synth") -> None:
    """Cross-field checks: each kind has what it needs, and the steps fit together."""
    source, seg, sel = config.source, config.segmenter, config.selection
    _choice(source.kind, SOURCE_KINDS, f"{where}.source.kind")
    _choice(seg.kind, SEGMENTER_KINDS, f"{where}.segmenter.kind")
    _choice(sel.rule, SELECTION_RULES, f"{where}.selection.rule")
    _choice(config.planner.kind, PLANNER_KINDS, f"{where}.planner.kind")
    _choice(config.editor.kind, EDITOR_KINDS, f"{where}.editor.kind")
    _choice(config.filter.kind, FILTER_KINDS, f"{where}.filter.kind")
    for name in ("seed", "init_seed", "chunk_size", "edits_per_image", "contact_sheet_pairs"):
        value = getattr(config, name)
        if isinstance(value, bool) or not isinstance(value, int) or (name not in ("seed", "init_seed") and value < 0):
            raise UserError(f"{where}.{name}: expected a non-negative integer, got {value!r}")
    if config.chunk_size < 1:
        raise UserError(f"{where}.chunk_size: must be at least 1")
    if config.threads is not None and (
        isinstance(config.threads, bool) or not isinstance(config.threads, int) or config.threads < 1
    ):
        raise UserError(f"{where}.threads: expected a positive integer or null, got {config.threads!r}")
    if config.count is not None and (isinstance(config.count, bool) or not isinstance(config.count, int)):
        raise UserError(f"{where}.count: expected an integer or null, got {config.count!r}")
    if source.kind == "procedural" and config.count is None:
        raise UserError(f"{where}.count: the procedural source is endless; set how many scenes to render")
    if source.kind == "procedural" and not 1 <= source.objects[0] <= source.objects[1] <= 9:
        raise UserError(f"{where}.source.objects: need 1 <= min <= max <= 9 (one per colour), got {source.objects}")
    if source.kind == "folder" and not source.captions:
        raise UserError(f"{where}.source.captions: the folder source needs a captions file (TSV/CSV/JSONL/Parquet)")
    if source.kind == "webdataset" and not source.shards:
        raise UserError(f"{where}.source.shards: the webdataset source needs a glob of .tar shards")
    unknown = sorted(set(config.edit_types) - set(EDIT_TYPES))
    if unknown:
        raise UserError(f"{where}.edit_types: unknown edit type(s) {unknown}; use {list(EDIT_TYPES)}")
    weights = list(config.edit_types.values())
    if any(not isinstance(w, int | float) or w < 0 for w in weights) or not any(w > 0 for w in weights):
        raise UserError(f"{where}.edit_types: weights must be non-negative numbers, at least one positive")
    if not 0 <= sel.min_area < sel.max_area <= 1 or sel.k < 1:
        raise UserError(f"{where}.selection: need 0 <= min_area < max_area <= 1 and k >= 1")
    for name in ("difference_instructions", "caption_instructions"):
        if not getattr(config, name):
            raise UserError(f"{where}.{name}: give at least one instruction")
    exact_only = {"segmenter.kind: exact": seg.kind == "exact", "editor.kind: render": config.editor.kind == "render"}
    for what, used in exact_only.items():
        if used and source.kind != "procedural":
            raise UserError(
                f"{where}.{what} needs the procedural source (it knows the scene); use felzenszwalb/slic/"
                "sam and the pixel/diffusers editor for real images"
            )
    if config.editor.kind == "render" and seg.kind != "exact":
        raise UserError(f"{where}.editor.kind: render re-draws the scene's own objects; it needs segmenter.kind: exact")
    needs_model = {
        "segmenter": seg.kind == "sam" and not seg.model,
        "planner": config.planner.kind != "template" and not config.planner.model,
        "editor": config.editor.kind == "diffusers" and not config.editor.model,
        "filter": config.filter.kind == "clip" and not config.filter.model,
    }
    for name, missing in needs_model.items():
        if missing:
            raise UserError(f"{where}.{name}.model: the {getattr(config, name).kind} {name} needs a model")
    if config.planner.kind == "openai" and not config.planner.base_url:
        raise UserError(f"{where}.planner.base_url: the openai planner needs the endpoint, e.g. http://host:8000")
