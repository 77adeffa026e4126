"""Normalize the official DEMON layout into the unified sample schema, explaining every sample it rejects.

Reads `<raw>/<Task>/<split>/<split>.json` (+ `<split>/images/`) for every task folder it recognises and writes
`<out>/samples.parquet`, `<out>/quarantine.jsonl` and `<out>/report.json`. Accounting is exact, per task:
normalized + quarantined = input. A task whose JSON cannot be read gets an `error` and the others go on.

Every image is decoded once (that is the floor cost of knowing it is intact), in a thread pool since Pillow
releases the GIL while decoding. Each finished task is journaled as a shard under `<out>/.shards/`, keyed by the
task file's hash and its images' sizes and mtimes, so a killed run resumes where it stopped; the journal is removed
once the final outputs are written (staleness across runs is DVC's job).
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import re
import shutil
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from components import atomic
from components.demon import registry
from components.demon.registry import Split, Task, find_task
from components.demon.schema import COLUMNS, SAMPLE_SCHEMA, placeholder_indices
from components.errors import UserError

SHARD_VERSION = 1  # bump when the rules change, so old shards are not reused
INLINE_CHOICES = re.compile(r"Choice List:\s*\[(.*)\]", re.IGNORECASE | re.DOTALL)
IMAGE_OPTION = re.compile(r"\s*(image\s+[a-z])\b", re.IGNORECASE)


@dataclass
class TaskResult:
    """What one task folder produced: kept rows, quarantined samples, or a task-level error."""

    task: str
    folder: str
    input: int
    rows: list[dict]
    quarantine: list[dict]
    error: str | None = None

    def counts(self) -> dict:
        return {
            "folder": self.folder,
            "input": self.input,
            "normalized": len(self.rows),
            "quarantined": len(self.quarantine),
            "error": self.error,
        }


class Rejected(Exception):
    """A sample-level problem; the message is the reason shown to a person."""

    def __init__(self, code: str, reason: str):
        super().__init__(reason)
        self.code = code


# ---------------------------------------------------------------------------------------------- images


def check_image(path: Path) -> str | None:
    """Decode the image fully; None when intact, else the reason it is not usable."""
    try:
        with Image.open(path) as image:
            pixels = image.width * image.height
            if Image.MAX_IMAGE_PIXELS and pixels > Image.MAX_IMAGE_PIXELS:
                return (
                    f"{image.width}x{image.height} pixels exceeds Pillow's decompression-bomb limit "
                    f"({Image.MAX_IMAGE_PIXELS:,}); downscale the file or raise PIL.Image.MAX_IMAGE_PIXELS"
                )
            image.load()
    except FileNotFoundError:
        return "is missing"
    except Image.DecompressionBombError as error:
        return f"exceeds Pillow's decompression-bomb limit ({error})"
    except UnidentifiedImageError:
        return "is not an image Pillow can identify (wrong format or corrupt header)"
    except OSError as error:  # truncated data, unreadable file, a folder in place of a file
        return f"cannot be decoded: {error}"
    except (ValueError, SyntaxError) as error:  # raised by some Pillow decoders on corrupt data
        return f"cannot be decoded: {error}"
    return None


def resolve_image(images_dir: Path, name: object, task_real: str, images_in_task: bool) -> Path:
    """The image file a `images_path` entry names, refusing anything that leaves the task folder.

    `task_real` is the task folder with links resolved; `images_in_task` says whether `images_dir` (resolved)
    lies inside it. Only links lead elsewhere, so a plain file name needs one `lstat`, not a full resolution.
    """
    if not isinstance(name, str) or not name.strip():
        raise Rejected("bad_image_path", f"image path {name!r} is not a file name")
    if os.path.isabs(name) or re.match(r"^[A-Za-z]:[\\/]", name):
        raise Rejected("unsafe_image_path", f"image path {name!r} is absolute; paths must be relative to images/")
    if ".." in re.split(r"[\\/]", name):
        raise Rejected("unsafe_image_path", f"image path {name!r} contains '..'")
    path = images_dir / name
    if images_in_task and "/" not in name and "\\" not in name and not os.path.islink(path):
        return path
    real = os.path.realpath(path)
    if not real.startswith(task_real + os.sep):
        raise Rejected("unsafe_image_path", f"image path {name!r} resolves outside the task folder (to {real})")
    return path


# ---------------------------------------------------------------------------------------------- choices


def parse_inline_choices(context: str) -> list[str] | None:
    """Options given only inside the context (`Choice List:['a', 'b']`), as some README examples have them.

    Python-literal first; real contexts also carry unescaped quotes ("for pete ' s sake"), so fall back to
    splitting on the quote-comma-quote separators.
    """
    match = INLINE_CHOICES.search(context)
    if match is None:
        return None
    body = match.group(1)
    try:
        options = ast.literal_eval(f"[{body}]")
        if isinstance(options, list) and all(isinstance(o, str | int | float) for o in options):
            return [str(o) for o in options]
    except (ValueError, SyntaxError):
        pass
    body = body.strip()
    if len(body) >= 2 and body[0] == body[-1] and body[0] in "'\"":
        quote = body[0]
        return re.split(rf"{quote}\s*,\s*{quote}", body[1:-1])
    return None


def response_in_options(task: Task, response: str, options: list[str]) -> bool:
    if task.image_options:  # options look like 'Image A: {image#4}', the response like 'Image A'
        labels = {m.group(1).lower().split()[-1] for o in options if (m := IMAGE_OPTION.match(o))}
        answer = IMAGE_OPTION.match(response)
        return answer is not None and answer.group(1).lower().split()[-1] in labels
    return response.strip().casefold() in {o.strip().casefold() for o in options}


# ---------------------------------------------------------------------------------------------- samples


@dataclass(frozen=True)
class TaskFile:
    """One task's JSON file as read: what every sample of it is checked against."""

    task: Task
    split: Split
    raw: Path
    source: str  # the JSON, relative to `raw`
    source_sha: str
    templates: list[str]
    images_dir: Path
    task_real: str  # the task folder with links resolved
    images_in_task: bool  # whether images/ (resolved) lies inside it

    @classmethod
    def open(cls, task: Task, split: Split, raw: Path, folder: str, payload: bytes, templates: list[str]) -> TaskFile:
        images_dir = raw / folder / split / "images"
        task_real = os.path.realpath(raw / folder)
        return cls(
            task=task,
            split=split,
            raw=raw,
            source=f"{folder}/{split}/{split}.json",
            source_sha=hashlib.sha256(payload).hexdigest(),
            templates=templates,
            images_dir=images_dir,
            task_real=task_real,
            images_in_task=os.path.realpath(images_dir).startswith(task_real + os.sep),
        )


def normalize_sample(file: TaskFile, item: object) -> tuple[dict, list[Path]]:
    """One official sample -> one schema row plus the image files still to be checked; raises Rejected."""
    task, split, templates = file.task, file.split, file.templates
    if not isinstance(item, dict):
        raise Rejected("missing_field", f"sample is a {type(item).__name__}, not an object")
    for key in ("sample_id", "task_instruction_id", "task_instance", "response"):
        if key not in item:
            raise Rejected("missing_field", f"missing field {key!r}")
    instance = item["task_instance"]
    if not isinstance(instance, dict):
        raise Rejected("missing_field", "field 'task_instance' is not an object")
    for key in ("context", "images_path"):
        if key not in instance:
            raise Rejected("missing_field", f"missing field 'task_instance.{key}'")
    context, images_path = instance["context"], instance["images_path"]
    if not isinstance(context, str) or not isinstance(images_path, list):
        raise Rejected("missing_field", "'context' must be a string and 'images_path' a list")

    template_id = item["task_instruction_id"]
    if not isinstance(template_id, int) or not 0 <= template_id < len(templates):
        raise Rejected(
            "template_out_of_range",
            f"task_instruction_id {template_id!r} is outside the {len(templates)} templates in metadata",
        )

    image_files = [resolve_image(file.images_dir, name, file.task_real, file.images_in_task) for name in images_path]
    for k in placeholder_indices(context):
        if not 1 <= k <= len(images_path):
            raise Rejected(
                "placeholder_out_of_range",
                f"context references image #{k} but images_path has {len(images_path)} entries",
            )

    response = item["response"]
    if isinstance(response, bool) or not isinstance(response, str | int | float):
        raise Rejected("bad_response", f"response {response!r} is not text")
    response = str(response)

    question_type = task.normalized_question_type
    choices, inline = None, False
    if question_type != "open-ended":
        choices = instance.get("choice_list")
        if choices is None:
            choices, inline = parse_inline_choices(context), True
        if not choices or not isinstance(choices, list):
            raise Rejected("missing_choices", "multiple-choice sample has no choice_list (nor an inline Choice List)")
        choices = [str(c) for c in choices]
        if not response_in_options(task, response, choices):
            raise Rejected("response_not_in_choices", f"response {response!r} is not among the options {choices}")

    row = {
        "uid": f"{task.folder}/{split}/{item['sample_id']}",
        "task": task.folder,
        "category": task.category,
        "split": split,
        "sample_id": int(item["sample_id"]),
        "question_type": question_type,
        "instruction_id": template_id,
        "instruction": templates[template_id],
        "context": context,
        "images": [p.relative_to(file.raw).as_posix() for p in image_files],
        "choice_list": choices,
        "choices_inline": inline,
        "response": response,
        "source": file.source,
        "source_sha256": file.source_sha,
    }
    return row, image_files


def quarantine_entry(task: Task, source: str, sample_id: object, code: str, reason: str) -> dict:
    return {"task": task.folder, "sample_id": sample_id, "code": code, "reason": reason, "file": source}


def normalize_task(task: Task, folder: str, raw: Path, split: Split, imap: Callable = map) -> TaskResult:
    """Read one task's JSON, validate every sample and its images."""
    json_path = raw / folder / split / f"{split}.json"
    source = json_path.relative_to(raw).as_posix()
    result = TaskResult(task=task.folder, folder=folder, input=0, rows=[], quarantine=[])
    try:
        payload = json_path.read_bytes()
        document = json.loads(payload.decode("utf-8-sig"))  # some files start with a UTF-8 BOM
        samples, metadata = document["data"], document["metadata"]
        templates = metadata["task_instruction"]
        if not isinstance(samples, list) or not isinstance(templates, list):
            raise TypeError("'data' and 'metadata.task_instruction' must be lists")
    except FileNotFoundError:
        result.error = f"{source} is missing; expected the official layout <Task>/{split}/{split}.json"
        return result
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        result.error = f"{source} is not valid JSON ({error}); re-download this task"
        return result
    except (KeyError, TypeError) as error:
        result.error = f"{source} does not follow the DEMON schema ({error!s}); re-download this task"
        return result

    result.input = len(samples)
    file = TaskFile.open(task, split, raw, folder, payload, templates)
    seen: set[object] = set()
    pending: list[tuple[dict, list[Path]]] = []
    for item in samples:
        sample_id = item.get("sample_id") if isinstance(item, dict) else None
        try:
            if sample_id in seen and sample_id is not None:
                raise Rejected("duplicate_sample_id", f"duplicate sample_id {sample_id} (the first one is kept)")
            seen.add(sample_id)
            pending.append(normalize_sample(file, item))
        except Rejected as rejected:
            result.quarantine.append(quarantine_entry(task, source, sample_id, rejected.code, str(rejected)))

    unique_images = list(dict.fromkeys(p for _, files in pending for p in files))
    image_problems = dict(zip(unique_images, imap(check_image, unique_images), strict=True))
    for row, files in pending:
        bad = next(((p, image_problems[p]) for p in files if image_problems[p]), None)
        if bad is None:
            result.rows.append(row)
        else:
            path, problem = bad
            reason = f"image {path.relative_to(raw).as_posix()} {problem}; repair or re-fetch it to keep this sample"
            result.quarantine.append(quarantine_entry(task, source, row["sample_id"], "bad_image", reason))
    return result


# ---------------------------------------------------------------------------------------------- shards


def task_fingerprint(raw: Path, folder: str, split: Split) -> str:
    """Hash of the task JSON and the sizes/mtimes of its images: what a finished shard depends on."""
    digest = hashlib.sha256(f"v{SHARD_VERSION}".encode())
    json_path = raw / folder / split / f"{split}.json"
    digest.update(json_path.read_bytes() if json_path.is_file() else b"<missing>")
    images_dir = raw / folder / split / "images"
    if images_dir.is_dir():
        for entry in sorted(os.scandir(images_dir), key=lambda e: e.name):
            stat = entry.stat()
            digest.update(f"{entry.name}:{stat.st_size}:{stat.st_mtime_ns};".encode())
    return digest.hexdigest()


def save_shard(shard_dir: Path, fingerprint: str, result: TaskResult) -> None:
    table = pa.Table.from_pylist(result.rows, schema=SAMPLE_SCHEMA)
    with atomic.atomic_path(shard_dir / f"{result.task}.parquet") as tmp:
        pq.write_table(table, tmp)
    meta = {"fingerprint": fingerprint, **result.counts(), "quarantine": result.quarantine}
    atomic.write_json(shard_dir / f"{result.task}.json", meta)  # written last: marks the shard complete


def load_shard(shard_dir: Path, fingerprint: str, task: str) -> TaskResult | None:
    meta_path = shard_dir / f"{task}.json"
    if not meta_path.is_file():
        return None
    meta = json.loads(meta_path.read_text())
    if meta.get("fingerprint") != fingerprint:
        return None
    rows = pq.read_table(shard_dir / f"{task}.parquet").to_pylist()
    return TaskResult(task, meta["folder"], meta["input"], rows, meta["quarantine"], meta["error"])


# ---------------------------------------------------------------------------------------------- driver


def discover(raw: Path) -> tuple[dict[str, tuple[Task, str]], list[str]]:
    """Map task folders under `raw` to registry tasks; also list the folders that are no DEMON task."""
    found: dict[str, tuple[Task, str]] = {}
    ignored: list[str] = []
    for entry in sorted(p for p in raw.iterdir() if p.is_dir() and not p.name.startswith(".")):
        task = find_task(entry.name)
        if task is None or task.folder in found:
            ignored.append(entry.name)
        else:
            found[task.folder] = (task, entry.name)
    return found, ignored


def normalize(
    raw: Path,
    out: Path,
    split: Split = "core",
    tasks: list[str] | None = None,
    workers: int | None = None,
    progress: bool = True,
) -> dict:
    """Normalize a raw DEMON tree; returns the report (also written to `out/report.json`)."""
    raw, out = Path(raw).resolve(), Path(out).resolve()
    if not raw.is_dir():
        raise UserError(f"raw DEMON folder {raw} does not exist; fetch it with `demonlab data fetch` first")
    if out == raw or raw.is_relative_to(out):
        raise UserError(f"--out {out} must not contain the raw data folder {raw}")
    found, ignored = discover(raw)
    if tasks:
        unknown = [t for t in tasks if find_task(t) is None or find_task(t).folder not in found]
        if unknown:
            raise UserError(f"tasks {unknown} are not in {raw}; present: {sorted(found)}")
        wanted = {find_task(t).folder for t in tasks}
        found = {k: v for k, v in found.items() if k in wanted}
    if not found:
        raise UserError(f"{raw} holds no DEMON task folder (looked for <Task>/{split}/{split}.json)")

    shard_dir = out / ".shards"
    results: list[TaskResult] = []
    reused = 0
    workers = workers or min(8, (os.cpu_count() or 1) * 2)
    with warnings.catch_warnings(), ThreadPoolExecutor(max_workers=workers) as pool:
        imap = pool.map if workers > 1 else map  # one worker: skip the futures' overhead
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # checked explicitly, per image
        for name, (task, folder) in tqdm(found.items(), desc="normalize", unit="task", disable=not progress):
            fingerprint = task_fingerprint(raw, folder, split)
            result = load_shard(shard_dir, fingerprint, name)
            if result is None:
                result = normalize_task(task, folder, raw, split, imap)
                save_shard(shard_dir, fingerprint, result)
            else:
                reused += 1
            results.append(result)

    rows = [row for r in results for row in r.rows]
    quarantine = [entry for r in results for entry in r.quarantine]
    frame = pd.DataFrame(rows, columns=list(COLUMNS))
    with atomic.atomic_path(out / "samples.parquet") as tmp:
        pq.write_table(pa.Table.from_pandas(frame, schema=SAMPLE_SCHEMA, preserve_index=False), tmp)
    atomic.write_jsonl(out / "quarantine.jsonl", quarantine)
    per_task = {r.task: r.counts() for r in results}
    report = {
        "split": split,
        "raw_root": os.path.relpath(raw, out),
        "tasks": per_task,
        "totals": {
            "tasks": len(results),
            "tasks_failed": sum(1 for r in results if r.error),
            "input": sum(r.input for r in results),
            "normalized": len(rows),
            "quarantined": len(quarantine),
        },
        "quarantine_by_code": dict(sorted(pd.Series([q["code"] for q in quarantine]).value_counts().items())),
        "ignored_folders": ignored,
        # a subset run was asked for; otherwise every task of the split should have been there
        "missing_tasks": [] if tasks else [t.folder for t in registry.tasks(split) if t.folder not in per_task],
        "tasks_resumed": reused,
    }
    atomic.write_json(out / "report.json", report)
    shutil.rmtree(shard_dir)
    return report


def load_samples(normalized: Path) -> tuple[pd.DataFrame, Path]:
    """The normalized samples and the dataset root their image paths are relative to."""
    normalized = Path(normalized)
    report_path = normalized / "report.json"
    if not report_path.is_file():
        raise UserError(
            f"{normalized} is not a normalized DEMON folder (no report.json); run `demonlab data normalize`"
        )
    root = (normalized / json.loads(report_path.read_text())["raw_root"]).resolve()
    return pd.read_parquet(normalized / "samples.parquet"), root
