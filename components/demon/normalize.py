"""Normalize the official DEMON layout into the unified sample schema, explaining every sample it rejects.

Reads `<raw>/<Task>/<split>/<split>.json` (+ `<split>/images/`) for every task folder it recognises and writes
`<out>/samples.parquet`, `<out>/quarantine.jsonl` and `<out>/report.json`. Accounting is exact, per task:
normalized + quarantined = input. A task whose JSON cannot be read gets an `error` and the others go on. The JSON
is read by `taskfile.read_task_file`, the reader fetch uses too, so both judge a file alike. Nothing on disk can
stop a run: a dangling or looping link, an unreadable file, a folder named like an image, an empty file or a name
that is not UTF-8 ends as a quarantined sample (or a task error) with its reason. When `<raw>` was filled by
`demonlab data fetch`, the files fetch refused to install (`not_installed` in its manifest, e.g. a link that would
have left its task) give the reason for the samples that use them, so fetched and direct runs account alike.

Every image is decoded once (that is the floor cost of knowing it is intact), in a thread pool since Pillow
releases the GIL while decoding. Each finished task is journaled as a shard under `<out>/.shards/`, keyed by the
task file's hash and its images' sizes and mtimes, so a killed run resumes where it stopped; the journal is removed
once the final outputs are written (staleness across runs is DVC's job). A resumed run writes what an uninterrupted
one writes: how many tasks it took from the journal (`tasks_resumed`) is in the returned report, not in report.json.
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import re
import shutil
import stat
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from components import atomic
from components.demon import registry
from components.demon.acquire import load_manifest
from components.demon.registry import Split, Task, find_task
from components.demon.schema import COLUMNS, SAMPLE_SCHEMA, placeholder_indices
from components.demon.taskfile import TaskDocument, TaskFileError, display_name, read_task_file
from components.errors import UserError

SHARD_VERSION = 2  # bump when the rules change, so old shards are not reused
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
        info = path.stat()  # first, so a FIFO named like an image is never opened (that would block)
    except FileNotFoundError:
        return f"is a dangling link (to {display_name(os.readlink(path))!r})" if path.is_symlink() else "is missing"
    except OSError as error:  # a link loop, a folder on the way that cannot be entered
        return f"cannot be reached ({error.strerror})"
    if stat.S_ISDIR(info.st_mode):
        return "is a folder, not an image file"
    if not stat.S_ISREG(info.st_mode):
        return "is not a regular file (a device, FIFO or socket)"
    if info.st_size == 0:
        return "is empty (0 bytes)"
    try:
        with Image.open(path) as image:
            pixels = image.width * image.height
            if Image.MAX_IMAGE_PIXELS and pixels > Image.MAX_IMAGE_PIXELS:
                return (
                    f"{image.width}x{image.height} pixels exceeds Pillow's decompression-bomb limit "
                    f"({Image.MAX_IMAGE_PIXELS:,}); downscale the file or raise PIL.Image.MAX_IMAGE_PIXELS"
                )
            image.load()
    except Image.DecompressionBombError as error:
        return f"exceeds Pillow's decompression-bomb limit ({error})"
    except UnidentifiedImageError:
        return "is not an image Pillow can identify (wrong format or corrupt header)"
    except PermissionError:
        return "cannot be read (permission denied); fix its permissions"
    except OSError as error:  # truncated data, or the file changed under us
        return f"cannot be decoded: {error}"
    except (ValueError, SyntaxError) as error:  # raised by some Pillow decoders on corrupt data
        return f"cannot be decoded: {error}"
    return None


def resolve_image(file: TaskFile, name: object) -> Path:
    """The image file a `images_path` entry names, refusing anything that leaves the task folder.

    Only links lead elsewhere, so a plain file name in an `images/` inside the task needs one `lstat`, not a full
    resolution. A file fetch refused to install is refused here with fetch's reason.
    """
    if not isinstance(name, str) or not name.strip() or "\x00" in name:
        raise Rejected("bad_image_path", f"image path {name!r} is not a file name")
    if os.path.isabs(name) or re.match(r"^[A-Za-z]:[\\/]", name):
        raise Rejected("unsafe_image_path", f"image path {name!r} is absolute; paths must be relative to images/")
    if ".." in re.split(r"[\\/]", name):
        raise Rejected("unsafe_image_path", f"image path {name!r} contains '..'")
    path = file.images_dir / name
    if file.not_installed and not os.path.lexists(path):
        rel = PurePosixPath("images", name)
        for candidate in (rel, *rel.parents[:-1]):  # the file itself, or a folder (link) above it
            if (entry := file.not_installed.get(candidate.as_posix())) is not None:
                code = "unsafe_image_path" if entry.get("link") is not None else "bad_image"
                reason = f"image path {name!r} was not installed by fetch: {entry['entry']} {entry['reason']}"
                raise Rejected(code, reason)
    if file.images_in_task and "/" not in name and "\\" not in name and not os.path.islink(path):
        return path
    real = os.path.realpath(path)
    if not real.startswith(file.task_real + os.sep):
        raise Rejected(
            "unsafe_image_path", f"image path {name!r} resolves outside the task folder (to {display_name(real)})"
        )
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


FetchFindings = dict[str, tuple[str | None, list[dict]]]  # task folder -> (json sha256 fetch saw, not_installed)


def fetch_findings(raw: Path, split: Split) -> FetchFindings:
    """What `demonlab data fetch` left out of each task split of `raw` (nothing when raw was not fetched)."""
    try:
        tasks = load_manifest(raw)["tasks"]
    except UserError:  # a manifest.json that is not fetch's only costs the fetch reasons: disk is still judged
        return {}
    return {
        folder: (entry.get("json_sha256"), entry.get("not_installed", []))
        for folder, task in tasks.items()
        if (entry := task.get("splits", {}).get(split)) is not None
    }


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
    not_installed: dict[str, dict] = field(default_factory=dict)  # fetch's refusals, by path under the split

    @classmethod
    def open(
        cls, task: Task, split: Split, raw: Path, folder: str, document: TaskDocument, fetched: FetchFindings
    ) -> TaskFile:
        images_dir = raw / folder / split / "images"
        task_real = os.path.realpath(raw / folder)
        source_sha = hashlib.sha256(document.payload).hexdigest()
        recorded_sha, entries = fetched.get(folder, (None, []))
        return cls(
            task=task,
            split=split,
            raw=raw,
            source=f"{folder}/{split}/{split}.json",
            source_sha=source_sha,
            templates=document.templates,
            images_dir=images_dir,
            task_real=task_real,
            images_in_task=os.path.realpath(images_dir).startswith(task_real + os.sep),
            # only while the task file is the one fetch installed: a later hand edit makes them stale
            not_installed={e["path"]: e for e in entries} if recorded_sha == source_sha else {},
        )


def normalize_sample(file: TaskFile, item: object) -> tuple[dict, list[Path]]:
    """One official sample -> one schema row plus the image files still to be checked; raises Rejected."""
    task, split, templates = file.task, file.split, file.templates
    if not isinstance(item, dict):
        raise Rejected("missing_field", f"sample is a {type(item).__name__}, not an object")
    for key in ("sample_id", "task_instruction_id", "task_instance", "response"):
        if key not in item:
            raise Rejected("missing_field", f"missing field {key!r}")
    if not isinstance(item["sample_id"], int) or isinstance(item["sample_id"], bool):
        raise Rejected("missing_field", f"sample_id {item['sample_id']!r} is not an integer")
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
    try:  # JSON escapes can hold lone surrogates: no file name, and Parquet cannot store them
        json.dumps([item, templates[template_id]], ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError as error:
        char = error.object[error.start : error.end]
        raise Rejected(
            "bad_text",
            f"the sample or its template holds {char!r}, a JSON \\u escape that is not Unicode text (as a file name "
            "that is not UTF-8 would need); fix the escape, or rename the file",
        ) from None

    image_files = [resolve_image(file, name) for name in images_path]
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
    try:  # an id from JSON may hold a lone surrogate, which no UTF-8 file can store
        json.dumps(sample_id, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        sample_id = ascii(sample_id)
    return {"task": task.folder, "sample_id": sample_id, "code": code, "reason": reason, "file": source}


def normalize_task(
    task: Task, folder: str, raw: Path, split: Split, imap: Callable = map, fetched: FetchFindings | None = None
) -> TaskResult:
    """Read one task's JSON, validate every sample and its images."""
    json_path = raw / folder / split / f"{split}.json"
    source = json_path.relative_to(raw).as_posix()
    result = TaskResult(task=task.folder, folder=folder, input=0, rows=[], quarantine=[])
    try:
        document = read_task_file(json_path, source)
    except TaskFileError as error:
        result.error = str(error)
        return result

    result.input = len(document.samples)
    file = TaskFile.open(task, split, raw, folder, document, fetched or {})
    seen: set[object] = set()
    pending: list[tuple[dict, list[Path]]] = []
    for item in document.samples:
        sample_id = item.get("sample_id") if isinstance(item, dict) else None
        try:
            if isinstance(sample_id, int | str) and sample_id in seen:  # lists and objects are no id (or hashable)
                raise Rejected("duplicate_sample_id", f"duplicate sample_id {sample_id!r} (the first one is kept)")
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
    try:
        digest.update((raw / folder / split / f"{split}.json").read_bytes())
    except OSError as error:  # the task will fail with the reason; the fingerprint only needs to differ
        digest.update(f"<{error.strerror}>".encode())
    try:
        entries = sorted(os.scandir(raw / folder / split / "images"), key=lambda e: e.name)
    except OSError:  # no images/ (or none we may list): the samples that need it are quarantined
        entries = []
    for entry in entries:
        try:
            info = entry.stat()
        except OSError:  # a dangling or looping link: its own metadata still says when it changes
            info = entry.stat(follow_symlinks=False)
        digest.update(os.fsencode(entry.name) + f":{info.st_size}:{info.st_mtime_ns};".encode())
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
    try:
        entries = sorted(p for p in raw.iterdir() if p.is_dir() and not p.name.startswith("."))
    except OSError as error:
        raise UserError(f"cannot list the raw DEMON folder {raw} ({error.strerror})") from None
    for entry in entries:
        task = find_task(entry.name)
        if task is None or task.folder in found:
            ignored.append(display_name(entry.name))  # a report is UTF-8: show undecodable bytes as \xNN
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
    """Normalize a raw DEMON tree; returns the report (`out/report.json` plus `tasks_resumed`)."""
    raw, out = Path(os.path.realpath(raw)), Path(os.path.realpath(out))  # Path.resolve raises on a link loop
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

    fetched = fetch_findings(raw, split)
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
                result = normalize_task(task, folder, raw, split, imap, fetched)
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
    }
    atomic.write_json(out / "report.json", report)
    shutil.rmtree(shard_dir)
    return {**report, "tasks_resumed": reused}


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
