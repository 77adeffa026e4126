"""DEMON acquisition from every source type, each against a real local stand-in on 127.0.0.1.

The fake DEMON tree mirrors the Google Drive folder: category folders, task folders under aliases (`MMQA`,
`nuscenes`), per-task zip archives packed two ways, a split archive (`core.zip`) inside a task folder, a
folder that is no DEMON task, and a full split that a core fetch must leave behind.
"""

from __future__ import annotations

import fcntl
import hashlib
import io
import json
import os
import re
import socket
import subprocess
import sys
import tarfile
import threading
import time
import zipfile
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest
from PIL import Image

from components.demon.acquire import STATE_DIR, fetch, load_manifest
from components.demon.archives import UnsafeArchiveError, expand
from components.demon.sources import download_dir, parse_source
from components.errors import UserError

REPO_ROOT = Path(__file__).resolve().parents[1]
CORE_TASKS = {"MultiModalQA", "TQA", "DiDeMoSV", "nuScenes"}  # what the fake Drive tree holds for core


# ----------------------------------------------------------------------------------------- fake DEMON data


def _png(color: tuple[int, int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (4, 4), color).save(buffer, format="PNG")
    return buffer.getvalue()


def write_task(folder: Path, dataset: str, split: str = "core") -> None:
    """`folder/<split>/<split>.json` with 2 samples over 2 tiny PNGs (3 files in all)."""
    images = folder / split / "images"
    images.mkdir(parents=True)
    (images / "0.png").write_bytes(_png((255, 0, 0)))
    (images / "1.png").write_bytes(_png((0, 0, 255)))
    samples = [
        {
            "sample_id": i,
            "task_instruction_id": 0,
            "task_instance": {"context": "{image#1} then {image#2}: which is red?", "images_path": paths},
            "response": "the first",
        }
        for i, paths in enumerate([["0.png", "1.png"], ["1.png", "0.png"]])
    ]
    metadata = {
        "dataset": dataset,
        "split": split,
        "num_sample": 2,
        "task_instruction": ["Look at the images."],
        "question_type": "open-ended",
    }
    (folder / split / f"{split}.json").write_text(json.dumps({"metadata": metadata, "data": samples}))


def zip_folder(folder: Path, archive: Path, *, include_top: bool) -> None:
    """Zip `folder` either with its own name as the top entry or with its content at the top."""
    with zipfile.ZipFile(archive, "w") as zf:
        for path in sorted(folder.rglob("*")):
            rel = path.relative_to(folder.parent if include_top else folder)
            zf.write(path, rel.as_posix())


def make_drive_tree(root: Path) -> Path:
    """A local folder laid out like the DEMON Google Drive folder; returns its top (`root/DEMON`)."""
    top = root / "DEMON"
    write_task(top / "Knowledge Grounded QA" / "MMQA", "MMQA")  # alias folder name
    write_task(top / "Knowledge Grounded QA" / "MMQA", "MMQA", split="full")
    staging = root / "packing"
    write_task(staging / "TQA", "TQA")
    zip_folder(staging / "TQA", top / "Knowledge Grounded QA" / "TQA.zip", include_top=True)
    write_task(staging / "DiDemoSV", "DiDemoSV")  # zipped without its top folder, under an alias
    (top / "Visual Storytelling").mkdir()
    zip_folder(staging / "DiDemoSV", top / "Visual Storytelling" / "DiDemoSV.zip", include_top=False)
    write_task(staging / "nuscenes_split", "nuScenes")  # `nuscenes/core.zip` holding core.json + images
    (top / "Multi-Image Reasoning" / "nuscenes").mkdir(parents=True)
    zip_folder(
        staging / "nuscenes_split" / "core", top / "Multi-Image Reasoning" / "nuscenes" / "core.zip", include_top=False
    )
    write_task(top / "Extras" / "NotATask", "SomethingElse")  # DEMON-like, but no DEMON task
    (top / "Extras" / "slides").mkdir()
    (top / "Extras" / "slides" / "overview.txt").write_text("not data")
    return top


def tar_gz_folder(folder: Path, archive: Path) -> None:
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname=folder.name)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def assert_installed(dest: Path, folders: set[str], split: str = "core") -> None:
    installed = {p.name for p in dest.iterdir() if p.is_dir() and not p.name.startswith(".")}
    assert installed == folders
    for folder in folders:
        doc = json.loads((dest / folder / split / f"{split}.json").read_text())
        assert len(doc["data"]) == 2
        assert sorted(p.name for p in (dest / folder / split / "images").iterdir()) == ["0.png", "1.png"]


@pytest.fixture(scope="module")
def drive_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_drive_tree(tmp_path_factory.mktemp("drive"))


@pytest.fixture(scope="module")
def demon_zip(drive_tree: Path, tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """The whole Drive-like tree (with its nested archives) as one zip."""
    archive = tmp_path_factory.mktemp("archive") / "DEMON.zip"
    zip_folder(drive_tree, archive, include_top=True)
    return archive.read_bytes()


# ----------------------------------------------------------------------------------------- local sources


def test_local_drive_folder_layout(drive_tree: Path, tmp_path: Path) -> None:
    before = sorted(str(p) for p in drive_tree.rglob("*"))
    dest = tmp_path / "raw"
    manifest = fetch(str(drive_tree), dest, progress=False)

    assert_installed(dest, CORE_TASKS)
    assert not (dest / "MultiModalQA" / "full").exists(), "a core fetch must leave the full split behind"
    assert sorted(str(p) for p in drive_tree.rglob("*")) == before, "the source folder must stay untouched"
    entry = manifest["tasks"]["MultiModalQA"]["splits"]["core"]
    assert entry["files"] == 3 and entry["samples"] == 2 and entry["missing_images"] == 0
    assert entry["json_sha256"] == sha256(dest / "MultiModalQA" / "core" / "core.json")
    assert entry["origin"] == "Knowledge Grounded QA/MMQA"
    assert manifest["tasks"]["TQA"]["splits"]["core"]["origin"] == "Knowledge Grounded QA/TQA.zip!/TQA"
    ignored = {item["path"] for item in manifest["last_fetch"]["ignored"]}
    assert ignored == {"Extras", "Extras/NotATask"}  # the topmost barren folder, and the unknown task
    assert "ALFRED" in manifest["last_fetch"]["missing"]
    assert json.loads((dest / "manifest.json").read_text()) == manifest
    assert [p.name for p in (dest / STATE_DIR).iterdir()] == ["lock"], "staging must be cleaned up"

    again = fetch(str(drive_tree), dest, progress=False)
    assert again["last_fetch"]["downloaded"] is False
    assert "nothing downloaded" in again["last_fetch"]["message"]

    # A changed file on disk no longer matches the manifest: the next fetch installs the task again.
    (dest / "TQA" / "core" / "images" / "0.png").unlink()
    third = fetch(str(drive_tree), dest, progress=False)
    assert third["last_fetch"]["downloaded"] is True
    assert_installed(dest, CORE_TASKS)


def test_the_same_fetch_writes_the_same_manifest(
    drive_tree: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The acquire stage's output hashes must not depend on when or in which workspace it ran."""
    written = []
    for workspace in ("one", "two"):
        (tmp_path / workspace).mkdir()
        monkeypatch.chdir(tmp_path / workspace)
        fetch(str(drive_tree), Path("data/raw"), progress=False)
        written.append((tmp_path / workspace / "data/raw" / "manifest.json").read_bytes())
    assert written[0] == written[1] and b"into data/raw" in written[0]


def test_task_selection_aliases_and_unknown_names(drive_tree: Path, tmp_path: Path) -> None:
    manifest = fetch(str(drive_tree), tmp_path / "a", tasks=["mmqa", "Flintstones", "DIDEMOSV"], progress=False)
    assert_installed(tmp_path / "a", {"MultiModalQA", "DiDeMoSV"})
    assert manifest["last_fetch"]["missing"] == {"FlintstonesSV": "not in the source"}
    assert {"TQA", "nuScenes"} <= set(manifest["last_fetch"]["not_selected"])

    with pytest.raises(UserError, match=r"unknown DEMON task\(s\): NoSuchTask; known core tasks: ALFRED"):
        fetch(str(drive_tree), tmp_path / "b", tasks=["NoSuchTask"], progress=False)
    with pytest.raises(UserError, match="found no core data for the requested task"):
        fetch(str(drive_tree), tmp_path / "c", tasks=["VIST"], progress=False)
    assert not (tmp_path / "c" / "VIST").exists()


def test_full_split_and_local_archive(drive_tree: Path, tmp_path: Path) -> None:
    manifest = fetch(str(drive_tree), tmp_path / "full", split="full", progress=False)
    assert_installed(tmp_path / "full", {"MultiModalQA"}, split="full")
    missing = manifest["last_fetch"]["missing"]
    assert missing["TQA"] == "the source has only the other split (Knowledge Grounded QA/TQA.zip!/TQA)"
    assert missing["ALFRED"] == "not in the source"

    archive = tmp_path / "DEMON.tar.gz"
    tar_gz_folder(drive_tree, archive)
    dest = tmp_path / "from_archive"
    manifest = fetch(f"{archive}#sha256={sha256(archive)}", dest, progress=False)
    assert_installed(dest, CORE_TASKS)
    assert manifest["last_fetch"]["downloads"] == [
        {"name": "DEMON.tar.gz", "sha256": sha256(archive), "bytes": archive.stat().st_size}
    ]
    assert manifest["tasks"]["TQA"]["splits"]["core"]["origin"] == (
        "DEMON.tar.gz!/DEMON/Knowledge Grounded QA/TQA.zip!/TQA"
    )
    assert fetch(str(archive) + f"#sha256={sha256(archive)}", dest, progress=False)["last_fetch"]["downloaded"] is False
    with pytest.raises(UserError, match=f"sha256 mismatch for {archive}"):
        fetch(f"{archive}#sha256={'f' * 64}", tmp_path / "bad", progress=False)


def test_a_damaged_task_is_installed_for_normalize_to_judge(tmp_path: Path) -> None:
    write_task(tmp_path / "src" / "TQA", "TQA")
    write_task(tmp_path / "src" / "VIST", "VIST")
    (tmp_path / "src" / "VIST" / "core" / "core.json").write_text('{"data": [')
    manifest = fetch(str(tmp_path / "src"), tmp_path / "raw", tasks=["TQA", "VIST"], progress=False)
    assert (tmp_path / "raw" / "VIST" / "core" / "core.json").read_text() == '{"data": ['
    assert manifest["last_fetch"]["installed"] == ["TQA", "VIST"] and manifest["last_fetch"]["missing"] == {}
    vist = manifest["tasks"]["VIST"]["splits"]["core"]
    assert vist["error"].startswith("VIST/core/core.json is not valid JSON") and vist["samples"] == 0
    assert manifest["tasks"]["TQA"]["splits"]["core"]["error"] is None
    assert "1 with a task file normalize will reject: VIST" in manifest["last_fetch"]["message"]


def test_one_fetch_at_a_time_per_destination(drive_tree: Path, tmp_path: Path) -> None:
    dest = tmp_path / "raw"
    (dest / STATE_DIR).mkdir(parents=True)
    with open(dest / STATE_DIR / "lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # what a concurrent fetch holds
        with pytest.raises(UserError, match=f"another fetch is writing into {dest}"):
            fetch(str(drive_tree), dest, progress=False)
    fetch(str(drive_tree), dest, progress=False)  # once released, the same fetch runs
    assert_installed(dest, CORE_TASKS)


# ----------------------------------------------------------------------------------------- https


class FileServer:
    """A threaded HTTP server on 127.0.0.1 that serves `files` with Range support and logs every request.

    `limit` caps the bytes sent per response while still announcing the full length, like a connection that
    drops mid-transfer; `limit_times` says for how many responses. `headers_for(path, found)` adds headers.
    """

    def __init__(
        self, files: dict[str, bytes], headers_for: Callable[[str, bool], dict[str, str]] | None = None
    ) -> None:
        self.files = files
        self.headers_for = headers_for or (lambda _path, _found: {})
        self.log: list[tuple[str, str, str | None]] = []  # (method, path, Range header)
        self.limit: int | None = None
        self.limit_times = 0
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:  # keep pytest output clean
                pass

            def do_HEAD(self) -> None:
                self._serve(body=False)

            def do_GET(self) -> None:
                self._serve(body=True)

            def _head(self, status: int, headers: dict[str, str]) -> None:
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.end_headers()

            def _serve(self, body: bool) -> None:
                path = unquote(urlparse(self.path).path)
                server.log.append((self.command, path, self.headers.get("Range")))
                data = server.files.get(path)
                extra = server.headers_for(path, data is not None)
                if data is None:
                    self._head(404, {"Content-Length": "0"} | extra)
                    return
                start, status = 0, 200
                if (value := self.headers.get("Range")) and value.startswith("bytes="):
                    start = int(value[len("bytes=") :].split("-")[0])
                    if start >= len(data):
                        self._head(416, {"Content-Range": f"bytes */{len(data)}", "Content-Length": "0"})
                        return
                    status = 206
                headers = {"Content-Length": str(len(data) - start), "Accept-Ranges": "bytes"} | extra
                if status == 206:
                    headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
                self._head(status, headers)
                if not body:
                    return
                payload = data[start:]
                if server.limit is not None and server.limit_times > 0 and self.command == "GET":
                    server.limit_times -= 1
                    payload = payload[: server.limit]
                    self.close_connection = True
                self.wfile.write(payload)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def gets(self) -> list[tuple[str, str, str | None]]:
        return [entry for entry in self.log if entry[0] == "GET"]

    def __enter__(self) -> FileServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join()


def test_https_resume_checksum_and_idempotence(demon_zip: bytes, tmp_path: Path) -> None:
    digest = hashlib.sha256(demon_zip).hexdigest()
    dest = tmp_path / "raw"
    with FileServer({"/demon/DEMON.zip": demon_zip}) as server:
        url = f"{server.url}/demon/DEMON.zip"

        # Every response breaks off after 1/8 of the archive: 4 tries leave a .part of half the archive.
        server.limit, server.limit_times = len(demon_zip) // 8, 4
        with pytest.raises(UserError, match=r"failed 4 times .* partial file .*DEMON\.zip\.part is kept"):
            fetch(f"{url}#sha256={digest}", dest, progress=False)
        (part,) = (dest / STATE_DIR / "downloads").rglob("DEMON.zip.part")
        assert part.stat().st_size == 4 * (len(demon_zip) // 8)
        assert [rng for _m, _p, rng in server.gets()] == [None] + [
            f"bytes={k * (len(demon_zip) // 8)}-" for k in (1, 2, 3)
        ]
        assert not any((dest / folder).exists() for folder in CORE_TASKS), "no half-written task folder"

        # The next run resumes from the .part, and one more interruption on the way is retried in-process.
        server.log.clear()
        server.limit_times = 1
        manifest = fetch(f"{url}#sha256={digest}", dest, progress=False)
        assert [rng for _m, _p, rng in server.gets()] == [
            f"bytes={4 * (len(demon_zip) // 8)}-",
            f"bytes={5 * (len(demon_zip) // 8)}-",
        ]
        assert_installed(dest, CORE_TASKS)
        assert manifest["last_fetch"]["downloads"] == [{"name": "DEMON.zip", "sha256": digest, "bytes": len(demon_zip)}]
        assert not list((dest / STATE_DIR / "downloads").rglob("DEMON.zip*")), "the archive is dropped once installed"

        server.log.clear()
        again = fetch(f"{url}#sha256={digest}", dest, progress=False)
        assert server.log == [], "a second fetch of the same source must not touch the server"
        assert again["last_fetch"]["downloaded"] is False

        bad = tmp_path / "bad"
        with pytest.raises(UserError, match=f"sha256 mismatch for {url}: expected {'0' * 64}, got {digest}"):
            fetch(f"{url}#sha256={'0' * 64}", bad, progress=False)
        assert not list((bad / STATE_DIR / "downloads").rglob("DEMON.zip*")), "a corrupt download is deleted"
        assert not any((bad / folder).exists() for folder in CORE_TASKS)

        with pytest.raises(UserError, match=r"answered HTTP 404"):
            fetch(f"{server.url}/nope.zip", tmp_path / "missing", progress=False)

    port = server.httpd.server_address[1]  # now closed
    with pytest.raises(UserError, match=rf"cannot reach 127\.0\.0\.1:{port} .*--source /path/to/archive"):
        fetch(f"http://127.0.0.1:{port}/DEMON.zip", tmp_path / "down", progress=False)


def test_https_part_already_complete(demon_zip: bytes, tmp_path: Path) -> None:
    """A run killed after the last byte but before the rename: the server answers 416, nothing is re-sent."""
    dest = tmp_path / "raw"
    with FileServer({"/DEMON.zip": demon_zip}) as server:
        source = parse_source(f"{server.url}/DEMON.zip")
        (download_dir(dest / STATE_DIR / "downloads", source) / "DEMON.zip.part").write_bytes(demon_zip)
        fetch(source.key, dest, progress=False)
        assert server.gets() == [("GET", "/DEMON.zip", f"bytes={len(demon_zip)}-")]
    assert_installed(dest, CORE_TASKS)


# ----------------------------------------------------------------------------------------- s3


def test_s3_archive_on_moto_server(drive_tree: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import boto3
    from moto.server import ThreadedMotoServer

    archive = tmp_path / "DEMON.tar.gz"
    tar_gz_folder(drive_tree, archive)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        for name, value in {
            "AWS_ENDPOINT_URL": endpoint,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
        }.items():
            monkeypatch.setenv(name, value)
        monkeypatch.delenv("AWS_PROFILE", raising=False)
        s3 = boto3.client("s3", endpoint_url=endpoint)
        s3.create_bucket(Bucket="demon-mirror")
        s3.upload_file(str(archive), "demon-mirror", "releases/DEMON.tar.gz")

        dest = tmp_path / "raw"
        source = f"s3://demon-mirror/releases/DEMON.tar.gz#sha256={sha256(archive)}"
        # A .part of the right length but wrong bytes: resuming appends to it, so the checksum must catch it.
        part = download_dir(dest / STATE_DIR / "downloads", parse_source(source)) / "DEMON.tar.gz.part"
        part.write_bytes(bytes(archive.stat().st_size // 2))
        with pytest.raises(UserError, match="sha256 mismatch for s3://demon-mirror/releases/DEMON.tar.gz"):
            fetch(source, dest, tasks=["TQA", "nuscenes"], progress=False)
        assert not part.exists()

        manifest = fetch(source, dest, tasks=["TQA", "nuscenes"], progress=False)
        assert_installed(dest, {"TQA", "nuScenes"})
        assert manifest["last_fetch"]["downloads"][0]["sha256"] == sha256(archive)
        assert fetch(source, dest, tasks=["nuScenes"], progress=False)["last_fetch"]["downloaded"] is False

        with pytest.raises(UserError, match=rf"s3://demon-mirror/nope.zip does not exist on {host}:{port}"):
            fetch("s3://demon-mirror/nope.zip", tmp_path / "missing", progress=False)
    finally:
        server.stop()


# ----------------------------------------------------------------------------------------- hf


class HubStandIn(FileServer):
    """The Hub endpoints `snapshot_download` calls for a dataset repo: revision info, tree, resolve."""

    COMMIT = "0123456789abcdef0123456789abcdef01234567"

    def __init__(self, repo: str, files: dict[str, bytes]) -> None:
        tree = [
            {"type": "file", "path": path, "size": len(data), "oid": hashlib.sha1(data).hexdigest()}
            for path, data in files.items()
        ]
        info = json.dumps({"id": repo, "sha": self.COMMIT}).encode()
        routes = {
            f"/api/datasets/{repo}": info,
            f"/api/datasets/{repo}/revision/main": info,
            f"/api/datasets/{repo}/tree/{self.COMMIT}": json.dumps(tree).encode(),
        }
        for path, data in files.items():
            routes[f"/datasets/{repo}/resolve/{self.COMMIT}/{path}"] = data
        super().__init__(routes, headers_for=self._hub_headers)

    def _hub_headers(self, path: str, found: bool) -> dict[str, str]:
        if path.startswith("/api/"):
            # An unknown repo is answered the way the Hub does, so the client raises RepositoryNotFoundError.
            return {"Content-Type": "application/json"} if found else {"X-Error-Code": "RepoNotFound"}
        if "/resolve/" in path and found:
            return {"X-Repo-Commit": self.COMMIT, "ETag": f'"{hashlib.sha1(path.encode()).hexdigest()}"'}
        return {}


def test_hf_dataset_mirror_via_hub_stand_in(drive_tree: Path, tmp_path: Path) -> None:
    files = {p.relative_to(drive_tree).as_posix(): p.read_bytes() for p in sorted(drive_tree.rglob("*")) if p.is_file()}
    with HubStandIn("demon-mirror/DEMON", files) as hub:
        env = os.environ | {
            "HF_ENDPOINT": hub.url,
            "HF_HUB_OFFLINE": "0",
            "HF_HOME": str(tmp_path / "hf_home"),
            "HF_HUB_DISABLE_TELEMETRY": "1",
        }
        dest = tmp_path / "raw"
        command = [sys.executable, "-m", "components.cli", "data", "fetch", "--source", "hf://demon-mirror/DEMON"]
        result = subprocess.run(
            [*command, "--dest", str(dest)], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=60
        )
        assert result.returncode == 0, result.stderr
        assert_installed(dest, CORE_TASKS)
        fetched = {path.split(f"/{hub.COMMIT}/", 1)[1] for _m, path, _r in hub.gets() if "/resolve/" in path}
        assert fetched == {p for p in files if "/full/" not in p}, "the full split must not be downloaded"
        assert load_manifest(dest)["last_fetch"]["source"] == "hf://demon-mirror/DEMON"

        hub.log.clear()
        again = subprocess.run(
            [*command, "--dest", str(dest)], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=60
        )
        assert again.returncode == 0, again.stderr
        assert hub.log == [] and "nothing downloaded" in again.stderr

        # A task selection downloads only what can hold the selected task (unknown names are kept).
        hub.log.clear()
        selected = subprocess.run(
            [*command, "--dest", str(tmp_path / "tqa"), "--tasks", "TQA"],
            cwd=REPO_ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert selected.returncode == 0, selected.stderr
        assert_installed(tmp_path / "tqa", {"TQA"})
        fetched = {path.split(f"/{hub.COMMIT}/", 1)[1] for _m, path, _r in hub.gets() if "/resolve/" in path}
        assert fetched == {"Knowledge Grounded QA/TQA.zip"} | {p for p in files if p.startswith("Extras/")}

        missing = subprocess.run(
            [*command[:-1], "hf://demon-mirror/nope", "--dest", str(tmp_path / "x")],
            cwd=REPO_ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert missing.returncode == 2 and "dataset repo demon-mirror/nope not found on 127.0.0.1" in missing.stderr
        assert "Traceback" not in missing.stderr


def test_hf_offline_mode_is_a_user_error(tmp_path: Path) -> None:
    command = [sys.executable, "-m", "components.cli", "data", "fetch", "--source", "hf://a/b"]
    result = subprocess.run(
        [*command, "--dest", str(tmp_path / "raw")],
        cwd=REPO_ROOT,
        env=os.environ | {"HF_HUB_OFFLINE": "1"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert result.stderr.startswith("demonlab: error: HF_HUB_OFFLINE is set, so hf://a/b cannot be downloaded")


# ----------------------------------------------------------------------------------------- gdrive


@pytest.fixture
def black_hole() -> Iterator[int]:
    """A TCP port that accepts connections and never answers (a dead proxy or firewall)."""
    listener = socket.create_server(("127.0.0.1", 0))
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.1)
        while not stop.is_set():
            try:
                accepted.append(listener.accept()[0])
            except TimeoutError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield listener.getsockname()[1]
    stop.set()
    thread.join()
    for conn in accepted:
        conn.close()
    listener.close()


def test_unreachable_gdrive_is_a_quick_user_error(
    black_hole: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.setenv(name, f"http://127.0.0.1:{black_hole}")
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("DEMONLAB_NET_TIMEOUT", "1")
    started = time.monotonic()
    with pytest.raises(UserError, match=r"cannot reach drive\.google\.com .*--source /path/to/folder"):
        fetch("gdrive://", tmp_path / "raw", progress=False)
    assert time.monotonic() - started < 10
    assert not [p for p in (tmp_path / "raw").iterdir() if not p.name.startswith(".")]


# ----------------------------------------------------------------------------------------- traversal


def _zip_entries(path: Path, entries: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in entries.items():
            zf.writestr(zipfile.ZipInfo(name), data)
    return path


def _zip_symlink(path: Path, good: tuple[str, bytes], name: str, target: str) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(*good)
        info = zipfile.ZipInfo(name)
        info.create_system, info.external_attr = 3, (0o120777 << 16)  # a Unix symlink entry
        zf.writestr(info, target)
    return path


def _tar_with(path: Path, *members: tuple[str, bytes | None, str | None, bytes]) -> Path:
    """members: (name, data, linkname, type); type is tarfile.REGTYPE/SYMTYPE/LNKTYPE."""
    with tarfile.open(path, "w") as tar:
        for name, data, linkname, kind in members:
            info = tarfile.TarInfo(name)
            info.type = kind
            if linkname is not None:
                info.linkname = linkname
            info.size = len(data or b"")
            tar.addfile(info, io.BytesIO(data or b""))
    return path


@pytest.fixture
def evil_archives(tmp_path: Path) -> dict[str, tuple[Path, str, str]]:
    """Each archive holds a harmless task file first, then one escaping entry.

    Value: (archive, the bad entry, the reason the error must give).
    """
    good = ("TQA/core/core.json", b'{"data": []}')
    folder = tmp_path / "evil"
    folder.mkdir()
    reg, sym, lnk = tarfile.REGTYPE, tarfile.SYMTYPE, tarfile.LNKTYPE
    climbs = "has a '..' component"
    return {
        "zip-dotdot": (_zip_entries(folder / "dotdot.zip", dict([good, ("../evil.txt", b"x")])), "../evil.txt", climbs),
        "zip-absolute": (
            _zip_entries(folder / "absolute.zip", dict([good, ("/tmp/evil.txt", b"x")])),
            "/tmp/evil.txt",
            "has an absolute path",
        ),
        "zip-backslash": (
            _zip_entries(folder / "backslash.zip", dict([good, ("..\\evil.txt", b"x")])),
            "..\\evil.txt",
            climbs,
        ),
        "zip-symlink-out": (
            _zip_symlink(folder / "zlink.zip", good, "TQA/out", "../../outside.txt"),
            "TQA/out",
            "is a symlink pointing outside",
        ),
        "tar-symlink-etc": (
            _tar_with(folder / "symlink.tar", (good[0], good[1], None, reg), ("TQA/etc", None, "/etc", sym)),
            "TQA/etc",
            "is a symlink to the absolute path '/etc'",
        ),
        "tar-symlink-up": (
            _tar_with(folder / "up.tar", (good[0], good[1], None, reg), ("TQA/up", None, "../../..", sym)),
            "TQA/up",
            "is a symlink pointing outside",
        ),
        "tar-hardlink-out": (
            _tar_with(folder / "hard.tar", (good[0], good[1], None, reg), ("TQA/h", None, "../outside.txt", lnk)),
            "TQA/h",
            "is a hardlink pointing outside",
        ),
        "tar-through-link": (
            _tar_with(
                folder / "through.tar",
                (good[0], good[1], None, reg),
                ("TQA/sub", None, "core", sym),
                ("TQA/sub/x.txt", b"x", None, reg),
            ),
            "TQA/sub/x.txt",
            "would be written through the link 'TQA/sub'",
        ),
    }


@pytest.mark.parametrize(
    "case",
    [
        "zip-dotdot",
        "zip-absolute",
        "zip-backslash",
        "zip-symlink-out",
        "tar-symlink-etc",
        "tar-symlink-up",
        "tar-hardlink-out",
        "tar-through-link",
    ],
)
def test_escaping_archives_are_refused_whole(
    case: str, evil_archives: dict[str, tuple[Path, str, str]], tmp_path: Path
) -> None:
    archive, entry, reason = evil_archives[case]
    box = tmp_path / "box" / "out"
    box.mkdir(parents=True)
    message = f"refusing to extract {archive}: entry {entry!r} {reason}"
    with pytest.raises(UnsafeArchiveError, match=re.escape(message)) as raised:
        expand(archive, box, progress=False)
    assert "nothing was extracted from this archive" in str(raised.value)
    assert list(box.iterdir()) == [], "not even the harmless entry may be extracted"
    assert sorted(p.name for p in (tmp_path / "box").iterdir()) == ["out"]

    dest = tmp_path / "raw"
    with pytest.raises(UserError, match=re.escape(f"entry {entry!r}")):
        fetch(str(archive), dest, progress=False)
    assert sorted(p.name for p in dest.iterdir()) == [STATE_DIR]
    assert [p.name for p in (dest / STATE_DIR).iterdir()] == ["lock"]
    assert not (tmp_path / "evil.txt").exists() and not (tmp_path / "outside.txt").exists()


def test_links_inside_the_archive_are_fine(tmp_path: Path) -> None:
    write_task(tmp_path / "src" / "TQA", "TQA")
    archive = tmp_path / "TQA.tar"
    with tarfile.open(archive, "w") as tar:
        tar.add(tmp_path / "src" / "TQA", arcname="TQA")
        info = tarfile.TarInfo("TQA/core/images/alias.png")
        info.type, info.linkname = tarfile.SYMTYPE, "0.png"
        tar.addfile(info)
    out, top = expand(archive, tmp_path / "out", progress=False)
    assert (out, top) == (tmp_path / "out" / "TQA", tmp_path / "out")  # hoisted: TQA/ is the archive's own entry
    assert (out / "core" / "images" / "alias.png").read_bytes() == (out / "core" / "images" / "0.png").read_bytes()


def test_zip_symlinks_become_links_and_chains_that_escape_are_refused(tmp_path: Path) -> None:
    good = ("TQA/core/core.json", b'{"data": []}')
    archive = _zip_symlink(tmp_path / "TQA.zip", good, "TQA/core/alias.json", "core.json")
    out, _top = expand(archive, tmp_path / "out", progress=False)
    assert os.readlink(out / "core" / "alias.json") == "core.json", "a zip symlink entry is a link, as in tar"

    # Each target is lexically inside, but through `b -> .` the chain `b/b/../..` climbs out of the folder.
    chain = tmp_path / "chain.zip"
    with zipfile.ZipFile(chain, "w") as zf:
        zf.writestr(*good)
        for name, target in (("TQA/b", "."), ("TQA/a", "b/b/../..")):
            info = zipfile.ZipInfo(name)
            info.create_system, info.external_attr = 3, (0o120777 << 16)
            zf.writestr(info, target)
    box = tmp_path / "box"
    with pytest.raises(UnsafeArchiveError, match=re.escape("entry 'TQA/a' is a symlink that resolves outside")):
        expand(chain, box, progress=False)
    assert list(box.iterdir()) == []


def test_links_keep_their_meaning_or_are_refused_at_install(tmp_path: Path) -> None:
    """A local source: links inside the split stay (absolute ones made relative), others are refused and listed."""
    src = tmp_path / "src"
    write_task(src / "TQA", "TQA")
    images = src / "TQA" / "core" / "images"
    (src / "secret.png").write_bytes(_png((0, 0, 0)))
    os.symlink("0.png", images / "alias.png")
    os.symlink(images / "1.png", images / "absolute.png")
    os.symlink("../../../secret.png", images / "out.png")
    os.symlink("gone.png", images / "dangling.png")
    os.symlink(src, images / "tree")  # a folder link: refused whole, never walked

    manifest = fetch(str(src), tmp_path / "raw", tasks=["TQA"], progress=False)
    installed = tmp_path / "raw" / "TQA" / "core" / "images"
    assert os.readlink(installed / "alias.png") == "0.png"
    assert os.readlink(installed / "absolute.png") == "1.png"
    assert os.readlink(installed / "dangling.png") == "gone.png", "a dangling link means the same: normalize judges it"
    assert not os.path.lexists(installed / "out.png") and not os.path.lexists(installed / "tree")
    refused = {e["path"]: e for e in manifest["tasks"]["TQA"]["splits"]["core"]["not_installed"]}
    assert sorted(refused) == ["images/out.png", "images/tree"]
    assert refused["images/out.png"]["entry"] == "TQA/core/images/out.png"
    assert refused["images/out.png"]["link"] == "../../../secret.png"
    assert "resolves outside its task split" in refused["images/out.png"]["reason"]
    assert os.path.islink(images / "out.png"), "the source is left as it was"


def test_names_that_are_not_utf8_reach_the_manifest_readably(tmp_path: Path) -> None:
    write_task(tmp_path / "src" / "TQA", "TQA")
    (tmp_path / "src" / os.fsdecode(b"notes-\xff") / "sub").mkdir(parents=True)
    manifest = fetch(str(tmp_path / "src"), tmp_path / "raw", tasks=["TQA"], progress=False)
    assert [item["path"] for item in manifest["last_fetch"]["ignored"]] == ["notes-\\xff"]
