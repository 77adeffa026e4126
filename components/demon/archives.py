"""Safe extraction of the archives DEMON arrives in: zip and tar (plain, gzip, bzip2, xz).

Every entry of an archive is checked before anything is written: absolute paths, `..` components, entries
written through a symlink of the same archive, symlinks or hardlinks whose target leaves the extraction
folder, and device/FIFO entries are refused, and then nothing at all is extracted from that archive.
Extraction goes to a temporary sibling folder that is renamed into place only when complete, so an
interrupted or refused extraction leaves no half-written folder behind. Tar extraction additionally runs
under Python's `data` filter, which re-checks every link against the real file system at write time.
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
from collections.abc import Iterable
from pathlib import Path

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


def _check_not_through_link(archive: Path, name: str, links: set[str]) -> None:
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


def _checked_zip_members(archive: Path, zf: zipfile.ZipFile) -> list[zipfile.ZipInfo]:
    links: set[str] = set()
    infos = zf.infolist()
    for info in infos:
        name = _check_name(archive, info.filename)
        _check_not_through_link(archive, name, links)
        mode = info.external_attr >> 16
        if info.create_system == 3 and stat.S_ISLNK(mode):
            # zipfile writes a symlink entry as a small file holding the target; still refuse escaping ones.
            target = zf.read(info).decode("utf-8", "replace")
            _check_link_target(archive, name, target, relative_to_entry=True, kind="symlink")
            links.add(name)
    return infos


def _extract_all(archive: Path, into: Path, progress: bool) -> int:
    """Check every entry, then extract them all into `into`; returns the number of entries."""
    fmt = archive_format(archive)
    desc = f"extract {archive.name}"
    try:
        if fmt == "zip":
            with zipfile.ZipFile(archive) as zf:
                infos = _checked_zip_members(archive, zf)
                for info in _bar(infos, desc, progress):
                    zf.extract(info, into)
                return len(infos)
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


def expand(archive: Path, parent: Path, progress: bool = True) -> Path:
    """Extract `archive` safely into `parent/<stem>` and return that folder.

    An archive whose only top-level entry is a folder named like the archive (`MMQA.zip` holding `MMQA/`)
    is hoisted, so both packings give `parent/MMQA/...`. If the folder exists already the archive's
    content is merged into it (so `images/` plus `images.zip` end up as one folder).
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
    return target
