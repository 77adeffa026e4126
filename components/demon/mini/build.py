"""Writing mini-DEMON: every task's samples rendered into the official layout, atomically, with a stamp.

Each task folder is rendered into a temporary sibling and renamed into place; a stamp file `out/mini.json`
makes a re-run with the same arguments a no-op. Output is deterministic for a seed (per-task `random.Random`,
fixed JPEG quality, no timestamps).
"""

from __future__ import annotations

import json
import os
import random
import shutil
from collections.abc import Sequence
from pathlib import Path

from PIL import Image
from tqdm import tqdm

from components import atomic
from components.demon.mini import (
    comics,
    dialogue,
    knowledge,
    reasoning,
    recipe,
    relation,
    states,
    storytelling,
    textrich,
)
from components.demon.mini.sample import Ctx, TaskTable
from components.demon.registry import Task, tasks
from components.errors import UserError

VERSION = 2  # bump when the rendering or the generated text changes: invalidates existing stamps
STAMP = "mini.json"
JPEG_QUALITY = 90
GENERATORS: TaskTable = {
    **dialogue.TASKS,
    **storytelling.TASKS,
    **relation.TASKS,
    **comics.TASKS,
    **recipe.TASKS,
    **knowledge.TASKS,
    **textrich.TASKS,
    **reasoning.TASKS,
    **states.TASKS,
}


def official_question_type(task: Task) -> str:
    """`metadata.question_type` as the official file has it: ALFRED's is the empty string."""
    return "" if task.folder == "ALFRED" else task.question_type


def _save(im: Image.Image, path: Path, ext: str) -> None:
    if ext == "jpg":
        im.convert("RGB").save(path, "JPEG", quality=JPEG_QUALITY)
    else:
        im.save(path, "PNG")  # Pillow writes no time chunk: byte-identical across runs


def _render_task(task: Task, per_task: int, seed: int, dest: Path, first_id: int = 0) -> int:
    """Render one task into `dest/core/` (sample ids from `first_id`); returns the number of image files written."""
    generate, ext = GENERATORS[task.folder]
    templates = task.templates["core"]
    # A string seed goes through SHA-512 in `random.seed`: stable across processes and independent per task.
    rng = random.Random(f"demonlab-mini/v{VERSION}/{seed}/{task.folder}")
    image_dir = dest / "core" / "images"
    image_dir.mkdir(parents=True)
    data, n_files = [], 0
    for sample_id in range(per_task):
        template_id = rng.randrange(len(templates))
        sample = generate(Ctx(rng, template_id, templates, first_id + sample_id, ext))
        names: dict[int, str] = {}  # one file per distinct picture object (MMCoQA repeats its table)
        paths = []
        for im, fmt in sample.images:
            if id(im) not in names:
                names[id(im)] = f"{n_files}.{fmt}"
                _save(im, image_dir / names[id(im)], fmt)
                n_files += 1
            paths.append(names[id(im)])
        instance: dict[str, object] = {"context": sample.context, "images_path": paths}
        if sample.choice_list is not None:
            instance["choice_list"] = sample.choice_list
        data.append(
            {
                "sample_id": first_id + sample_id,
                "task_instruction_id": template_id if sample.instruction_id is None else sample.instruction_id,
                "task_instance": instance,
                "response": sample.response,
            }
        )
    doc = {
        "metadata": {
            "dataset": task.dataset_name,
            "split": "core",
            "num_sample": per_task,
            "task_instruction": list(templates),
            "question_type": official_question_type(task),
        },
        "data": data,
    }
    (dest / "core" / "core.json").write_text(json.dumps(doc, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    return n_files


def _swap_in(tmp: Path, final: Path) -> None:
    """Replace `final` by the fully written `tmp`: a reader sees the old task, no task, or the new one."""
    old = final.with_name(f".{final.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)


def build_mini_demon(
    out: Path,
    per_task: int = 8,
    seed: int = 0,
    progress: bool = True,
    categories: Sequence[str] | None = None,
    first_id: int = 0,
) -> dict:
    """Render the mini benchmark into `out/<Folder>/core/core.json` + `out/<Folder>/core/images/`; returns
    {"tasks": {folder: n_samples}, "images": total_images, "skipped": bool}.

    `categories` keeps only those DEMON categories' tasks; `first_id` numbers the samples from there. Another seed
    and first id give a training split of the same tasks that shares no sample id (nor, in practice, an image)
    with the benchmark (`data.mini_train`, the in-distribution upper bound).

    A re-run with the same `per_task`, `seed` and generator version over a complete output renders nothing
    and returns `skipped: True`. `out` may hold other files, but task folders there must be ours (a stamp
    `out/mini.json` says so): the builder never overwrites a real DEMON download.
    """
    out = Path(out)
    if isinstance(per_task, bool) or not isinstance(per_task, int) or per_task < 1:
        raise UserError(f"mini-DEMON: per_task must be a positive integer (e.g. --per-task 8), got {per_task!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise UserError(f"mini-DEMON: seed must be an integer (e.g. --seed 0), got {seed!r}")
    core = [t for t in tasks("core") if categories is None or t.category in categories]
    missing = [t.folder for t in core if t.folder not in GENERATORS]
    if missing:  # the registry grew a task this generator does not know
        raise RuntimeError(f"mini-DEMON has no generator for {missing}")
    wanted = {"generator": "demonlab mini-DEMON", "version": VERSION, "per_task": per_task, "seed": seed}
    if categories is not None or first_id:
        wanted |= {"categories": sorted(categories or []), "first_id": first_id}
    stamp_path = out / STAMP
    stamp: dict | None = None
    if stamp_path.is_file():
        try:
            stamp = json.loads(stamp_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            stamp = {}  # ours but unreadable: render again
    folders = [out / t.folder for t in core]
    if (
        stamp
        and stamp.get("complete")
        and all(stamp.get(k) == v for k, v in wanted.items())
        and all((f / "core" / "core.json").is_file() for f in folders)
    ):
        return {"tasks": stamp["tasks"], "images": stamp["images"], "skipped": True}
    if stamp is None and any(f.exists() for f in folders):
        raise UserError(
            f"{out} already holds DEMON task folders that the mini-DEMON did not write (no {STAMP}); "
            "refusing to overwrite them. Choose an empty --out folder, or delete that one first."
        )
    out.mkdir(parents=True, exist_ok=True)
    atomic.write_json(stamp_path, {**wanted, "complete": False})  # from here on the folders are ours
    counts, images = {}, 0
    for task in tqdm(core, desc="mini-DEMON", unit="task", disable=not progress):
        tmp = out / f".{task.folder}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)  # left by an interrupted run
        images += _render_task(task, per_task, seed, tmp, first_id)
        _swap_in(tmp, out / task.folder)
        counts[task.folder] = per_task
    atomic.write_json(stamp_path, {**wanted, "complete": True, "tasks": counts, "images": images})
    return {"tasks": counts, "images": images, "skipped": False}
