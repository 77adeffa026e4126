"""Normalization rules, on real files: every sample is kept or quarantined with a reason a person can act on."""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from components.demon.normalize import normalize, parse_inline_choices
from components.demon.registry import get_task
from components.errors import UserError

TQA_CHOICES = ["Sun", "Oxygen", "Hydrogen", "Carbon"]


def save_image(path: Path, mode: str = "RGB", size: tuple[int, int] = (16, 16)) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    if mode == "I;16":
        Image.fromarray(np.full(size, 40000, dtype=np.uint16)).save(path)
    else:
        Image.new(mode, size, color=1 if mode == "P" else None).save(path)
    return path.name


def write_task(raw: Path, folder: str, samples: list, question_type: str = "multi-choice", bom: bool = False) -> Path:
    task = get_task(folder)
    document = {
        "metadata": {
            "dataset": task.dataset_name,
            "split": "core",
            "num_sample": len(samples),
            "task_instruction": list(task.templates["core"]),
            "question_type": question_type,
        },
        "data": samples,
    }
    path = raw / folder / "core" / "core.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(("\ufeff" if bom else "") + json.dumps(document), encoding="utf-8")
    return path


def tqa_sample(sample_id: int, images: list[str], **overrides) -> dict:
    refs = "".join(f"{{image#{k + 1}}}" for k in range(len(images)))
    sample = {
        "sample_id": sample_id,
        "task_instruction_id": 2,
        "task_instance": {
            "context": f"{refs}Question: What produces ozone? Your answer is: ",
            "images_path": images,
            "choice_list": TQA_CHOICES,
        },
        "response": "Oxygen",
    }
    for key, value in overrides.items():
        if key in ("context", "images_path", "choice_list"):
            sample["task_instance"][key] = value
        else:
            sample[key] = value
    return sample


@pytest.fixture
def raw(tmp_path: Path) -> Path:
    """A raw tree with one clean and one problem per rule, across three tasks (one under an alias)."""
    raw = tmp_path / "raw"
    images = raw / "TQA" / "core" / "images"
    ok = [save_image(images / "0.png"), save_image(images / "1.jpg")]
    save_image(images / "cmyk.jpg", "CMYK")
    save_image(images / "deep.png", "I;16")
    save_image(images / "pal.png", "P")
    truncated = images / "truncated.jpg"
    Image.new("RGB", (64, 64), "red").save(images / "full.jpg")
    truncated.write_bytes((images / "full.jpg").read_bytes()[:300])
    (images / "notes.jpg").write_text("this is not an image")
    (raw / "secret.png").write_bytes((images / "0.png").read_bytes())
    os.symlink(raw / "secret.png", images / "link.png")
    bomb = images / "bomb.png"
    Image.new("1", (10000, 10000)).save(bomb)  # 100 Mpx > Pillow's 89.5 Mpx limit, tiny on disk
    samples = [
        tqa_sample(0, ok),
        tqa_sample(1, ["cmyk.jpg", "deep.png", "pal.png"]),
        tqa_sample(2, ok, response="Nitrogen"),
        tqa_sample(3, ["missing.jpg"]),
        tqa_sample(4, ["truncated.jpg"]),
        tqa_sample(5, ["notes.jpg"]),
        tqa_sample(6, ["/etc/passwd"]),
        tqa_sample(7, ["../../secret.png"]),
        tqa_sample(8, ["link.png"]),
        tqa_sample(9, ok, context="{image#1}{image#3} Question: ?"),
        tqa_sample(10, ok, task_instruction_id=99),
        {"sample_id": 11, "task_instruction_id": 0, "response": "Sun"},
        tqa_sample(0, ok, response="Sun"),  # duplicate id: the first one wins
        tqa_sample(12, ["bomb.png"]),
        tqa_sample(13, ok, response=4, choice_list=["3", "4"]),  # an integer response, as Fashion200K has
    ]
    write_task(raw, "TQA", samples, bom=True)

    alfred_images = raw / "ALFRED" / "core" / "images"
    write_task(
        raw,
        "ALFRED",
        [
            {
                "sample_id": 3,
                "task_instruction_id": 2,
                "task_instance": {
                    "context": "Step Details: {image#1}Step#1: Turn left. {image#2} Current Step: ",
                    "images_path": [save_image(alfred_images / "6.jpg"), save_image(alfred_images / "7.jpg")],
                },
                "response": "Walk to the sink.",
            }
        ],
        question_type="",
    )

    mmqa_images = raw / "MMQA" / "core" / "images"  # an alias folder name; table shares numbering with images
    write_task(
        raw,
        "MMQA",
        [
            {
                "sample_id": 0,
                "task_instruction_id": 7,
                "task_instance": {
                    "context": "Global Table: {table#1} Context: {image#2} Question: What sports? "
                    "Choice List:['soccer', 'baseball'] Your answer is:",
                    "images_path": [save_image(mmqa_images / "0.png"), save_image(mmqa_images / "1.jpg")],
                },
                "response": "baseball",
            }
        ],
    )
    broken = raw / "WebQA" / "core"
    broken.mkdir(parents=True)
    (broken / "core.json").write_text('{"metadata": {"dataset": "WebQA",')
    (raw / "notes").mkdir()
    return raw


def quarantined(out: Path) -> dict[object, dict]:
    rows = [json.loads(line) for line in (out / "quarantine.jsonl").read_text().splitlines()]
    return {(row["task"], row["sample_id"], row["code"]): row for row in rows}


def test_every_sample_is_accounted_for_with_an_actionable_reason(raw: Path, tmp_path: Path):
    out = tmp_path / "out"
    report = normalize(raw, out, progress=False)

    for counts in report["tasks"].values():
        assert counts["normalized"] + counts["quarantined"] == counts["input"]
    tqa = report["tasks"]["TQA"]
    assert (tqa["input"], tqa["normalized"], tqa["quarantined"]) == (15, 3, 12)
    assert report["tasks"]["WebQA"]["error"] and "not valid JSON" in report["tasks"]["WebQA"]["error"]
    assert report["tasks"]["MultiModalQA"]["folder"] == "MMQA"
    assert report["ignored_folders"] == ["notes"]
    assert "VIST" in report["missing_tasks"]
    assert report["totals"]["input"] == report["totals"]["normalized"] + report["totals"]["quarantined"]

    q = quarantined(out)
    expected = {
        2: ("response_not_in_choices", "Nitrogen"),
        3: ("bad_image", "missing"),
        4: ("bad_image", "truncated"),
        5: ("bad_image", "not an image"),
        6: ("unsafe_image_path", "absolute"),
        7: ("unsafe_image_path", "'..'"),
        8: ("unsafe_image_path", "outside the task folder"),
        9: ("placeholder_out_of_range", "image #3"),
        10: ("template_out_of_range", "99"),
        11: ("missing_field", "task_instance"),
        0: ("duplicate_sample_id", "first one is kept"),
        12: ("bad_image", "decompression-bomb"),
    }
    for sample_id, (code, words) in expected.items():
        entry = q[("TQA", sample_id, code)]
        assert words in entry["reason"], entry
        assert entry["file"] == "TQA/core/core.json"


def test_accepts_what_real_data_contains(raw: Path, tmp_path: Path):
    out = tmp_path / "out"
    normalize(raw, out, progress=False)
    samples = pd.read_parquet(out / "samples.parquet").set_index("uid")

    odd_modes = samples.loc["TQA/core/1"]  # CMYK, 16-bit and palette images are kept as they are
    assert list(odd_modes["images"]) == [
        "TQA/core/images/cmyk.jpg",
        "TQA/core/images/deep.png",
        "TQA/core/images/pal.png",
    ]
    assert Image.open(raw / odd_modes["images"][0]).mode == "CMYK"
    assert samples.loc["TQA/core/0", "response"] == "Oxygen"  # the first of the duplicates
    assert samples.loc["TQA/core/13", "response"] == "4"

    alfred = samples.loc["ALFRED/core/3"]
    assert alfred["question_type"] == "open-ended" and alfred["choice_list"] is None
    assert alfred["instruction"] == get_task("ALFRED").templates["core"][2]

    mmqa = samples.loc["MultiModalQA/core/0"]
    assert list(mmqa["choice_list"]) == ["soccer", "baseball"] and mmqa["choices_inline"]
    assert mmqa["category"] == "Knowledge Grounded QA"
    assert list(mmqa["images"]) == ["MMQA/core/images/0.png", "MMQA/core/images/1.jpg"]
    assert len(mmqa["source_sha256"]) == 64


def test_outputs_stay_inside_out_and_rerun_is_identical(raw: Path, tmp_path: Path):
    out = tmp_path / "out"
    before = {p for p in tmp_path.rglob("*")}
    normalize(raw, out, progress=False)
    written = {p for p in tmp_path.rglob("*")} - before
    assert written and all(p.is_relative_to(out) for p in written)
    assert sorted(p.name for p in out.iterdir()) == ["quarantine.jsonl", "report.json", "samples.parquet"]
    first = (out / "samples.parquet").read_bytes(), (out / "quarantine.jsonl").read_text()
    normalize(raw, out, progress=False)
    assert ((out / "samples.parquet").read_bytes(), (out / "quarantine.jsonl").read_text()) == first


def test_resumes_from_the_journal_of_a_killed_run(raw: Path, tmp_path: Path):
    out = tmp_path / "out"
    normalize(raw, out, tasks=["ALFRED"], progress=False)
    # Simulate a kill after ALFRED finished: its journal entry is there, the final outputs are not.
    (out / ".shards").mkdir()
    from components.demon import normalize as module

    fingerprint = module.task_fingerprint(raw, "ALFRED", "core")
    done = module.TaskResult(
        "ALFRED", "ALFRED", 1, [], [{"task": "ALFRED", "sample_id": 3, "code": "x", "reason": "r"}]
    )
    module.save_shard(out / ".shards", fingerprint, done)
    report = normalize(raw, out, progress=False)
    assert report["tasks_resumed"] == 1
    # the file is what an uninterrupted run writes: how many tasks came from the journal is the returned report's
    assert "tasks_resumed" not in json.loads((out / "report.json").read_text())
    assert report["tasks"]["ALFRED"]["quarantined"] == 1  # taken from the journal, not recomputed
    assert not (out / ".shards").exists()


def test_cli_exit_codes_and_strict(raw: Path, tmp_path: Path):
    demonlab = [sys.executable, "-m", "components.cli", "data", "normalize", "--raw", str(raw)]
    done = subprocess.run([*demonlab, "--out", str(tmp_path / "a")], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "TQA" in done.stdout and "ignored (not DEMON tasks): notes" in done.stdout
    strict = subprocess.run([*demonlab, "--out", str(tmp_path / "b"), "--strict"], capture_output=True, text=True)
    assert strict.returncode == 1
    missing = subprocess.run(
        [
            sys.executable,
            "-m",
            "components.cli",
            "data",
            "normalize",
            "--raw",
            str(tmp_path / "nope"),
            "--out",
            "x",
        ],
        capture_output=True,
        text=True,
    )
    assert missing.returncode == 2 and "Traceback" not in missing.stderr and "does not exist" in missing.stderr


def test_unknown_task_selection_is_a_user_error(raw: Path, tmp_path: Path):
    with pytest.raises(UserError, match="not in"):
        normalize(raw, tmp_path / "out", tasks=["NoSuchTask"], progress=False)


@pytest.mark.parametrize(
    ("context", "expected"),
    [
        ("Q? Choice List:['Sun','Oxygen'] Your answer is: ", ["Sun", "Oxygen"]),
        ("Choice List:['0','1','2'] Your answer is:", ["0", "1", "2"]),
        (
            "Choice List:['ut suddenly - ', 'for pete ' s sake ! ', 'ow ! '] Your answer is: ",
            ["ut suddenly - ", "for pete ' s sake ! ", "ow ! "],
        ),
        ("no options here", None),
    ],
)
def test_inline_choice_lists_as_real_contexts_write_them(context: str, expected: list[str] | None):
    assert parse_inline_choices(context) == expected


# ----------------------------------------------------------------------------------------- fuzz: hostile trees


def _dangling(images: Path, name: str) -> str:
    os.symlink("gone.png", images / name)
    return name


def _loop(images: Path, name: str) -> str:
    os.symlink(f"{name}.b", images / name)
    os.symlink(name, images / f"{name}.b")
    return name


def _self_loop(images: Path, name: str) -> str:
    os.symlink(name, images / name)
    return name


def _empty(images: Path, name: str) -> str:
    (images / name).write_bytes(b"")
    return name


def _folder(images: Path, name: str) -> str:
    (images / name).mkdir()
    save_image(images / name / "inside.png")
    return name


def _fifo(images: Path, name: str) -> str:
    os.mkfifo(images / name)
    return name


def _not_utf8(images: Path, name: str) -> str:
    name = os.fsdecode(b"\xff") + name  # b"\xff<name>" on disk; JSON can only name it through a "\udcff" escape
    save_image(images / name)
    return name


def _nul(images: Path, name: str) -> str:
    return f"a\x00{name}"


def _link_out(images: Path, name: str) -> str:
    os.symlink("../../../../outside.png", images / name)
    return name


# name -> (damage an image slot, the quarantine code, words its reason must hold)
IMAGE_DAMAGE = {
    "dangling link": (_dangling, "bad_image", "dangling link"),
    "link loop": (_loop, "bad_image", "cannot be reached"),
    "self loop": (_self_loop, "bad_image", "cannot be reached"),
    "empty file": (_empty, "bad_image", "is empty"),
    "folder named like an image": (_folder, "bad_image", "is a folder"),
    "fifo": (_fifo, "bad_image", "not a regular file"),
    "non-UTF-8 name": (_not_utf8, "bad_text", "not Unicode"),
    "NUL in name": (_nul, "bad_image_path", "not a file name"),
    "link leaving the task": (_link_out, "unsafe_image_path", "outside the task folder"),
}


def _json_link(path: Path, target: str) -> None:
    path.unlink()
    os.symlink(target, path)


def _json_folder(path: Path) -> None:
    path.unlink()
    path.mkdir()


# name -> (damage a task's json, words the task error must hold)
TASK_DAMAGE = {
    "dangling json": (lambda p: _json_link(p, "gone.json"), "is missing"),
    "json link loop": (lambda p: _json_link(p, p.name), "cannot be read"),
    "json is a folder": (_json_folder, "cannot be read"),
    "empty json": (lambda p: p.write_bytes(b""), "not valid JSON"),
    "json nested too deep": (lambda p: p.write_text("[" * 200_000), "not valid JSON"),
    "json not UTF-8": (lambda p: p.write_bytes(b'\xff\xfe{"data": []}'), "not valid JSON"),
    "json not the schema": (lambda p: p.write_text('[{"data": []}]'), "does not follow the DEMON schema"),
}


def snapshot(root: Path) -> dict[str, tuple]:
    """Every entry under `root` as lstat sees it (links not followed), with link targets."""
    state = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            info = os.lstat(path)
            link = os.readlink(path) if os.path.islink(path) else None
            state[path] = (info.st_mode, info.st_size, info.st_mtime_ns, link)
    return state


def hostile_tree(raw: Path, image_damage: list[str], task_damage: str) -> dict[int, tuple[str, str]]:
    """TQA with one clean sample and one sample per image damage, ALFRED with a task damage, odd folders around.

    Returns the expected (code, words) per TQA sample id.
    """
    images = raw / "TQA" / "core" / "images"
    ok = save_image(images / "0.png")
    save_image(images / os.fsdecode(b"\xfe-unused.png"))  # a name no sample uses still enters the fingerprint
    expected = {}
    samples = [tqa_sample(0, [ok])]
    for i, name in enumerate(image_damage, start=1):
        damage, code, words = IMAGE_DAMAGE[name]
        samples.append(tqa_sample(i, [ok, damage(images, f"{i}.png")]))
        expected[i] = (code, words)
    write_task(raw, "TQA", samples)
    save_image(raw.parent / "outside.png")
    alfred = write_task(raw, "ALFRED", [tqa_sample(0, [ok])], question_type="")
    TASK_DAMAGE[task_damage][0](alfred)
    (raw / os.fsdecode(b"notes-\xff")).mkdir()
    return expected


@pytest.mark.parametrize("seed", range(7))  # every task damage once, image damages at random
def test_hostile_trees_end_as_quarantine_or_task_errors(seed: int, tmp_path: Path):
    rng = random.Random(seed)
    image_damage = rng.sample(sorted(IMAGE_DAMAGE), k=rng.randint(1, len(IMAGE_DAMAGE)))
    task_damage = sorted(TASK_DAMAGE)[seed % len(TASK_DAMAGE)]
    raw, out = tmp_path / "in" / "raw", tmp_path / "out"
    expected = hostile_tree(raw, image_damage, task_damage)
    before = snapshot(tmp_path)

    report = normalize(raw, out, workers=2, progress=False)

    after = snapshot(tmp_path)
    assert {p: s for p, s in after.items() if not Path(p).is_relative_to(out)} == before, "input and around it"
    assert sorted(p.name for p in out.iterdir()) == ["quarantine.jsonl", "report.json", "samples.parquet"]
    tqa = report["tasks"]["TQA"]
    assert (tqa["input"], tqa["normalized"], tqa["quarantined"]) == (len(image_damage) + 1, 1, len(image_damage))
    q = {row["sample_id"]: row for row in map(json.loads, (out / "quarantine.jsonl").read_text().splitlines())}
    for sample_id, (code, words) in expected.items():
        assert (q[sample_id]["code"], words in q[sample_id]["reason"]) == (code, True), (q[sample_id], words)
    assert TASK_DAMAGE[task_damage][1] in report["tasks"]["ALFRED"]["error"]
    assert report["ignored_folders"] == ["notes-\\xff"]


def _privileged() -> bool:
    """Whether this process reads files whatever their mode (root, or CAP_DAC_OVERRIDE)."""
    with tempfile.NamedTemporaryFile() as probe:
        os.chmod(probe.name, 0)
        try:
            open(probe.name).close()
        except PermissionError:
            return False
        return True


def unprivileged(command: list[str]) -> list[str]:
    """`command` run so that permission 000 makes a file unreadable: as root, through `setpriv` with the
    capabilities that bypass file modes dropped (so the case stays meaningful); skips where that is impossible."""
    if not _privileged():
        return command
    if shutil.which("setpriv") is None:
        pytest.skip("running privileged without setpriv: permission 000 cannot make a file unreadable here")
    return ["setpriv", "--bounding-set=-dac_override,-dac_read_search", *command]


def test_unreadable_files_are_quarantined(tmp_path: Path):
    """Permission 000 on an image, an images/ folder and a task json."""
    command = unprivileged([sys.executable, "-m", "components.cli", "data", "normalize"])
    raw = tmp_path / "raw"
    images = raw / "TQA" / "core" / "images"
    ok = save_image(images / "0.png")
    locked = images / save_image(images / "locked.png")
    write_task(raw, "TQA", [tqa_sample(0, [ok]), tqa_sample(1, [ok, locked.name])])
    mmqa_images = raw / "MMQA" / "core" / "images"
    write_task(raw, "MMQA", [tqa_sample(0, [save_image(mmqa_images / "0.png")])])
    alfred_json = write_task(raw, "ALFRED", [tqa_sample(0, [ok])], question_type="")
    for path in (locked, mmqa_images, alfred_json):
        path.chmod(0)
    try:
        done = subprocess.run(
            [*command, "--raw", str(raw), "--out", str(tmp_path / "out")], capture_output=True, text=True
        )
    finally:
        for path in (locked, mmqa_images, alfred_json):
            path.chmod(0o755)
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert "cannot be read (Permission denied)" in report["tasks"]["ALFRED"]["error"]
    q = quarantined(tmp_path / "out")
    assert "permission denied" in q[("TQA", 1, "bad_image")]["reason"]
    assert "Permission denied" in q[("MultiModalQA", 0, "bad_image")]["reason"]
