"""Normalization rules, on real files: every sample is kept or quarantined with a reason a person can act on."""

from __future__ import annotations

import json
import os
import subprocess
import sys
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
