"""Fetch, then normalize: the pipeline's own path gives the same accounting as normalizing the source directly.

The damaged source has what real downloads have: a task file that starts with a UTF-8 BOM (ALFRED), one whose
JSON is truly broken (VIST), and a link that points inside the archive but outside its task (TQA's `link.png`,
to a file at the archive's top). It is packed as `.tar.gz` and `.zip` and served over HTTP on 127.0.0.1 by a
separate `http.server` process that `components.runtime.servers.server` stops by its process group.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tarfile
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image
from test_normalize import unprivileged

from components.demon.acquire import fetch
from components.demon.normalize import normalize
from components.demon.registry import get_task
from components.runtime.servers import free_port, server

DEMONLAB = [sys.executable, "-m", "components.cli"]


def write_task(split_dir: Path, folder: str, images: dict[str, str | None], samples: list[list[str]]) -> None:
    """`split_dir/core.json` with one open-ended sample per image list; `images`: name -> link target or None."""
    (split_dir / "images").mkdir(parents=True)
    for name, target in images.items():
        if target is None:
            Image.new("RGB", (4, 4), "red").save(split_dir / "images" / name)
        else:
            os.symlink(target, split_dir / "images" / name)
    document = {
        "metadata": {"dataset": folder, "split": "core", "task_instruction": list(get_task(folder).templates["core"])},
        "data": [
            {
                "sample_id": i,
                "task_instruction_id": 0,
                "task_instance": {
                    "context": "{image#1} What is shown?",
                    "images_path": paths,
                    "choice_list": ["red", "blue"],
                },
                "response": "red",
            }
            for i, paths in enumerate(samples)
        ],
    }
    text = json.dumps(document)
    (split_dir / "core.json").write_text(("\ufeff" + text) if folder == "ALFRED" else text, encoding="utf-8")


@pytest.fixture(scope="module")
def damaged(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`<tree>/demon/<Task>/core/...` plus `<tree>/outside-secret.png`; returns the tree."""
    tree = tmp_path_factory.mktemp("damaged")
    demon = tree / "demon"
    write_task(demon / "ALFRED" / "core", "ALFRED", {"0.png": None}, [["0.png"], ["0.png"]])
    write_task(demon / "VIST" / "core", "VIST", {"0.png": None}, [["0.png"]])
    (demon / "VIST" / "core" / "core.json").write_text('{"metadata": {}, "data": [')
    write_task(
        demon / "TQA" / "core",
        "TQA",
        {"0.png": None, "alias.png": "0.png", "link.png": "../../../../outside-secret.png"},
        [["0.png"], ["alias.png"], ["link.png"]],
    )
    Image.new("RGB", (4, 4), "blue").save(tree / "outside-secret.png")
    return tree


def pack(tree: Path, archive: Path) -> Path:
    """Pack the tree's content (`demon/`, `outside-secret.png`) at the archive's top, links as links."""
    entries = sorted(tree.rglob("*"))
    if archive.name.endswith(".zip"):
        with zipfile.ZipFile(archive, "w") as zf:
            for path in entries:
                name = path.relative_to(tree).as_posix()
                if path.is_symlink():  # zipfile stores a Unix symlink as its target text plus the mode
                    info = zipfile.ZipInfo(name)
                    info.create_system, info.external_attr = 3, 0o120777 << 16
                    zf.writestr(info, os.readlink(path))
                else:
                    zf.write(path, name)
    else:
        with tarfile.open(archive, "w:gz") as tar:
            for path in entries:
                tar.add(path, path.relative_to(tree).as_posix(), recursive=False)
    return archive


@pytest.fixture(scope="module")
def served(damaged: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, dict[str, str]]]:
    """The damaged tree as `demon.tar.gz` and `demon.zip` over HTTP; yields (base URL, name -> sha256)."""
    folder = tmp_path_factory.mktemp("www")
    digests = {
        name: hashlib.sha256(pack(damaged, folder / name).read_bytes()).hexdigest()
        for name in ("demon.tar.gz", "demon.zip")
    }
    port = free_port()
    command = [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1", "--directory", str(folder)]
    log = tmp_path_factory.mktemp("log") / "http.log"
    with server(command, f"http://127.0.0.1:{port}/", log, timeout=30):
        yield f"http://127.0.0.1:{port}", digests


def accounting(report: dict, out: Path) -> dict:
    """What must not depend on the path the data took: per task counts and errors, every quarantine code."""
    codes = sorted(
        (row["task"], row["sample_id"], row["code"])
        for row in map(json.loads, (out / "quarantine.jsonl").read_text().splitlines())
    )
    tasks = {
        t: (c["input"], c["normalized"], c["quarantined"], c["error"] is not None) for t, c in report["tasks"].items()
    }
    return {"tasks": tasks, "totals": report["totals"], "quarantine": codes}


@pytest.mark.slow  # an HTTP server process
@pytest.mark.parametrize(
    ("archive", "checksum"), [("demon.tar.gz", True), ("demon.tar.gz", False), ("demon.zip", True)]
)
def test_fetched_tree_accounts_like_the_source(
    archive: str, checksum: bool, damaged: Path, served: tuple[str, dict[str, str]], tmp_path: Path
) -> None:
    url, digests = served
    direct = normalize(damaged / "demon", tmp_path / "direct", progress=False)
    expected = accounting(direct, tmp_path / "direct")
    assert expected["tasks"] == {
        "ALFRED": (2, 2, 0, False),  # the BOM is no damage
        "TQA": (3, 2, 1, False),  # alias.png -> 0.png is kept, link.png leaves the task
        "VIST": (0, 0, 0, True),
    }

    raw = tmp_path / "raw"
    manifest = fetch(f"{url}/{archive}" + (f"#sha256={digests[archive]}" if checksum else ""), raw, progress=False)
    assert sorted(manifest["last_fetch"]["installed"]) == ["ALFRED", "TQA", "VIST"]
    assert manifest["tasks"]["ALFRED"]["splits"]["core"]["samples"] == 2
    assert "not valid JSON" in manifest["tasks"]["VIST"]["splits"]["core"]["error"]
    (refused,) = manifest["tasks"]["TQA"]["splits"]["core"]["not_installed"]
    assert refused["path"] == "images/link.png" and refused["link"] == "../../../../outside-secret.png"
    assert refused["entry"] == f"{archive}!/demon/TQA/core/images/link.png"
    images = raw / "TQA" / "core" / "images"
    assert not os.path.lexists(images / "link.png"), "a link that would change meaning is not installed"
    assert os.readlink(images / "alias.png") == "0.png"

    fetched = normalize(raw, tmp_path / "out", progress=False)
    assert accounting(fetched, tmp_path / "out") == expected
    (row,) = [json.loads(line) for line in (tmp_path / "out" / "quarantine.jsonl").read_text().splitlines()]
    assert row["code"] == "unsafe_image_path" and refused["entry"] in row["reason"]
    assert fetched["tasks"]["VIST"]["error"] == direct["tasks"]["VIST"]["error"]


@pytest.mark.slow
def test_cli_fetch_then_strict_normalize_fails_on_the_broken_task(
    served: tuple[str, dict[str, str]], tmp_path: Path
) -> None:
    url, digests = served
    raw, out = tmp_path / "raw", tmp_path / "out"
    source = f"{url}/demon.tar.gz#sha256={digests['demon.tar.gz']}"
    fetched = subprocess.run(
        [*DEMONLAB, "data", "fetch", "--source", source, "--dest", str(raw)], capture_output=True, text=True
    )
    assert fetched.returncode == 0, fetched.stderr
    assert "VIST" in fetched.stderr and "link.png" in fetched.stderr
    strict = [*DEMONLAB, "data", "normalize", "--raw", str(raw), "--out", str(out), "--strict"]
    done = subprocess.run(strict, capture_output=True, text=True)
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    report = json.loads((out / "report.json").read_text())
    assert report["totals"]["tasks_failed"] == 1 and "not valid JSON" in report["tasks"]["VIST"]["error"]
    assert report["totals"]["input"] == 5  # ALFRED 2 + TQA 3: every readable sample of the source


def test_unreadable_files_of_a_local_source_are_listed_and_explained(damaged: Path, tmp_path: Path) -> None:
    """copytree skips what it may not read; the manifest lists it and normalize gives that reason."""
    src = tmp_path / "src"
    write_task(src / "TQA" / "core", "TQA", {"0.png": None, "locked.png": None}, [["0.png"], ["locked.png"]])
    locked = src / "TQA" / "core" / "images" / "locked.png"
    locked.chmod(0)
    raw, out = tmp_path / "raw", tmp_path / "out"
    try:
        fetched = subprocess.run(
            unprivileged([*DEMONLAB, "data", "fetch", "--source", str(src), "--dest", str(raw), "--tasks", "TQA"]),
            capture_output=True,
            text=True,
        )
    finally:
        locked.chmod(0o644)
    assert fetched.returncode == 0 and "Traceback" not in fetched.stderr, fetched.stderr
    manifest = json.loads((raw / "manifest.json").read_text())
    (entry,) = manifest["tasks"]["TQA"]["splits"]["core"]["not_installed"]
    assert (entry["path"], entry["link"]) == ("images/locked.png", None) and "Permission denied" in entry["reason"]
    report = normalize(raw, out, progress=False)
    assert (report["tasks"]["TQA"]["normalized"], report["tasks"]["TQA"]["quarantined"]) == (1, 1)
    (row,) = [json.loads(line) for line in (out / "quarantine.jsonl").read_text().splitlines()]
    assert row["code"] == "bad_image" and "was not installed by fetch: TQA/core/images/locked.png" in row["reason"]
