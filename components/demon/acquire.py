"""Fetch the DEMON benchmark into the official layout: `<dest>/<Task>/<split>/<split>.json` + `images/`.

Sources (`fetch(source, ...)`):

    gdrive://[<folder-id>]        the Google Drive folder (default: the official one), through gdown
    https://host/demon.zip        an archive (zip, tar, tar.gz, ...) over HTTP(S); resumes with Range requests
    s3://bucket/key.tar.gz        an archive on S3 or any S3-compatible store (AWS_ENDPOINT_URL, AWS_* vars)
    hf://<owner>/<repo>[@rev]     a dataset mirror on the Hugging Face Hub (HF_ENDPOINT honoured)
    /path/to/folder | archive     a local copy, laid out like the Drive folder or packed in one archive

Append `#sha256=<hex>` to an archive URL to verify it. Whatever the source, ingestion is the same: task
folders are found at any depth (under category folders, inside `<Task>.zip` or `core.zip` archives, which
are extracted safely by `archives.expand`), their names are mapped to the registry's canonical folders
(aliases such as `MMQA` or `nuscenes` included), only the requested split and tasks are kept, and folders
that are no DEMON task are ignored and listed in the manifest.

Fetch installs what the source holds and leaves the judgment of the data to normalize: a task whose json is
damaged is installed all the same (its manifest entry carries the reader's `error`, the one `normalize` reports
too), so the report a user keeps accounts for every task of the source. The one thing fetch does not install
is what would change meaning on the way: a symlink that resolves outside its task split (it would dangle, or
point elsewhere, once the split sits under `<dest>`) is refused and listed, with the archive and entry it came
from, in the split's `not_installed`, as is a file a local source does not let us read; normalize quarantines
the samples that use them with that reason. Links that stay inside the split are kept.

Everything is staged under `<dest>/.demonlab/` and each task split is renamed into place only when complete,
so a failed fetch leaves no half-written task folder; partial downloads stay there so the next run resumes.
`<dest>/manifest.json` records every fetch (source, sha256 of each downloaded archive) and every installed
task split (file count, sha256 of its json); a second fetch of the same source verifies those against the
disk and downloads nothing. It records no time and names the destination as given, so the same fetch writes the
same manifest (it is part of the acquire stage's DVC output; when the stage ran is its MLflow run's start and end).
`DEMONLAB_NET_TIMEOUT` (seconds, default 30) bounds every network wait.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from components import atomic
from components.demon import registry
from components.demon.archives import archive_stem, expand, is_archive
from components.demon.registry import Split, Task, find_task
from components.demon.sources import (
    Source,
    download_dir,
    download_gdrive,
    download_hf,
    download_http,
    download_s3,
    parse_source,
    sha256_file,
)
from components.demon.taskfile import TaskFileError, display_name, read_task_file
from components.errors import UserError

logger = logging.getLogger(__name__)

MANIFEST = "manifest.json"
STATE_DIR = ".demonlab"  # staging, partial downloads; hidden so task scanners skip it
MANIFEST_FORMAT = 1
SPLITS: tuple[Split, ...] = ("core", "full")
MAX_ARCHIVE_DEPTH = 3  # archives inside archives inside archives, no deeper
_SKIP_DIRS = {"__MACOSX", "__pycache__"}


def _count_files(folder: Path) -> int:
    return sum(len(files) for _root, _dirs, files in os.walk(folder))


def _say(message: str, progress: bool) -> None:
    logger.info(message)
    if progress:
        tqdm.write(message, file=sys.stderr)


def _select_tasks(tasks: list[str] | None, split: Split) -> tuple[dict[str, Task], list[str] | None]:
    """The wanted tasks by canonical folder, and the explicit selection (None = every task of the split)."""
    if tasks is None:
        return {t.folder: t for t in registry.tasks(split)}, None
    chosen: dict[str, Task] = {}
    unknown = []
    for name in tasks:
        task = find_task(name)
        if task is None:
            unknown.append(name)
        elif not task.in_split(split):
            raise UserError(f"task {task.folder} has no {split} split; choose --split full or drop it from --tasks")
        else:
            chosen[task.folder] = task
    if unknown:
        known = ", ".join(t.folder for t in registry.tasks(split))
        raise UserError(
            f"unknown DEMON task(s): {', '.join(unknown)}; known {split} tasks: {known} "
            "(aliases such as MMQA, DiDemoSV, Flintstones, nuscenes work too)"
        )
    if not chosen:
        raise UserError("the task list is empty; leave --tasks out to fetch every task")
    return chosen, sorted(chosen)


# --------------------------------------------------------------------------------------------- ingestion


@dataclass
class _Found:
    task: Task
    split_dir: Path
    origin: str  # where in the source, e.g. "Knowledge Grounded QA/MMQA.zip!/MMQA"
    movable: bool  # in our staging area: move instead of copy


@dataclass
class _Scan:
    """Finds task folders under a source tree, expanding archives on the way."""

    split: Split
    wanted: dict[str, Task]
    staging: Path
    progress: bool
    skip: Path | None = None  # the destination, when it lies inside a local source
    found: dict[str, _Found] = field(default_factory=dict)
    ignored: list[dict[str, str]] = field(default_factory=list)
    not_selected: set[str] = field(default_factory=set)
    other_split_only: dict[str, str] = field(default_factory=dict)
    _expanded: int = 0

    def scan(self, root: Path, origin: str, movable: bool, depth: int = 0, top: Path | None = None) -> bool:
        """Scan `root`; returns whether any DEMON task (wanted or not) was recognised under it.

        `top` is where an expanded archive's own entries start (below `root` when it was not hoisted), so that
        origins name real archive entries: `demon.tar.gz!/demon/TQA`.
        """

        def origin_of(path: Path) -> str:
            base = top if top is not None and path.is_relative_to(top) else root
            rel = display_name(path.relative_to(base).as_posix())  # the manifest is UTF-8; names need not be
            return origin if rel == "." else f"{origin}/{rel}" if origin else rel

        productive: set[Path] = set()
        reported: set[Path] = set()
        visited: list[Path] = []
        archives: list[Path] = []
        for dirpath, dirnames, filenames in os.walk(root):
            here = Path(dirpath)
            dirnames[:] = sorted(
                n
                for n in dirnames
                if not n.startswith(".")
                and n not in _SKIP_DIRS
                and (self.skip is None or (here / n).resolve() != self.skip)
            )
            visited.append(here)
            archives += [here / n for n in sorted(filenames) if is_archive(n) and not n.startswith(".")]
            splits = {
                n.lower(): here / n
                for n in dirnames
                if n.lower() in SPLITS and (here / n / f"{n.lower()}.json").is_file()
            }
            if not splits:
                continue
            dirnames[:] = []  # a task folder: everything inside belongs to it
            if self._task_folder(here, splits, origin_of(here), movable):
                productive.add(here)
            else:
                reported.add(here)
        for archive in archives:
            if self._archive(archive, root, origin_of(archive), depth):
                productive.add(archive.parent)
        closure: set[Path] = set()
        for path in productive:
            while path not in closure:
                closure.add(path)
                if path == root:
                    break
                path = path.parent
        for here in visited:
            if here != root and here not in closure and here not in reported and here.parent in closure:
                self.ignored.append({"path": origin_of(here), "reason": "no DEMON task folder inside"})
        return bool(productive)

    def _task_folder(self, here: Path, splits: dict[str, Path], origin: str, movable: bool) -> bool:
        """Record a folder holding `<split>/<split>.json`; returns whether it is a DEMON task."""
        task = find_task(here.name) or _task_from_json(next(iter(splits.values())))
        if task is None:
            self.ignored.append(
                {"path": origin, "reason": f"folder {here.name!r} has DEMON-like data but names no DEMON task"}
            )
            return False
        if task.folder not in self.wanted:
            self.not_selected.add(task.folder)
        elif self.split not in splits:
            self.other_split_only.setdefault(task.folder, origin)
        elif (previous := self.found.get(task.folder)) is not None:
            json_name = f"{self.split}.json"
            if sha256_file(previous.split_dir / json_name) != sha256_file(splits[self.split] / json_name):
                raise UserError(
                    f"two different folders hold DEMON task {task.folder} ({self.split}): {previous.origin} and "
                    f"{origin}; remove or rename one of them and fetch again"
                )
            self.ignored.append({"path": origin, "reason": f"duplicate of {previous.origin} (same {json_name})"})
        else:
            self.found[task.folder] = _Found(task, splits[self.split], origin, movable)
        return True

    def _archive(self, archive: Path, root: Path, origin: str, depth: int) -> bool:
        """Expand an archive (unless its name shows it is not needed) and scan it; returns whether it is DEMON's."""
        stem = archive_stem(archive)
        if stem.lower() in SPLITS:  # `core.zip` / `full.zip` inside a task folder
            owner = find_task(archive.parent.name)
            if stem.lower() != self.split or (owner is not None and owner.folder in self.found):
                return True
        task = find_task(stem)
        if task is not None:
            if task.folder not in self.wanted:
                self.not_selected.add(task.folder)
                return True
            if task.folder in self.found:  # the same task already came unpacked
                return True
        if depth >= MAX_ARCHIVE_DEPTH:
            self.ignored.append({"path": origin, "reason": f"archive nested deeper than {MAX_ARCHIVE_DEPTH}"})
            return False
        self._expanded += 1
        where = self.staging / "expanded" / str(self._expanded) / archive.parent.relative_to(root)
        top = expand(archive, where, self.progress).top
        if self.scan(where, f"{origin}!", movable=True, depth=depth + 1, top=top):
            return True
        self.ignored.append({"path": origin, "reason": "archive holds no DEMON task folder"})
        return False


def _task_from_json(split_dir: Path) -> Task | None:
    """The task a split folder's json names in `metadata.dataset` (for folders renamed by hand)."""
    for name in SPLITS:
        path = split_dir / f"{name}.json"
        if path.is_file():
            try:
                dataset = read_task_file(path, path.name).metadata.get("dataset")
            except TaskFileError:
                return None
            return find_task(dataset) if isinstance(dataset, str) and dataset else None
    return None


def _links_leaving(split_dir: Path) -> tuple[dict[str, str], dict[str, str]]:
    """The symlinks under a split folder, by path relative to it, that would change meaning once it is installed.

    Returns (refused: those resolving outside the split -> their target, rewritten: those given as an absolute
    path into the split -> the relative target that means the same). Links that dangle or loop inside the split
    keep their meaning and stay: normalize quarantines the samples that use them.
    """
    top = os.path.realpath(split_dir)
    refused: dict[str, str] = {}
    rewritten: dict[str, str] = {}
    for dirpath, dirnames, filenames in os.walk(split_dir):  # links to folders are listed, never entered
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            if not os.path.islink(path):
                continue
            target, real = os.readlink(path), os.path.realpath(path)
            rel = os.path.relpath(path, split_dir)
            if not real.startswith(top + os.sep):
                refused[rel] = target
            elif os.path.isabs(target):
                rewritten[rel] = os.path.relpath(real, os.path.realpath(dirpath))
    return refused, rewritten


def _stage_split(found: _Found, target: Path, where: str) -> list[dict[str, str | None]]:
    """Move or copy a found split folder to `target`, links keeping their meaning; returns what was not installed.

    `where` is the split's origin (`demon.tar.gz!/demon/TQA/core`): each not-installed entry names it.
    """
    refused, rewritten = _links_leaving(found.split_dir)
    skipped: list[dict[str, str | None]] = []
    if found.movable:
        os.rename(found.split_dir, target)
    else:
        try:
            shutil.copytree(found.split_dir, target, symlinks=True)
        except shutil.Error as error:  # copytree copies what it can and lists the rest
            for source_path, _dst, why in error.args[0]:
                rel = os.path.relpath(source_path, found.split_dir)
                skipped.append(_not_installed(where, rel, None, f"cannot be read ({why})"))
    for rel, link in refused.items():
        os.unlink(target / rel)
        reason = f"is a symlink to {display_name(link)!r}, which resolves outside its task split once installed"
        skipped.append(_not_installed(where, rel, link, reason))
    for rel, link in rewritten.items():
        os.unlink(target / rel)
        os.symlink(link, target / rel)
    return sorted(skipped, key=lambda record: record["path"])  # by name, not the file system's listing order


def _not_installed(where: str, rel: str, link: str | None, reason: str) -> dict[str, str | None]:
    """A manifest record of a file fetch did not install (paths made printable: names need not be UTF-8)."""
    path = display_name(Path(rel).as_posix())
    return {
        "path": path,
        "entry": f"{where}/{path}",
        "link": None if link is None else display_name(link),
        "reason": reason,
    }


def _expand_inner_archives(split_dir: Path, progress: bool) -> None:
    """Unpack archives inside a task split (`images.zip` -> `images/`) and drop them."""
    for archive in [Path(r) / n for r, _d, files in os.walk(split_dir) for n in files if is_archive(n)]:
        expand(archive, archive.parent, progress)
        archive.unlink()


def _describe(folder: str, split: Split, split_dir: Path, origin: str) -> dict[str, Any]:
    """The manifest entry of a collected task split; a json normalize cannot read gets its `error` (0 samples)."""
    json_path = split_dir / f"{split}.json"
    label = f"{folder}/{split}/{split}.json"
    try:
        data, error = read_task_file(json_path, label).samples, None
    except TaskFileError as failure:
        data, error = [], str(failure)
    images = split_dir / "images"
    referenced = {
        name
        for sample in data
        if isinstance(sample, dict) and isinstance(sample.get("task_instance"), dict)
        for name in sample["task_instance"].get("images_path") or []
        if isinstance(name, str)
    }
    return {
        "origin": origin,
        "json": label,
        "json_sha256": sha256_file(json_path) if json_path.is_file() else None,
        "samples": len(data),
        "error": error,
        "files": _count_files(split_dir),
        "missing_images": sum(1 for name in referenced if not (images / name).is_file()),
    }


# --------------------------------------------------------------------------------------------- manifest


def _empty_manifest() -> dict[str, Any]:
    return {"format": MANIFEST_FORMAT, "benchmark": "DEMON", "tasks": {}, "fetches": []}


def load_manifest(dest: Path) -> dict[str, Any]:
    """`dest/manifest.json`, or an empty manifest when there is none yet."""
    path = dest / MANIFEST
    if not path.exists():
        return _empty_manifest()
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as error:
        raise UserError(f"{path} is not valid JSON ({error}); delete it and fetch again") from None
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        raise UserError(f"{path} is not a demonlab manifest (format {MANIFEST_FORMAT}); delete it and fetch again")
    return manifest


def _changed(dest: Path, folder: str, split: Split, entry: dict[str, Any]) -> str | None:
    """Why an installed task split no longer matches its manifest entry; None when it still does."""
    split_dir = dest / folder / split
    json_path = split_dir / f"{split}.json"
    if not json_path.is_file():
        return f"{json_path} is missing"
    if (count := _count_files(split_dir)) != entry["files"]:
        return f"{split_dir} holds {count} files, {entry['files']} were installed"
    if sha256_file(json_path) != entry["json_sha256"]:
        return f"{json_path} was modified"
    return None


def _already_fetched(
    manifest: dict[str, Any], dest: Path, source: Source, split: Split, explicit: list[str] | None, progress: bool
) -> dict[str, Any] | None:
    """The earlier fetch record that covers this request and still matches the disk, if any."""
    for record in manifest["fetches"]:
        if record["source"] != source.key or record["split"] != split:
            continue
        if record["tasks"] is not None and (explicit is None or not set(explicit) <= set(record["tasks"])):
            continue
        folders = [f for f in record["installed"] if explicit is None or f in explicit]
        reasons = []
        for folder in folders:
            entry = manifest["tasks"].get(folder, {}).get("splits", {}).get(split)
            if entry is None or entry.get("source") != source.key:
                reasons.append(f"{folder}/{split} was replaced by another fetch")
            elif (reason := _changed(dest, folder, split, entry)) is not None:
                reasons.append(reason)
        if not reasons:
            return record
        _say(f"fetching again: {'; '.join(reasons)}", progress)
    return None


# --------------------------------------------------------------------------------------------- fetch


@contextmanager
def _exclusive(dest: Path) -> Iterator[None]:
    """Hold `dest/.demonlab/lock` so two fetches never install into one destination at once."""
    (dest / STATE_DIR).mkdir(exist_ok=True)
    with open(dest / STATE_DIR / "lock", "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UserError(f"another fetch is writing into {dest}; wait for it to finish and run again") from None
        yield


def fetch(
    source: str,
    dest: Path,
    split: Split = "core",
    tasks: list[str] | None = None,
    progress: bool = True,
    force: bool = False,
) -> dict:
    """Fetch DEMON from `source` into `dest`; returns the manifest dict (also written to dest/manifest.json).

    `tasks` selects task folders (aliases and case ignored; None = every task of `split`). `force` fetches
    again even when the manifest says this source was fetched already and the files still match it.
    The returned manifest's `last_fetch` says what this call did (`downloaded`: False for a no-op).
    """
    if split not in SPLITS:
        raise UserError(f"split must be 'core' or 'full', not {split!r}")
    parsed = parse_source(source)
    wanted, explicit = _select_tasks(tasks, split)
    shown, dest = Path(dest), Path(dest).expanduser().resolve()  # messages name dest as given (kept in the manifest)
    if parsed.kind == "local-dir" and (
        dest == Path(parsed.location) or Path(parsed.location).is_relative_to(dest / STATE_DIR)
    ):
        raise UserError(f"source {parsed.location} is the destination {dest} itself; choose another --dest")
    if dest.exists() and not dest.is_dir():
        raise UserError(f"destination {dest} is a file; choose a folder for --dest")
    dest.mkdir(parents=True, exist_ok=True)
    with _exclusive(dest):
        return _fetch_locked(parsed, dest, shown, split, wanted, explicit, progress, force)


def _fetch_locked(
    parsed: Source,
    dest: Path,
    shown: Path,
    split: Split,
    wanted: dict[str, Task],
    explicit: list[str] | None,
    progress: bool,
    force: bool,
) -> dict[str, Any]:
    manifest = load_manifest(dest)

    if not force and (record := _already_fetched(manifest, dest, parsed, split, explicit, progress)):
        folders = [f for f in record["installed"] if explicit is None or f in explicit]
        message = (
            f"DEMON {split}: {len(folders)} task(s) from {parsed.key} already in {shown} and unchanged "
            f"(file counts and {split}.json sha256 verified); nothing downloaded"
        )
        _say(message, progress)
        manifest["last_fetch"] = {**record, "downloaded": False, "message": message}
        atomic.write_json(dest / MANIFEST, manifest)
        return manifest

    state = dest / STATE_DIR
    staging = Path(tempfile.mkdtemp(prefix="staging-", dir=state))
    try:
        root, origin, movable, downloads, finished = _materialize(parsed, state, staging, split, wanted, progress)
        scan = _Scan(split, wanted, staging, progress, skip=dest if parsed.kind == "local-dir" else None)
        scan.scan(root, origin, movable)
        if not scan.found:
            raise UserError(_nothing_found(parsed, split, scan, explicit))
        collected: dict[str, tuple[Path, dict[str, Any]]] = {}
        for folder, found in tqdm(sorted(scan.found.items()), desc="collect tasks", disable=not progress, leave=False):
            target = staging / "tasks" / folder / split
            target.parent.mkdir(parents=True)
            where = "/".join(part for part in (found.origin, found.split_dir.name) if part)
            not_installed = _stage_split(found, target, where)
            _expand_inner_archives(target, progress)
            entry = _describe(folder, split, target, found.origin)
            collected[folder] = (target, {**entry, "not_installed": not_installed})
            # Said here, judged by normalize: its report counts these tasks and samples.
            if entry["error"]:
                _say(f"{entry['error']} (installed as it is; normalize reports it)", progress)
            if not_installed:
                first = not_installed[0]
                _say(
                    f"{folder}: {len(not_installed)} file(s) not installed, e.g. {first['entry']} {first['reason']}; "
                    "see not_installed in manifest.json",
                    progress,
                )
        replaced = staging / "replaced"
        replaced.mkdir()
        for folder, (target, _entry) in collected.items():
            final = dest / folder / split
            final.parent.mkdir(exist_ok=True)
            if final.exists():
                os.rename(final, replaced / folder)
            os.rename(target, final)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    for path in finished:  # downloads are only kept until their content is installed
        shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)

    for folder, (_target, entry) in collected.items():
        task_entry = manifest["tasks"].setdefault(folder, {"category": wanted[folder].category, "splits": {}})
        task_entry["splits"][split] = {"source": parsed.key, **entry}
    missing = {
        folder: (
            f"the source has only the other split ({scan.other_split_only[folder]})"
            if folder in scan.other_split_only
            else "not in the source"
        )
        for folder in sorted(set(wanted) - set(collected))
    }
    damaged = sorted(folder for folder, (_target, entry) in collected.items() if entry["error"])
    record = {
        "source": parsed.key,
        "kind": parsed.kind,
        "split": split,
        "tasks": explicit,
        "downloads": downloads,
        "installed": sorted(collected),
        "missing": missing,
        "not_selected": sorted(scan.not_selected),
        "ignored": scan.ignored,
    }
    manifest["fetches"] = [
        r for r in manifest["fetches"] if (r["source"], r["split"], r["tasks"]) != (parsed.key, split, explicit)
    ] + [record]
    message = (
        f"DEMON {split}: installed {len(collected)} task(s) from {parsed.key} into {shown}"
        + (f"; {len(damaged)} with a task file normalize will reject: {', '.join(damaged)}" if damaged else "")
        + (f"; {len(missing)} wanted task(s) not in the source" if missing else "")
        + (f"; ignored {len(scan.ignored)} folder(s)/archive(s), see manifest.json" if scan.ignored else "")
    )
    _say(message, progress)
    manifest["last_fetch"] = {**record, "downloaded": True, "message": message}
    atomic.write_json(dest / MANIFEST, manifest)
    return manifest


def _relevant(path: str, split: Split, wanted: dict[str, Task]) -> bool:
    """Whether a file at `path` in a remote folder may hold wanted data, so is worth downloading.

    False when a path component names the other split (`MMQA/full/...`, `MMQA/full.zip`) or a task that was
    not asked for (`VIST/...`, `VIST.zip`); anything else (category folders, unknown names) is kept.
    """
    other = "full" if split == "core" else "core"
    for part in path.split("/"):
        name = archive_stem(part)
        task = find_task(name)
        if name.lower() == other or (task is not None and task.folder not in wanted):
            return False
    return True


def _materialize(
    source: Source, state: Path, staging: Path, split: Split, wanted: dict[str, Task], progress: bool
) -> tuple[Path, str, bool, list[dict[str, Any]], list[Path]]:
    """Bring the source onto local disk: (root to scan, its origin label, movable, downloads, to delete after)."""
    if source.kind == "local-dir":
        return Path(source.location), "", False, [], []
    if source.kind == "local-archive":
        archive = Path(source.location)
        digest = sha256_file(archive)
        if source.sha256 and digest != source.sha256:
            raise UserError(f"sha256 mismatch for {archive}: expected {source.sha256}, got {digest}")
        root = staging / "source"
        root.mkdir()
        (root / archive.name).symlink_to(archive)
        record = {"name": archive.name, "sha256": digest, "bytes": archive.stat().st_size}
        return root, "", True, [record], []
    if source.kind in ("http", "s3"):
        archive = (download_http if source.kind == "http" else download_s3)(source, state / "downloads", progress)
        record = {"name": archive.name, "sha256": sha256_file(archive), "bytes": archive.stat().st_size}
        return archive.parent, "", True, [record], [archive.parent]
    target = download_dir(state / "downloads", source)
    keep = partial(_relevant, split=split, wanted=wanted)
    (download_hf if source.kind == "hf" else download_gdrive)(source, target, keep, progress)
    records = [
        {"name": path.relative_to(target).as_posix(), "sha256": sha256_file(path), "bytes": path.stat().st_size}
        for path in sorted(target.rglob("*"))
        if path.is_file() and is_archive(path) and ".cache" not in path.relative_to(target).parts
    ]
    return target, "", True, records, [target]


def _nothing_found(source: Source, split: Split, scan: _Scan, explicit: list[str] | None) -> str:
    what = f"the requested task(s) ({', '.join(explicit)})" if explicit else "any DEMON task folder"
    lines = [
        f"found no {split} data for {what} in {source.key}; expected <Task>/{split}/{split}.json at any depth "
        f"(task folders may sit under category folders or inside zip/tar archives)"
    ]
    if scan.other_split_only:
        lines.append(f"only the other split exists for: {', '.join(sorted(scan.other_split_only))}")
    if scan.not_selected:
        lines.append(f"present but not selected: {', '.join(sorted(scan.not_selected))}")
    if scan.ignored:
        lines.append("ignored: " + "; ".join(f"{i['path']} ({i['reason']})" for i in scan.ignored[:10]))
    return "; ".join(lines)
