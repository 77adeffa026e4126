"""Safe extraction of the archives DEMON arrives in: zip and tar (plain, gzip, bzip2, xz).

Every entry of an archive is checked before anything is written: absolute paths, `..` components, entries
written through a symlink of the same archive, symlinks or hardlinks whose target leaves the extraction
folder, and device/FIFO entries are refused, and then nothing at all is extracted from that archive.
Extraction goes to a temporary sibling folder that is renamed into place only when complete, so an
interrupted or refused extraction leaves no half-written folder behind. Tar extraction additionally runs
under Python's `data` filter, which re-checks every link against the real file system at write time. Zip
symlink entries (Unix mode) become real links, as tar's do, so both packings of a tree extract the same; they
are created after every other entry and re-checked against the real file system, like the tar filter does.
"""

from __future__ import annotations

import os
import posixpath
import re
import shutil
import stat
import tarfile
import tempfile
import zipfile
import zlib
from collections.abc import Container, Iterable
from pathlib import Path
from typing import NamedTuple

from tqdm.auto import tqdm

from components.errors import UserError

# Longest first, so `x.tar.gz` is recognised before `x.gz` could be.
ARCHIVE_SUFFIXES = (".tar.gz", ".tar.bz2", ".tar.xz", ".tgz", ".tbz2", ".txz", ".tar", ".zip")

_WINDOWS_DRIVE = re.compile(r"^[A-Za-z]:")


class UnsafeArchiveError(UserError):
    """An archive entry would land outside the extraction folder (or is a device file); nothing was extracted."""


def archive_suffix(path: str | Path) -> str | None:
    """The archive suffix of a file name (`.tar.gz`, `.zip`, ...), or None for other files."""
    name = Path(path).name.lower()
    return next((suffix for suffix in ARCHIVE_SUFFIXES if name.endswith(suffix)), None)


def is_archive(path: str | Path) -> bool:
    return archive_suffix(path) is not None


def archive_stem(path: str | Path) -> str:
    """The file name without its archive suffix: `MMQA.tar.gz` -> `MMQA`."""
    name = Path(path).name
    suffix = archive_suffix(name)
    return name[: -len(suffix)] if suffix else name


def archive_format(path: Path) -> str | None:
    """`zip` or `tar` from the file's content (names from URLs may lack a suffix); None if neither."""
    if zipfile.is_zipfile(path):
        return "zip"
    try:
        return "tar" if tarfile.is_tarfile(path) else None
    except OSError:
        return None


def _unsafe(archive: Path, entry: str, reason: str) -> UnsafeArchiveError:
    return UnsafeArchiveError(
        f"refusing to extract {archive}: entry {entry!r} {reason}; nothing was extracted from this archive. "
        "It is corrupt or was crafted to write outside the destination: get it from a trusted source."
    )


def _parts(name: str) -> list[str]:
    # Backslashes count as separators too, so `..\\evil` from a Windows-made archive is caught as well.
    return [part for part in re.split(r"[/\\]", name) if part not in ("", ".")]


def _check_name(archive: Path, name: str) -> str:
    """The entry's normalised relative path; raises if it is absolute or climbs with `..`."""
    if "\x00" in name:
        raise _unsafe(archive, name, "contains a NUL character")
    if name.startswith(("/", "\\")) or _WINDOWS_DRIVE.match(name):
        raise _unsafe(archive, name, "has an absolute path")
    parts = _parts(name)
    if ".." in parts:
        raise _unsafe(archive, name, "has a '..' component that climbs out of the destination")
    return "/".join(parts)


def _check_link_target(archive: Path, name: str, target: str, *, relative_to_entry: bool, kind: str) -> None:
    """Refuse a link whose target is absolute or resolves (lexically) outside the extraction root."""
    if target.startswith(("/", "\\")) or _WINDOWS_DRIVE.match(target):
        raise _unsafe(archive, name, f"is a {kind} to the absolute path {target!r}")
    base = posixpath.dirname(name) if relative_to_entry else ""
    resolved = posixpath.normpath(posixpath.join(base, "/".join(re.split(r"[\\/]", target))))
    if resolved == ".." or resolved.startswith("../"):
        raise _unsafe(archive, name, f"is a {kind} pointing outside the destination ({target!r})")


def _check_not_through_link(archive: Path, name: str, links: Container[str]) -> None:
    parts = name.split("/")
    for i in range(1, len(parts)):
        if "/".join(parts[:i]) in links:
            raise _unsafe(archive, name, f"would be written through the link {'/'.join(parts[:i])!r}")


def _checked_tar_members(archive: Path, tar: tarfile.TarFile) -> list[tarfile.TarInfo]:
    links: set[str] = set()
    members = tar.getmembers()
    for member in members:
        name = _check_name(archive, member.name)
        _check_not_through_link(archive, name, links)
        if member.issym():
            _check_link_target(archive, name, member.linkname, relative_to_entry=True, kind="symlink")
            links.add(name)
        elif member.islnk():
            # Tar hardlink targets are relative to the archive root, not to the entry's folder.
            _check_link_target(archive, name, member.linkname, relative_to_entry=False, kind="hardlink")
        elif not (member.isfile() or member.isdir()):
            raise _unsafe(archive, name, "is a device, FIFO or other special file")
    return members


def _checked_zip_members(archive: Path, zf: zipfile.ZipFile) -> tuple[list[zipfile.ZipInfo], dict[str, str]]:
    """The entries to extract as files or folders, and the symlink entries (normalised name -> target)."""
    links: dict[str, str] = {}
    infos = []
    for info in zf.infolist():
        name = _check_name(archive, info.filename)
        _check_not_through_link(archive, name, links)
        if info.create_system == 3 and stat.S_ISLNK(info.external_attr >> 16):  # the entry's data is the target
            target = os.fsdecode(zf.read(info))
            _check_link_target(archive, name, target, relative_to_entry=True, kind="symlink")
            if name in links:
                raise _unsafe(archive, name, "is a symlink given twice")
            links[name] = target
        else:
            infos.append(info)
    return infos, links


def _make_zip_links(archive: Path, into: Path, links: dict[str, str]) -> None:
    """Create the symlink entries (after all files, so nothing is written through one) and re-check them on disk:
    a chain of links can leave the folder although each link's own target is lexically inside it."""
    root = os.path.realpath(into)
    for name, target in links.items():
        path = into / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if os.path.lexists(path):
            raise _unsafe(archive, name, "is a symlink over another entry of the same name")
        os.symlink(target, path)
    for name in links:
        if not os.path.realpath(into / name).startswith(root + os.sep):
            raise _unsafe(archive, name, "is a symlink that resolves outside the destination through other links")


def _extract_all(archive: Path, into: Path, progress: bool) -> int:
    """Check every entry, then extract them all into `into`; returns the number of entries."""
    fmt = archive_format(archive)
    desc = f"extract {archive.name}"
    try:
        if fmt == "zip":
            with zipfile.ZipFile(archive) as zf:
                infos, links = _checked_zip_members(archive, zf)
                for info in _bar(infos, desc, progress):
                    zf.extract(info, into)
                _make_zip_links(archive, into, links)
                return len(infos) + len(links)
        if fmt == "tar":
            with tarfile.open(archive) as tar:
                members = _checked_tar_members(archive, tar)
                for member in _bar(members, desc, progress):
                    tar.extract(member, into, filter="data")
                return len(members)
    except tarfile.FilterError as error:  # a link chain the lexical check could not see
        raise _unsafe(archive, error.tarinfo.name, f"was refused at extraction ({error})") from None
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, zlib.error) as error:
        raise UserError(f"archive {archive} is damaged or truncated ({error}); delete it and fetch it again") from None
    raise UserError(f"{archive} is neither a zip nor a tar archive; DEMON archives must be .zip, .tar or .tar.gz")


def _bar(items: list, desc: str, progress: bool) -> Iterable:
    return tqdm(items, desc=desc, unit="file", disable=not progress or len(items) < 50, leave=False)


def merge_tree(src: Path, dst: Path) -> None:
    """Move everything under `src` into `dst` (files already in `dst` are replaced), then remove `src`."""
    for root, _dirs, files in os.walk(src):
        rel = Path(root).relative_to(src)
        (dst / rel).mkdir(parents=True, exist_ok=True)
        for name in files:
            os.replace(Path(root) / name, dst / rel / name)
    shutil.rmtree(src)


class Expanded(NamedTuple):
    folder: Path  # parent/<stem>
    top: Path  # the folder that holds the archive's top-level entries: `folder`, or `parent` when hoisted


def expand(archive: Path, parent: Path, progress: bool = True) -> Expanded:
    """Extract `archive` safely into `parent/<stem>`; returns that folder and where the archive's top level lies.

    An archive whose only top-level entry is a folder named like the archive (`MMQA.zip` holding `MMQA/`)
    is hoisted, so both packings give `parent/MMQA/...`. If the folder exists already the archive's
    content is merged into it (so `images/` plus `images.zip` end up as one folder). `top` lets a caller name
    a file by its entry in the archive (`MMQA.zip!/MMQA/core/core.json`).
    """
    stem = archive_stem(archive)
    parent.mkdir(parents=True, exist_ok=True)
    target = parent / stem
    tmp = Path(tempfile.mkdtemp(prefix=f".{stem}.extract-", dir=parent))
    try:
        _extract_all(archive, tmp, progress)
        children = [child for child in tmp.iterdir() if child.name != "__MACOSX"]
        content = children[0] if len(children) == 1 and children[0].is_dir() else tmp
        if content is not tmp and content.name.lower() != stem.lower():
            content = tmp
        if target.exists():
            merge_tree(content, target)
        else:
            os.rename(content, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return Expanded(target, target if content is tmp else parent)
