"""Image-caption sources, all behind one interface: `len(source)` items, `source.load(index)` -> `Item`.

- `ProceduralSource`: rendered scenes (exact masks via `Item.scene`), deterministic by (seed, index).
- `FolderSource`: a captions table (TSV/CSV/JSONL/Parquet, e.g. CC3M's `caption<TAB>url` TSV after download, or an
  img2dataset Parquet) whose image column names files under a root folder.
- `WebDatasetSource`: `.tar` shards where `<key>.jpg` and `<key>.txt` belong together (img2dataset's webdataset
  output); members are indexed once (headers only) and read by index.

Every item goes down the same pipeline; a bad item raises `Skip` with a reason a person can act on.
"""

from __future__ import annotations

import glob
import hashlib
import io
import os
import random
import tarfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from PIL import Image, UnidentifiedImageError

from components.errors import UserError
from components.synth import scenes
from components.synth.config import SourceConfig
from components.synth.scenes import Scene

Member = tuple[str, int, int]  # a tar member: name, offset of its data, size


class Skip(Exception):
    """An input that cannot be used; `code` groups the reasons in the report."""

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(reason)
        self.code = code


@dataclass
class Item:
    """One source image-caption pair, ready for the pipeline (the image already at working size)."""

    index: int
    key: str  # stable identity: a file path relative to the source root, `shard.tar:key`, or `procedural/seed/i`
    image: Image.Image  # RGB
    caption: str
    sha256: str  # of the source bytes (or of the rendered pixels)
    scene: Scene | None = None  # procedural only: the objects, so masks and edits are exact


def item_rng(seed: int, index: int, purpose: str) -> random.Random:
    """A per-item random stream from (seed, index, purpose): string seeds go through SHA-512 in `random.seed`,
    stable across processes and independent of any global state."""
    return random.Random(f"demonlab-synth/{seed}/{index}/{purpose}")


def decode_image(payload: bytes, what: str, max_side: int) -> Image.Image:
    """Bytes -> RGB image with its longer side at most `max_side`; `Skip` when it cannot be decoded."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(payload)) as image:
                image.load()
                rgb = image.convert("RGB")
    except UnidentifiedImageError:
        raise Skip("unreadable_image", f"{what} is not an image Pillow can identify; repair or remove it") from None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise Skip("unreadable_image", f"{what} cannot be decoded ({error}); repair or remove it") from None
    scale = max_side / max(rgb.size)
    if scale < 1:
        size = (max(1, round(rgb.width * scale)), max(1, round(rgb.height * scale)))
        rgb = rgb.resize(size, Image.Resampling.LANCZOS)
    return rgb


def clean_caption(value: object, what: str) -> str:
    text = "" if value is None or (isinstance(value, float) and pd.isna(value)) else str(value).strip()
    if not text:
        raise Skip("empty_caption", f"{what} has an empty caption; fill it in or drop the row")
    return " ".join(text.split())


class ProceduralSource:
    def __init__(self, config: SourceConfig, count: int, seed: int) -> None:
        self.config, self.count, self.seed = config, count, seed

    def __len__(self) -> int:
        return self.count

    @property
    def identity(self) -> str:
        return f"procedural:{self.config.objects}:{self.config.size}"

    def load(self, index: int) -> Item:
        rng = item_rng(self.seed, index, "scene")
        scene = scenes.random_scene(rng, self.config.objects, self.config.size)
        image = scenes.render(scene)
        digest = hashlib.sha256(image.tobytes()).hexdigest()
        return Item(index, f"procedural/{self.seed}/{index}", image, scenes.caption(scene, rng), digest, scene)


class FolderSource:
    def __init__(self, config: SourceConfig) -> None:
        self.config = config
        path = Path(config.captions).expanduser()
        self.root = Path(config.root).expanduser() if config.root else path.parent
        if not path.is_file():
            raise UserError(f"synth.source.captions: {path} not found; point it at the captions table")
        self.table = read_table(path, config.header)
        for column in (config.image_column, config.caption_column):
            if column not in self.table.columns:
                raise UserError(
                    f"synth.source: {path} has no column {column!r} (columns: {list(self.table.columns)}); set "
                    "image_column / caption_column (numbers for a headerless TSV such as CC3M's)"
                )
        self.digest = hashlib.sha256(path.read_bytes()).hexdigest()

    def __len__(self) -> int:
        return len(self.table)

    @property
    def identity(self) -> str:
        return f"folder:{self.root.resolve()}:{self.digest}"

    def load(self, index: int) -> Item:
        row = self.table.iloc[index]
        name = str(row[self.config.image_column])
        what = f"row {index} ({name})"
        caption = clean_caption(row[self.config.caption_column], what)
        path = self.root / name
        try:
            payload = path.read_bytes()
        except OSError as error:
            raise Skip("unreadable_image", f"{what}: {path} cannot be read ({error.strerror or error})") from None
        image = decode_image(payload, f"{what}: {path}", self.config.max_side)
        return Item(index, name, image, caption, hashlib.sha256(payload).hexdigest())


def read_table(path: Path, header: bool) -> pd.DataFrame:
    """A captions table by extension; TSV/CSV cells stay text, a headerless file gets column numbers."""
    suffix = path.suffix.lower()
    try:
        if suffix == ".parquet":
            return pd.read_parquet(path)
        if suffix == ".jsonl":
            return pd.read_json(path, lines=True, dtype=False)
        if suffix in (".tsv", ".csv", ".txt"):
            sep = "," if suffix == ".csv" else "\t"
            return pd.read_csv(path, sep=sep, header=0 if header else None, dtype=str, keep_default_na=False,
                               quoting=3 if sep == "\t" else 0)  # fmt: skip  # 3 = QUOTE_NONE: TSV quotes are text
    except (ValueError, OSError) as error:
        raise UserError(f"synth.source.captions: {path} cannot be read as {suffix} ({error})") from None
    raise UserError(f"synth.source.captions: {path} must be .tsv, .csv, .jsonl or .parquet")


class WebDatasetSource:
    def __init__(self, config: SourceConfig) -> None:
        self.config = config
        self.shards = sorted(glob.glob(os.path.expanduser(config.shards)))
        if not self.shards:
            raise UserError(f"synth.source.shards: no file matches {config.shards!r}")
        # per item: shard, key, image member, caption member; a member is (name, data offset, size) in its shard
        self.items: list[tuple[str, str, Member | None, Member | None]] = []
        for shard in self.shards:
            try:
                with tarfile.open(shard) as tar:
                    members = [(m.name, m.offset_data, m.size) for m in tar.getmembers() if m.isfile()]
            except (tarfile.TarError, OSError) as error:
                raise UserError(f"synth.source.shards: {shard} is not a readable tar ({error})") from None
            groups: dict[str, dict[str, Member]] = {}
            for member in members:
                key, _, ext = member[0].partition(".")  # webdataset: the key ends at the first dot of the base name
                groups.setdefault(key, {})[ext.lower()] = member
            for key, group in groups.items():
                image = next((group[e] for e in config.image_extensions if e in group), None)
                text = next((group[e] for e in config.caption_extensions if e in group), None)
                self.items.append((shard, key, image, text))

    def __len__(self) -> int:
        return len(self.items)

    @property
    def identity(self) -> str:
        stats = [(s, os.stat(s).st_size, os.stat(s).st_mtime_ns) for s in self.shards]
        return f"webdataset:{hashlib.sha256(repr(stats).encode()).hexdigest()}"

    @staticmethod
    def _read(shard: str, member: Member) -> bytes:
        """A member's bytes straight from its offset: no tar re-scan per item, no handle kept across processes."""
        name, offset, size = member
        try:
            with open(shard, "rb") as handle:
                handle.seek(offset)
                payload = handle.read(size)
        except OSError as error:
            raise Skip("unreadable_image", f"{shard}:{name} cannot be read ({error.strerror or error})") from None
        if len(payload) != size:
            raise Skip("unreadable_image", f"{shard}:{name} is truncated; re-create the shard")
        return payload

    def load(self, index: int) -> Item:
        shard, key, image_member, text_member = self.items[index]
        what = f"{Path(shard).name}:{key}"
        if image_member is None:
            raise Skip("unreadable_image", f"{what} has no image member ({'/'.join(self.config.image_extensions)})")
        caption = self._read(shard, text_member).decode("utf-8", errors="replace") if text_member else ""
        caption = clean_caption(caption, what)
        payload = self._read(shard, image_member)
        image = decode_image(payload, f"{what} ({image_member[0]})", self.config.max_side)
        return Item(index, what, image, caption, hashlib.sha256(payload).hexdigest())


Source = ProceduralSource | FolderSource | WebDatasetSource


def build_source(config: SourceConfig, count: int | None, seed: int) -> Source:
    if config.kind == "procedural":
        return ProceduralSource(config, int(count or 0), seed)
    if config.kind == "folder":
        return FolderSource(config)
    return WebDatasetSource(config)
