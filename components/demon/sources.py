"""Where DEMON comes from: parsing `--source` and the downloaders (HTTP(S), S3, Hugging Face Hub, Drive).

Each downloader leaves its files in a per-source folder under `<dest>/.demonlab/downloads/` (see
`download_dir`), so an interrupted download resumes on the next run: archives through a `.part` file
(HTTP Range requests, or a seek on S3), Hub and Drive folders through their clients' own resume.
Every failure a user can act on (unreachable host, HTTP error, missing credentials or client library,
checksum mismatch) is raised as a `UserError` naming the host and a way forward.
`DEMONLAB_NET_TIMEOUT` (seconds, default 30) bounds every wait on a network peer.
"""

from __future__ import annotations

import glob
import hashlib
import importlib.util
import logging
import os
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import unquote, urlparse

from tqdm.auto import tqdm

if TYPE_CHECKING:
    import s3fs

from components.demon.archives import archive_format, is_archive
from components.demon.registry import OFFICIAL_GDRIVE_FOLDER_ID
from components.errors import UserError
from components.security import redact

logger = logging.getLogger(__name__)

DOWNLOAD_ATTEMPTS = 4  # tries per download; each retry resumes where the last one stopped
CHUNK = 1 << 20
GDRIVE_HOST = "drive.google.com"


def net_timeout() -> float:
    """Seconds to wait for a network peer (connect or between bytes); `DEMONLAB_NET_TIMEOUT` overrides."""
    raw = os.environ.get("DEMONLAB_NET_TIMEOUT", "30")
    try:
        value = float(raw)
    except ValueError:
        raise UserError(f"DEMONLAB_NET_TIMEOUT={raw!r} is not a number of seconds") from None
    if value <= 0:
        raise UserError(f"DEMONLAB_NET_TIMEOUT={raw!r} must be positive")
    return value


@dataclass(frozen=True)
class Source:
    """A parsed `--source`. `key` identifies it in the manifest (local paths absolute, default id spelled out)."""

    kind: Literal["gdrive", "http", "s3", "hf", "local-dir", "local-archive"]
    key: str
    location: str  # URL without fragment, s3 URL, Drive folder id, Hub repo id or local path
    revision: str | None = None  # Hub revision
    sha256: str | None = None  # expected sha256 of an archive

    @property
    def host(self) -> str:
        if self.kind == "gdrive":
            return GDRIVE_HOST
        if self.kind == "hf":
            return urlparse(_hf_endpoint()).hostname or "huggingface.co"
        if self.kind == "s3":
            endpoint = _s3_endpoint()
            return (urlparse(endpoint).netloc if endpoint else "") or "s3.amazonaws.com"
        return urlparse(self.location).netloc


def _parse_fragment(source: str, fragment: str) -> str:
    match = re.fullmatch(r"sha256=([0-9a-fA-F]{64})", fragment)
    if not match:
        raise UserError(
            f"source {source!r}: unknown URL fragment #{fragment}; the only fragment understood is "
            "#sha256=<64 hex digits>, the expected checksum of the archive"
        )
    return match.group(1).lower()


def parse_source(source: str) -> Source:
    """Classify `source` (see the module docstring); raises UserError for anything unusable."""
    text = source.strip()
    base, _, fragment = text.partition("#")
    sha = _parse_fragment(source, fragment) if fragment else None
    lower = base.lower()
    suffix = f"#sha256={sha}" if sha else ""

    drive_url = re.match(r"https?://drive\.google\.com/drive/(?:u/\d+/)?folders/([-\w]+)", base)
    if lower.startswith("gdrive://") or drive_url:
        folder_id = drive_url.group(1) if drive_url else base[len("gdrive://") :].strip("/")
        folder_id = folder_id or OFFICIAL_GDRIVE_FOLDER_ID
        if not re.fullmatch(r"[-\w]{10,}", folder_id):
            raise UserError(f"source {source!r}: {folder_id!r} is not a Google Drive folder id")
        return Source("gdrive", f"gdrive://{folder_id}", folder_id)
    if lower.startswith(("http://", "https://")):
        if not urlparse(base).netloc:
            raise UserError(f"source {source!r} has no host name")
        return Source("http", base + suffix, base, sha256=sha)
    if lower.startswith("s3://"):
        bucket, _, key = base[len("s3://") :].partition("/")
        if not bucket or not key or key.endswith("/"):
            raise UserError(f"source {source!r}: expected s3://<bucket>/<key of an archive>")
        return Source("s3", base + suffix, base, sha256=sha)
    if lower.startswith("hf://"):
        repo = base[len("hf://") :].strip("/").removeprefix("datasets/")
        repo, _, revision = repo.partition("@")
        if not re.fullmatch(r"[\w.-]+/[\w.-]+", repo):
            raise UserError(f"source {source!r}: expected hf://<owner>/<dataset-repo>[@revision]")
        key = f"hf://{repo}" + (f"@{revision}" if revision else "")
        return Source("hf", key, repo, revision=revision or None)
    if lower.startswith("file://"):
        base = unquote(urlparse(base).path)
    elif "://" in base:
        raise UserError(f"source {source!r}: unknown scheme; use gdrive://, https://, s3://, hf:// or a local path")
    path = Path(base).expanduser().resolve()
    if path.is_dir():
        return Source("local-dir", str(path), str(path))
    if path.is_file():
        if archive_format(path) is None:
            raise UserError(f"source {path} is a file but neither a zip nor a tar archive")
        return Source("local-archive", str(path) + suffix, str(path), sha256=sha)
    raise UserError(
        f"source {source!r} is neither a URL (gdrive://, https://, s3://, hf://) nor an existing folder or "
        "archive; check the path"
    )


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(CHUNK):
            digest.update(block)
    return digest.hexdigest()


# --------------------------------------------------------------------------------------------- downloads


def _reason(error: BaseException) -> str:
    """A one-line cause of a `requests` error (the real one sits inside urllib3's retry error)."""
    inner = error.args[0] if error.args and isinstance(error.args[0], BaseException) else error
    inner = getattr(inner, "reason", None) or inner
    return f"{type(inner).__name__}: {inner}"


def _write_stream(
    chunks: Iterator[bytes], part: Path, append: bool, have: int, total: int | None, desc: str, progress: bool
) -> None:
    with (
        open(part, "ab" if append else "wb") as fh,
        tqdm(
            total=total,
            initial=have,
            desc=desc,
            unit="B",
            unit_scale=True,
            unit_divisor=1024,
            disable=not progress,
            leave=False,
        ) as bar,
    ):
        for chunk in chunks:
            fh.write(chunk)
            bar.update(len(chunk))


def _finish_download(part: Path, final: Path, expected_sha: str | None, origin: str) -> str:
    """Verify the completed `.part` and rename it to `final`; returns its sha256."""
    digest = sha256_file(part)
    if expected_sha and digest != expected_sha:
        part.unlink()
        raise UserError(
            f"sha256 mismatch for {origin}: expected {expected_sha}, got {digest}; the download was deleted. "
            "Check the #sha256= value, or whether the archive was replaced upstream."
        )
    os.replace(part, final)
    return digest


def _named_archive(path: Path, origin: str) -> Path:
    """Give a downloaded file without an archive suffix one from its content (`download?id=3` -> `.zip`)."""
    if is_archive(path):
        return path
    fmt = archive_format(path)
    if fmt is None:
        raise UserError(f"{origin} did not deliver a zip or tar archive (saved as {path}); check the URL")
    renamed = path.with_name(f"{path.name}.{fmt}")
    os.replace(path, renamed)
    return renamed


def download_dir(downloads: Path, source: Source) -> Path:
    """The folder under `downloads` that holds this source's files while they are fetched (one per source)."""
    folder = downloads / hashlib.sha256(source.location.encode()).hexdigest()[:16]
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _file_name(url: str) -> str:
    name = unquote(urlparse(url).path.rstrip("/").rsplit("/", 1)[-1])
    name = re.sub(r"[^\w.+-]", "_", name).lstrip(".")
    return name or "demon"


def _existing_download(folder: Path, expected_sha: str | None) -> Path | None:
    """A download completed by an earlier run whose ingestion failed: reuse it instead of downloading again."""
    done = [p for p in folder.iterdir() if p.is_file() and not p.name.endswith(".part")]
    if len(done) == 1 and (expected_sha is None or sha256_file(done[0]) == expected_sha):
        return done[0]
    return None


def download_http(source: Source, downloads: Path, progress: bool) -> Path:
    """Download an archive URL under `downloads`, resuming a `.part` left by an interrupted run."""
    import requests
    import urllib3

    folder = download_dir(downloads, source)
    if (done := _existing_download(folder, source.sha256)) is not None:
        return done
    url, host = source.location, source.host
    shown = redact(url)  # what messages and logs may say: a URL's credentials never
    final = folder / _file_name(url)
    part = final.with_name(final.name + ".part")
    timeout = net_timeout()
    session = requests.Session()
    last_error: Exception | None = None
    for attempt in range(1, DOWNLOAD_ATTEMPTS + 1):
        have = part.stat().st_size if part.exists() else 0
        headers = {"Accept-Encoding": "identity"} | ({"Range": f"bytes={have}-"} if have else {})
        try:
            response = session.get(url, headers=headers, stream=True, timeout=(timeout, timeout))
        except requests.RequestException as error:
            raise UserError(
                f"cannot reach {host} ({_reason(error)}); check the URL and your network, or "
                "download the archive by hand and use --source /path/to/archive"
            ) from None
        with response:
            if response.status_code == 416 and have:  # nothing left to send: complete, or a stale part
                total = _content_range_total(response.headers.get("Content-Range", ""))
                if total == have:
                    break
                part.unlink()
                continue
            if response.status_code == 206:
                start = _content_range_start(response.headers.get("Content-Range", ""))
                if start != have:  # the server ignored our offset: start over rather than corrupt
                    part.unlink()
                    continue
                append = True
            elif response.status_code == 200:
                append, have = False, 0
            else:
                raise UserError(
                    f"{shown} answered HTTP {response.status_code} {response.reason}; check the URL "
                    "(and credentials), or download the archive by hand and use --source /path/to/archive"
                )
            length = response.headers.get("Content-Length")
            total = have + int(length) if length and length.isdigit() else None
            try:
                chunks = response.raw.stream(CHUNK, decode_content=False)
                _write_stream(chunks, part, append, have, total, f"download {final.name}", progress)
            except (requests.RequestException, urllib3.exceptions.HTTPError, OSError) as error:
                last_error = error
                logger.warning("download of %s interrupted (%s); resuming (try %d)", shown, error, attempt + 1)
                time.sleep(0.2 * attempt)
                continue
            if total is not None and part.stat().st_size != total:
                last_error = OSError(f"got {part.stat().st_size} of {total} bytes")
                continue
            break
    else:
        raise UserError(
            f"download of {shown} failed {DOWNLOAD_ATTEMPTS} times ({last_error}); the partial file {part} is "
            "kept: run the same command again to resume"
        )
    _finish_download(part, final, source.sha256, shown)
    return _named_archive(final, url)


def _content_range_start(value: str) -> int | None:
    match = re.match(r"bytes (\d+)-\d+/(?:\d+|\*)", value)
    return int(match.group(1)) if match else None


def _content_range_total(value: str) -> int | None:
    match = re.match(r"bytes (?:\*|\d+-\d+)/(\d+)", value)
    return int(match.group(1)) if match else None


def _s3_endpoint() -> str | None:
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None


def _s3_filesystem(anon: bool) -> s3fs.S3FileSystem:
    import s3fs

    timeout = net_timeout()
    return s3fs.S3FileSystem(
        anon=anon,
        endpoint_url=_s3_endpoint(),
        skip_instance_cache=True,
        config_kwargs={"connect_timeout": timeout, "read_timeout": timeout, "retries": {"max_attempts": 2}},
    )


def download_s3(source: Source, downloads: Path, progress: bool) -> Path:
    """Download an archive from S3 (or an S3-compatible endpoint), resuming a `.part` by seeking."""
    if importlib.util.find_spec("s3fs") is None:
        raise UserError("s3:// sources need s3fs: pip install s3fs (or download the archive by hand)")
    from botocore.exceptions import BotoCoreError, NoCredentialsError

    folder = download_dir(downloads, source)
    if (done := _existing_download(folder, source.sha256)) is not None:
        return done
    path = source.location[len("s3://") :]
    host = source.host
    final = folder / _file_name(source.location)
    part = final.with_name(final.name + ".part")

    def failure(error: BaseException) -> UserError:
        return UserError(
            f"cannot read {source.location} from {host} ({type(error).__name__}: {error}); check the bucket, "
            "the key, AWS_ENDPOINT_URL and your credentials (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or "
            "AWS_PROFILE), or download the archive by hand and use --source /path/to/archive"
        )

    try:
        fs = _s3_filesystem(anon=False)
        try:
            size = fs.info(path)["size"]
        except NoCredentialsError:  # public buckets still answer unsigned requests
            fs = _s3_filesystem(anon=True)
            size = fs.info(path)["size"]
    except FileNotFoundError:
        raise UserError(f"{source.location} does not exist on {host}; check the bucket and key") from None
    except (OSError, BotoCoreError, ValueError) as error:
        raise failure(error) from None

    last_error: BaseException | None = None
    for attempt in range(1, DOWNLOAD_ATTEMPTS + 1):
        have = part.stat().st_size if part.exists() else 0
        if have > size:
            part.unlink()
            have = 0
        try:
            with fs.open(path, "rb", block_size=8 * CHUNK) as remote:
                remote.seek(have)
                chunks = iter(lambda remote=remote: remote.read(CHUNK), b"")
                _write_stream(chunks, part, have > 0, have, size, f"download {final.name}", progress)
        except (OSError, BotoCoreError) as error:
            last_error = error
            logger.warning("download of %s interrupted (%s); resuming (try %d)", source.location, error, attempt + 1)
            time.sleep(0.2 * attempt)
            continue
        if part.stat().st_size == size:
            break
    else:
        raise UserError(
            f"download of {source.location} failed {DOWNLOAD_ATTEMPTS} times ({last_error}); the partial file "
            f"{part} is kept: run the same command again to resume"
        )
    _finish_download(part, final, source.sha256, source.location)
    return _named_archive(final, source.location)


def _hf_endpoint() -> str:
    return os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")


class _QuietTqdm(tqdm):
    """A tqdm that never draws: passed to the Hub client when progress is off."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs["disable"] = True
        super().__init__(*args, **kwargs)


def _is_network_error(error: BaseException) -> bool:
    """Whether `error` is a failure to talk to a host (the Hub client's HTTP library varies by version)."""
    names = {cls.__name__ for cls in type(error).__mro__}
    return isinstance(error, OSError) or bool(names & {"TransportError", "ConnectionError", "RequestException"})


def download_hf(source: Source, target: Path, keep: Callable[[str], bool], progress: bool) -> None:
    """Download the files of a Hub dataset repo for which `keep(path)` holds into `target`."""
    try:
        from huggingface_hub import HfApi, constants, snapshot_download
        from huggingface_hub.errors import (
            HfHubHTTPError,
            LocalEntryNotFoundError,
            RepositoryNotFoundError,
            RevisionNotFoundError,
        )
    except ImportError:
        raise UserError("hf:// sources need huggingface_hub: pip install huggingface_hub") from None
    if constants.HF_HUB_OFFLINE:
        raise UserError(
            f"HF_HUB_OFFLINE is set, so {source.key} cannot be downloaded; unset it (or set HF_HUB_OFFLINE=0) "
            "for this command, or download the repo by hand and use --source /path/to/folder"
        )
    host = source.host
    way_forward = "or download the dataset by hand and use --source /path/to/folder"
    try:
        api = HfApi(endpoint=_hf_endpoint())
        # Pin the commit once, so the listing and the download see the same snapshot.
        commit = api.repo_info(source.location, repo_type="dataset", revision=source.revision).sha
        files = api.list_repo_files(source.location, repo_type="dataset", revision=commit)
        selected = [path for path in files if keep(path)]
        logger.info("%s at commit %s: %d of %d files wanted", source.key, commit, len(selected), len(files))
        if selected:
            snapshot_download(
                source.location,
                repo_type="dataset",
                revision=commit,
                local_dir=target,
                endpoint=_hf_endpoint(),
                etag_timeout=net_timeout(),
                allow_patterns=[glob.escape(path) for path in selected],
                max_workers=4,
                tqdm_class=None if progress else _QuietTqdm,
            )
    except RepositoryNotFoundError:
        raise UserError(
            f"dataset repo {source.location} not found on {host} (or it is private: log in with `hf auth login`)"
        ) from None
    except RevisionNotFoundError:
        raise UserError(f"revision {source.revision!r} not found in {source.location} on {host}") from None
    except LocalEntryNotFoundError as error:  # snapshot_download's word for "the Hub stopped answering"
        raise UserError(f"cannot reach {host} ({error.__cause__ or error}); {way_forward}") from None
    except HfHubHTTPError as error:
        raise UserError(f"{host} refused {source.key} ({error}); {way_forward}") from None
    except Exception as error:
        if not _is_network_error(error):
            raise
        raise UserError(
            f"cannot reach {host} ({type(error).__name__}: {error}); check HF_ENDPOINT, {way_forward}"
        ) from None


def download_gdrive(source: Source, target: Path, keep: Callable[[str], bool], progress: bool) -> None:
    """Download the files of a Google Drive folder for which `keep(path)` holds into `target`, with gdown.

    Listing first lets a core fetch skip the (much larger) full split and unselected tasks; files finished
    by an earlier run are skipped and partial ones resumed (gdown's `resume`).
    """
    import requests

    folder_url = f"https://{GDRIVE_HOST}/drive/folders/{source.location}"
    by_hand = (
        f"download the folder {folder_url} by hand (browser, or `gdown --folder {folder_url}`) and use "
        "--source /path/to/folder"
    )
    try:
        import gdown
        from gdown.exceptions import DownloadError
    except ImportError:
        raise UserError(f"gdrive:// sources need gdown (pip install gdown); or {by_hand}") from None
    timeout = (net_timeout(), net_timeout())
    try:
        listing = gdown.download_folder(
            id=source.location, output=str(target), quiet=True, skip_download=True, timeout=timeout
        )
    except requests.RequestException as error:
        raise UserError(f"cannot reach {GDRIVE_HOST} ({_reason(error)}); {by_hand}") from None
    except DownloadError as error:
        raise UserError(f"cannot list {folder_url} ({error}); {by_hand}") from None
    selected = [item for item in listing if keep(item.path)]
    for item in tqdm(selected, desc="Drive files", unit="file", disable=not progress):
        Path(item.local_path).parent.mkdir(parents=True, exist_ok=True)
        try:
            gdown.download(
                id=item.id,
                output=item.local_path,
                quiet=not progress,
                resume=True,
                timeout=timeout,
                retries=DOWNLOAD_ATTEMPTS - 1,
            )
        except (DownloadError, requests.RequestException, OSError) as error:
            raise UserError(
                f"download of {item.path} from {folder_url} failed ({error}); run the same command again to "
                f"resume, or {by_hand}"
            ) from None
