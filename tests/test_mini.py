"""The embedded mini-DEMON: official on-disk format, README context styles, answers readable from pixels,
determinism, atomic and idempotent writing."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from components.demon.mini import BIRD_PART_POINTS, STAMP, build_mini_demon
from components.demon.mini.relation import PART_WORDS
from components.demon.registry import Task, tasks
from components.demon.vocabulary import PALETTE
from components.errors import UserError

PER_TASK = 8
PLACEHOLDER = re.compile(r"\{(image|table)#(\d+)\}")
CORE = tasks("core")

# One pattern per task, checked against the official README example AND every generated context: the mini
# benchmark must write each task's context the way the real data does.
_ANY_CHOICES = r"Choice List:\[.+\]"
_IMAGE_OPTIONS = "Choice List:\\[" + ", ".join(rf"'Image {x}: \{{image#\d+\}}'" for x in "ABCD") + "\\]"
CONTEXT_STYLE = {
    "ALFRED": r"Your Main Goal:  .+?  Step Details: (\{image#\d+\}Step#\d+: .+? )+\{image#\d+\} Current Step: ",
    "MMCoQA": r"Global Table: \{table#1\} (History Context \d+: .+?  )*Current Context: (\{image#\d+\} )+"
    r"Question: .+? Answer:",
    **{
        story: r"(\{image#(\d+)\}Caption#\2:.+?)+\{image#(\d+)\}Caption#\3:"
        for story in ("AESOP", "PororoSV", "FlintstonesSV", "VIST", "DiDeMoSV")
    },
    "Spot-the-Diff": r"\{image#1\}\{image#2\}Difference:",
    "CLEVR-Change": r"\{image#1\}\{image#2\}Difference:",
    "Birds-to-Words": r"\{image#1\}\{image#2\}Difference:",
    "IEdit": r"Source Image:\{image#1\} Target Image:\{image#2\}Instruction:",
    "COMICS_Dialogue": rf"(\{{image#\d+\}})+{_ANY_CHOICES}Your answer is: ",
    "COMICS_Panel": r"(\{image#\d\}){3}Choice List:\['Image A: \{image#4\} ', ' Image B: \{image#5\} ', "
    r"' Image C: \{image#6\} ', ' Image D: \{image#7\} '\]Your answer is: ",
    "RecipeQA_TextCloze": r"Recipe: \S+\nDetails: (Step#\d+: .*?\n)+Recipe Summary: .*'UNKNOWN'.*\n"
    rf"{_ANY_CHOICES} Your answer to replace 'UNKNOWN' is:",
    "RecipeQA_VisualCloze": r"Recipe: \S+\nDetails: (Step#\d+: .*?\n)+\n"
    rf"Recipe Image Series: ((\{{image#\d+\}}|UNKNOWN) ?)+\n{_IMAGE_OPTIONS}Your answer to replace 'UNKNOWN' is:",
    "RecipeQA_ImageCoherence": r"Recipe: \S+\nDetails: (Step#\d+: .*?\n)+"
    rf"Recipe Image Series: (\{{image#\d+\}} ?)+\n{_IMAGE_OPTIONS}The incoherent image is:",
    "WebQA": rf"(\{{image#(\d+)\}}Image Caption #\2: .+? )+Question: .+? +{_ANY_CHOICES} Your answer is:",
    "TQA": rf"(\{{image#\d+\}})+Question: .+? {_ANY_CHOICES} Your answer is: ",
    "MultiModalQA": rf"Global Table: \{{table#1\}} Context: \{{image#2\}} Question: .+? {_ANY_CHOICES} Your answer is:",
    "SlideVQA": rf"(\{{image#\d+\}})+Question: .+? {_ANY_CHOICES} Your answer is:",
    "OCR-VQA": rf"(\{{image#\d+\}})+Question: .+? {_ANY_CHOICES} Your answer is:",
    "DocVQA": rf"(\{{image#\d+\}})+Question: .+? +{_ANY_CHOICES} Your answer is:",
    "nuScenes": rf"(\{{image#\d\}}){{6}}Question: .+? +{_ANY_CHOICES} Your answer is:",
    **{
        tf: rf"(\{{image#\d+\}})+{_ANY_CHOICES} Your answer is:"
        for tf in ("VISION", "Fashion200K", "MIT-States_PropertyCoherence", "MIT-States_StateCoherence")
    },
    "NLVR2": r"\{image#1\}\{image#2\}Relation: .+?Choice List:\['True','False'\]Answer: ",
    "VizWiz": r"\{image#1\}\{image#2\}Question1:.+? Answer1:\[.+\] Question2:.+? Answer2:\[.+\]"
    r"Choice List:\['True', 'False'\] Your answer is:",
}


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("mini")
    return out, build_mini_demon(out, per_task=PER_TASK, seed=0, progress=False)


@pytest.fixture(scope="module")
def roots(built: tuple[Path, dict], tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """The default build plus a larger one with another seed: the pixel checks see 24 samples per task."""
    varied = tmp_path_factory.mktemp("mini-varied")
    build_mini_demon(varied, per_task=16, seed=7, progress=False)
    return [built[0], varied]


def _load(root: Path, task: Task) -> dict:
    return json.loads((root / task.folder / "core" / "core.json").read_text(encoding="utf-8"))


def _pixels(root: Path, task: Task, name: str) -> np.ndarray:
    """(H, W, 3) int array of one image of a task."""
    return np.asarray(Image.open(root / task.folder / "core" / "images" / name).convert("RGB"), dtype=int)


def _color_name(rgb: np.ndarray) -> str:
    """The palette colour nearest to an RGB triple (JPEG shifts colours a little, never across the palette)."""
    return min(PALETTE, key=lambda name: float(np.linalg.norm(rgb - np.array(PALETTE[name]))))


def _count_near(pixels: np.ndarray, color: str, tol: float = 30.0) -> int:
    return int((np.linalg.norm(pixels - np.array(PALETTE[color]), axis=-1) < tol).sum())


def _by_folder(folder: str) -> Task:
    return next(t for t in CORE if t.folder == folder)


# --- format -------------------------------------------------------------------------------------------------


def test_every_core_task_is_written(built: tuple[Path, dict]) -> None:
    root, result = built
    assert result["skipped"] is False
    assert result["tasks"] == {t.folder: PER_TASK for t in CORE}
    assert len(CORE) == 29
    on_disk = {p.name for p in root.iterdir() if p.is_dir()}
    assert on_disk == {t.folder for t in CORE}  # and no temporary folder left behind
    files = [p for t in CORE for p in (root / t.folder / "core" / "images").iterdir()]
    assert len(files) == result["images"]
    stamp = json.loads((root / STAMP).read_text())
    assert stamp["complete"] and stamp["per_task"] == PER_TASK and stamp["seed"] == 0


@pytest.mark.parametrize("task", CORE, ids=lambda t: t.folder)
def test_core_json_follows_the_official_schema(built: tuple[Path, dict], task: Task) -> None:
    doc = _load(built[0], task)
    assert set(doc) == {"metadata", "data"}
    meta = doc["metadata"]
    assert meta == {
        "dataset": task.dataset_name,
        "split": "core",
        "num_sample": PER_TASK,
        "task_instruction": list(task.templates["core"]),
        "question_type": "" if task.folder == "ALFRED" else task.question_type,
    }
    assert [s["sample_id"] for s in doc["data"]] == list(range(PER_TASK))
    for sample in doc["data"]:
        assert set(sample) == {"sample_id", "task_instruction_id", "task_instance", "response"}
        assert 0 <= sample["task_instruction_id"] < len(task.templates["core"])
        instance = sample["task_instance"]
        assert set(instance) <= {"context", "images_path", "choice_list"}
        assert isinstance(instance["context"], str) and instance["context"]
        if task.folder != "Fashion200K":
            assert isinstance(sample["response"], str) and sample["response"].strip()


@pytest.mark.parametrize("task", CORE, ids=lambda t: t.folder)
def test_context_style_matches_the_readme_example(built: tuple[Path, dict], task: Task) -> None:
    pattern = re.compile(CONTEXT_STYLE[task.folder], re.DOTALL)
    readme = task.readme_example["core"]["task_instance"]["context"]
    assert pattern.fullmatch(readme), "the style pattern must describe the official example"
    for sample in _load(built[0], task)["data"]:
        assert pattern.fullmatch(sample["task_instance"]["context"]), sample["task_instance"]["context"]


@pytest.mark.parametrize("task", CORE, ids=lambda t: t.folder)
def test_placeholders_point_at_images_that_open(built: tuple[Path, dict], task: Task) -> None:
    root = built[0]
    image_dir = root / task.folder / "core" / "images"
    readme_formats = {Path(p).suffix for p in task.readme_example["core"]["task_instance"]["images_path"]}
    for sample in _load(root, task)["data"]:
        paths = sample["task_instance"]["images_path"]
        assert 1 <= len(paths) <= 8
        refs = {int(m.group(2)): m.group(1) for m in PLACEHOLDER.finditer(sample["task_instance"]["context"])}
        assert len(PLACEHOLDER.findall(sample["task_instance"]["context"])) == len(refs), "each image once"
        assert sorted(refs) == list(range(1, len(paths) + 1))
        for k, name in enumerate(paths, start=1):
            table = refs[k] == "table"
            if task.folder in ("MMCoQA", "MultiModalQA"):  # tables, and only tables, are PNG there
                assert table == name.endswith(".png")
            assert "/" not in name and (image_dir / name).is_file()
            assert Path(name).suffix in readme_formats | {".png"}
            with Image.open(image_dir / name) as im:
                im.verify()
            with Image.open(image_dir / name) as im:
                assert im.format == ("JPEG" if name.endswith(".jpg") else "PNG")
                assert max(im.size) <= (300 if table else 224) and min(im.size) >= 64


def test_jpg_and_png_both_used_and_mmcoqa_repeats_its_table(built: tuple[Path, dict]) -> None:
    root = built[0]
    suffixes = {p.suffix for t in CORE for p in (root / t.folder / "core" / "images").iterdir()}
    assert suffixes == {".jpg", ".png"}
    for sample in _load(root, _by_folder("MMCoQA"))["data"]:
        paths = sample["task_instance"]["images_path"]
        assert paths[0] == paths[1] and paths[0].endswith(".png")  # global table = history table, one file


@pytest.mark.parametrize("task", CORE, ids=lambda t: t.folder)
def test_multi_choice_answers_are_options(built: tuple[Path, dict], task: Task) -> None:
    for sample in _load(built[0], task)["data"]:
        choices = sample["task_instance"].get("choice_list")
        if task.question_type == "open-ended":
            assert choices is None
            continue
        assert choices and len(set(choices)) == len(choices) >= 2
        assert str(sample["response"]) in choices
        context = sample["task_instance"]["context"]
        if task.image_options:
            assert re.fullmatch(r"Image [A-D]", sample["response"])
            assert choices == ["Image A", "Image B", "Image C", "Image D"]
            assert re.search(rf"{sample['response']}: \{{image#\d+\}}", context)
        else:  # the options are also printed in the context, as the README examples print them
            listed = ["[" + sep.join(f"'{c}'" for c in choices) + "]" for sep in (", ", ",")]
            assert any(f"Choice List:{text}" in context for text in listed)


def test_fashion200k_keeps_one_integer_response_like_the_readme(built: tuple[Path, dict]) -> None:
    data = _load(built[0], _by_folder("Fashion200K"))["data"]
    ints = [s for s in data if isinstance(s["response"], int)]
    assert [s["sample_id"] for s in ints] == [0]
    assert ints[0]["task_instruction_id"] < 10  # the "how many suits" templates
    assert ints[0]["task_instance"]["choice_list"] == [str(n) for n in range(7)]
    assert all(isinstance(s["response"], str) for s in data[1:])


def test_template_groups_decide_the_question(built: tuple[Path, dict]) -> None:
    """Tasks whose templates ask different questions get contexts that fit the chosen template."""
    root = built[0]
    for sample in _load(root, _by_folder("Fashion200K"))["data"]:
        group = sample["task_instruction_id"] // 10
        assert len(sample["task_instance"]["images_path"]) == (5, 4, 2, 3)[group]
    for sample in _load(root, _by_folder("MIT-States_PropertyCoherence"))["data"]:
        group = sample["task_instruction_id"] // 10
        assert len(sample["task_instance"]["images_path"]) == (4, 2, 2)[group]
        assert (sample["task_instance"]["choice_list"] == ["True", "False"]) == (group < 2)
    for sample in _load(root, _by_folder("VISION"))["data"]:
        assert len(sample["task_instance"]["images_path"]) == 2


# --- answers are in the pixels ------------------------------------------------------------------------------


def _colours_named(text: str) -> set[str]:
    return set(re.findall(r"\w+", text)) & set(PALETTE)


def test_birds_to_words_colours_are_drawn_where_the_parts_are(roots: list[Path]) -> None:
    """Each clause names one part (in any of its wordings) and its colours: two that differ, or one that both share."""
    task = _by_folder("Birds-to-Words")
    part_of = {wording.split()[0]: part for part, wordings in PART_WORDS.items() for wording in wordings}
    for root in roots:
        for sample in _load(root, task)["data"]:
            first, second = (_pixels(root, task, n) for n in sample["task_instance"]["images_path"])
            seen = {
                part: tuple(
                    _color_name(np.median(img[y - 2 : y + 3, x - 2 : x + 3].reshape(-1, 3), 0))
                    for img in (first, second)
                )
                for part, (x, y) in BIRD_PART_POINTS.items()
            }
            differing = set()
            for clause in sample["response"].removesuffix(" .").split(" . "):
                (part,) = {part_of[w] for w in clause.split() if w in part_of}
                named = _colours_named(clause)
                assert named == set(seen[part]), (part, clause, seen[part])
                if len(named) == 2:
                    differing.add(part)
            assert differing, sample["response"]
            for part, colours in seen.items():  # an unmentioned part is the same on both birds
                assert (colours[0] != colours[1]) == (part in differing), (part, sample["response"])


def test_clevr_change_names_the_colours_of_what_changed(roots: list[Path]) -> None:
    """Every colour an answer names is a colour of the changed pixels, before or after: the old colour of a
    removed or moved object, the new one of an added object, the old or new one of a recoloured one."""
    task = _by_folder("CLEVR-Change")
    for root in roots:
        for sample in _load(root, task)["data"]:
            before, after = (_pixels(root, task, n) for n in sample["task_instance"]["images_path"])
            changed = np.abs(before - after).sum(-1) > 90  # the pixels the change touched
            assert changed.sum() > 50
            present = {
                colour
                for img in (before, after)
                for colour in PALETTE
                if _count_near(img[changed], colour, tol=60) > 0.3 * changed.sum()
            }
            named = _colours_named(sample["response"])
            assert named and named <= present, (sample["response"], present)


def test_nuscenes_only_the_answer_colour_appears_in_the_views(roots: list[Path]) -> None:
    task = _by_folder("nuScenes")
    checked = 0
    for root, sample in ((r, s) for r in roots for s in _load(r, task)["data"]):
        if "shirt" not in sample["task_instance"]["context"]:
            continue
        views = [_pixels(root, task, n) for n in sample["task_instance"]["images_path"]]
        for option in sample["task_instance"]["choice_list"]:
            found = [_count_near(v, option) for v in views]
            if option == sample["response"]:
                assert sorted(found)[-1] > 150 and sorted(found)[-2] < 5  # one shirt, in one camera
            else:
                assert max(found) < 5, option
        checked += 1
    assert checked >= 10


def _garment(img: np.ndarray) -> tuple[str, str]:
    """(kind, colour) of a Fashion200K picture, read from where cloth is: a dress reaches the bottom centre,
    pants leave a gap there but fill the bottom left, a top ends above both."""
    distance = np.linalg.norm(img[..., None, :] - np.array(list(PALETTE.values())), axis=-1)
    cloth = distance.min(-1) < 40  # stripes and dots are white, the background grey: neither is cloth
    kind = "dress" if cloth[130:145, 76:85].mean() > 0.3 else "pants" if cloth[130:145, 48:66].mean() > 0.3 else "top"
    return kind, list(PALETTE)[np.bincount(distance.argmin(-1)[cloth], minlength=len(PALETTE)).argmax()]


def test_fashion200k_counts_and_colours_follow_the_pictures(roots: list[Path]) -> None:
    task = _by_folder("Fashion200K")
    groups = {0: 0, 1: 0}
    for root, sample in ((r, s) for r in roots for s in _load(r, task)["data"]):
        template = task.templates["core"][sample["task_instruction_id"]]
        group = sample["task_instruction_id"] // 10
        if group not in groups:
            continue
        garments = [_garment(_pixels(root, task, n)) for n in sample["task_instance"]["images_path"]]
        kinds = [k for k, _ in garments]
        if group == 0:  # "Dress or any top with pants can combine a suit. Q:How many suit ..."
            assert str(sample["response"]) == str(kinds.count("dress") + kinds.count("top") * kinds.count("pants"))
        else:  # same colour? -- template 19 asks the opposite: "Is there any difference in color ...?"
            same = len({color for _, color in garments}) == 1
            assert sample["response"] == str(same != ("difference" in template)), template
        groups[group] += 1
    assert min(groups.values()) >= 3


# --- determinism, idempotence, atomicity --------------------------------------------------------------------


def _snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_is_byte_identical_and_another_seed_differs(built: tuple[Path, dict], tmp_path: Path) -> None:
    """Rebuilt in another process with another PYTHONHASHSEED (set iteration over strings changes with it),
    the output is the same to the byte; another seed draws other samples."""
    code = (
        "import sys; from components.demon.mini import build_mini_demon; build_mini_demon(sys.argv[1], progress=False)"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    again = tmp_path / "again"
    subprocess.run([sys.executable, "-c", code, str(again)], check=True, env=env, cwd=Path(__file__).parents[1])
    assert _snapshot(again) == _snapshot(built[0])
    build_mini_demon(tmp_path / "other", per_task=2, seed=1, progress=False)
    for task in CORE:
        assert _load(tmp_path / "other", task)["data"] != _load(built[0], task)["data"][:2], task.folder


def test_samples_do_not_depend_on_how_many_are_drawn(built: tuple[Path, dict], tmp_path: Path) -> None:
    """Sample k is the same whatever per_task is: a small build is a prefix of a larger one."""
    build_mini_demon(tmp_path, per_task=2, seed=0, progress=False)
    for task in CORE:
        assert _load(tmp_path, task)["data"] == _load(built[0], task)["data"][:2], task.folder


def test_rerun_with_same_arguments_renders_nothing(tmp_path: Path) -> None:
    out = tmp_path / "mini"
    first = build_mini_demon(out, per_task=2, seed=3, progress=False)
    mtimes = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    second = build_mini_demon(out, per_task=2, seed=3, progress=False)
    assert second == {**first, "skipped": True}
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == mtimes
    third = build_mini_demon(out, per_task=3, seed=3, progress=False)  # new arguments: rendered again
    assert third["skipped"] is False and _load(out, CORE[0])["metadata"]["num_sample"] == 3


def test_an_interrupted_build_leaves_whole_tasks_and_resumes(tmp_path: Path) -> None:
    out = tmp_path / "mini"
    out.mkdir()
    last = CORE[-1].folder
    blocker = out / f".{last}.tmp"
    blocker.write_text("a file where the last task's temporary folder must go")
    with pytest.raises(OSError):
        build_mini_demon(out, per_task=2, seed=0, progress=False)
    assert not (out / last).exists()  # the failing task is absent, not half-written
    for task in CORE[:-1]:
        assert len(_load(out, task)["data"]) == 2
    assert json.loads((out / STAMP).read_text())["complete"] is False
    blocker.unlink()
    result = build_mini_demon(out, per_task=2, seed=0, progress=False)
    assert result["skipped"] is False and len(_load(out, CORE[-1])["data"]) == 2
    assert sorted(p.name for p in out.iterdir()) == sorted([STAMP, *(t.folder for t in CORE)])


def test_refuses_to_overwrite_task_folders_it_did_not_write(tmp_path: Path) -> None:
    real = tmp_path / "TQA" / "core" / "core.json"
    real.parent.mkdir(parents=True)
    real.write_text('{"metadata": {}, "data": []}')
    with pytest.raises(UserError, match="refusing to overwrite"):
        build_mini_demon(tmp_path, per_task=1, progress=False)
    assert real.read_text() == '{"metadata": {}, "data": []}'


@pytest.mark.parametrize("bad", [0, -1, 2.5, True, "8"])
def test_rejects_a_bad_per_task(tmp_path: Path, bad: object) -> None:
    with pytest.raises(UserError, match="per_task"):
        build_mini_demon(tmp_path, per_task=bad, progress=False)  # type: ignore[arg-type]


def test_the_upper_bounds_train_split_shares_nothing_with_the_benchmark(tmp_path: Path) -> None:
    """params.yaml `data.mini_train`: the same tasks, another seed and first id. Training on it is in distribution,
    but no sample id and no picture of the benchmark may reach training (exact bytes, and the rendered pixels)."""
    import hashlib

    relation = ["Visual Relation Inference"]
    bench = build_mini_demon(tmp_path / "core", per_task=30, seed=0, categories=relation, progress=False)
    train = build_mini_demon(tmp_path / "train", per_task=30, seed=1, categories=relation, first_id=100_000,
                             progress=False)  # fmt: skip
    assert bench["tasks"].keys() == train["tasks"].keys() == {t.folder for t in tasks("core") if t.category in relation}

    def ids_and_pictures(root: Path) -> tuple[set[str], set[str]]:
        ids, pictures = set(), set()
        for task in bench["tasks"]:
            document = json.loads((root / task / "core" / "core.json").read_text())
            ids |= {f"{task}/{item['sample_id']}" for item in document["data"]}
            for image in (root / task / "core" / "images").iterdir():
                pixels = np.asarray(Image.open(image).convert("RGB"))
                pictures.add(hashlib.sha256(pixels.tobytes()).hexdigest())
        return ids, pictures

    bench_ids, bench_pictures = ids_and_pictures(tmp_path / "core")
    train_ids, train_pictures = ids_and_pictures(tmp_path / "train")
    assert len(bench_ids) == len(train_ids) == 4 * 30 and len(bench_pictures) > 4 * 30
    assert not bench_ids & train_ids
    assert not bench_pictures & train_pictures
