"""The synthetic discriminative data generator: source -> objects -> VPG attention -> least-attended objects ->
edit plan -> edit -> filter -> (original, edited) pairs + captions in the unified sample schema.

Work is cut into chunks of `chunk_size` consecutive source items. A chunk is the unit of batching (one vision
encoder batch), of parallelism (a process pool runs chunks) and of resuming (each finished chunk is journaled under
`<out>/.shards/`; a killed run skips the chunks it finished). Randomness comes only from per-item streams
`item_rng(seed, index, purpose)`, so serial, parallel and resumed runs write the same files.

Outputs (`<out>/`): `samples.parquet`, `images/`, `edits.jsonl` (every tried edit: plan, planner prompt and reply,
filter scores, kept or why not), `report.json` (accounting per edit type and per skipped input, `raw_root: "."`
so `components.demon.normalize.load_samples(out)` reads it), `contact_sheet.png`. The returned report adds how the
run went (`RUN_KEYS`: seconds per step, chunks resumed), which report.json leaves out: identical runs, interrupted
or not, write identical bytes.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import shutil
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from PIL import Image
from tqdm import tqdm

from components import atomic
from components.demon.schema import COLUMNS, SAMPLE_SCHEMA
from components.errors import UserError
from components.experiment import load_experiment, section
from components.synth.attention import VisionSide
from components.synth.config import CAPTION_TASK, DIFFERENCE_TASK, EDIT_TYPES, SynthConfig, synth_config_from_dict
from components.synth.editors import EditError, build_editor
from components.synth.filters import Candidate, build_filter
from components.synth.planner import PlanError, build_planner
from components.synth.regions import build_segmenter, candidates, select, significance
from components.synth.report import contact_sheet
from components.synth.sources import Item, Skip, build_source, item_rng

VERSION = 2  # bump when generation changes: journals of older runs are then not reused
GENERATOR = "demonlab synth"
SHARDS, IMAGES = ".shards", "images"
STEPS = ("load", "segment", "attention", "plan", "edit", "filter", "write")
RUN_KEYS = ("seconds", "chunks_resumed")  # in the returned report only (the stage logs them to MLflow)


@dataclass
class ChunkResult:
    """What one chunk produced; journaled as JSON, so it holds plain data only."""

    chunk: int
    indices: list[int]
    rows: list[dict] = field(default_factory=list)
    edits: list[dict] = field(default_factory=list)
    skipped: list[dict] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=lambda: dict.fromkeys(STEPS, 0.0))

    @contextmanager
    def timed(self, step: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[step] += time.perf_counter() - start


def base_row(task: str, sample_id: int, item: Item) -> dict[str, Any]:
    return {
        "uid": f"{task}/synth/{sample_id}",
        "task": task,
        "category": "Synthetic",
        "split": "synth",
        "sample_id": sample_id,
        "question_type": "open-ended",
        "choice_list": None,
        "choices_inline": False,
        "source": item.key,
        "source_sha256": item.sha256,
    }


def save_png(image: Image.Image, path: Path) -> None:
    with atomic.atomic_path(path) as tmp:
        image.save(tmp, format="PNG")  # Pillow writes no time chunk: identical bytes for identical pixels


class Synthesizer:
    """Every step built once per process from the config; `run_chunk` does the work."""

    def __init__(
        self,
        config: SynthConfig,
        model_doc: Any,
        out: Path,
        seed: int,
        vpg_checkpoint: str | Path | None = None,
    ) -> None:
        self.config, self.out, self.seed = config, Path(out), seed
        self.source = build_source(config.source, config.count, seed)
        self.vision = VisionSide.load(model_doc, vpg_checkpoint, config.init_seed, config.device)
        self.segmenter = build_segmenter(config.segmenter)
        self.planner = build_planner(config.planner)
        self.editor = build_editor(config.editor)
        self.filter = build_filter(config.filter, self.vision)
        types = [t for t in EDIT_TYPES if config.edit_types.get(t, 0) > 0]
        self.edit_types, self.edit_weights = types, [config.edit_types[t] for t in types]

    def run_chunk(self, chunk: int, indices: list[int]) -> ChunkResult:
        result = ChunkResult(chunk, list(indices))
        config = self.config
        ready = []
        for index in indices:
            try:
                with result.timed("load"):
                    item = self.source.load(index)
                with result.timed("segment"):
                    try:
                        regions = self.segmenter(item)
                    except Skip:
                        raise
                    except Exception as error:  # a backend failure costs this item, not the run
                        raise Skip("segmenter_failed", f"{type(error).__name__}: {error}") from None
                    regions = candidates(regions, config.selection, item)
            except Skip as skip:
                result.skipped.append({"index": index, "code": skip.code, "reason": str(skip)})
                continue
            ready.append((item, regions))
        if not ready:
            return result
        # edits_per_image 0 makes a caption dataset (the alignment stage's): no VPG attention needed
        if config.edits_per_image:
            with result.timed("attention"):
                features = self.vision.encode([item.image for item, _ in ready])  # (M, N, Dv)
                grids = self.vision.attention(features).cpu()  # (M, g, g)

        pending: list[tuple[Candidate, dict]] = []
        for row, (item, regions) in enumerate(ready):
            if config.edits_per_image:
                significance(grids[row], regions)
                try:
                    targets = select(regions, config.selection, item)
                except Skip as skip:
                    result.skipped.append({"index": item.index, "code": skip.code, "reason": str(skip)})
                    continue
            with result.timed("write"):
                original = f"{IMAGES}/{item.index:06d}.png"
                save_png(item.image, self.out / original)
            caption_rng = item_rng(self.seed, item.index, "caption")
            k = caption_rng.randrange(len(config.caption_instructions))
            result.rows.append(
                {
                    **base_row(CAPTION_TASK, item.index, item),
                    "instruction_id": k,
                    "instruction": config.caption_instructions[k],
                    "context": "{image#1}",
                    "images": [original],
                    "response": item.caption,
                }
            )
            rng = item_rng(self.seed, item.index, "edits")
            for j in range(config.edits_per_image):
                edit_type = rng.choices(self.edit_types, self.edit_weights)[0]
                target = targets[j % len(targets)]
                sample_id = item.index * config.edits_per_image + j
                record = {
                    "uid": None,
                    "index": item.index,
                    "edit": j,
                    "sample_id": sample_id,
                    "type": edit_type,
                    "source": item.key,
                    "caption": item.caption,
                    "attention": [[round(v, 6) for v in line] for line in grids[row].tolist()],
                    "least_attended": target.summary(),
                }
                result.edits.append(record)
                try:
                    with result.timed("plan"):
                        options = self.editor.options(item, regions, edit_type, target)
                        plan = self.planner.plan(item, edit_type, target, options, rng)
                    with result.timed("edit"):
                        edited = self.editor.apply(item, regions, plan, rng)
                except PlanError as error:
                    record.update(
                        kept=False,
                        code=error.code,
                        reason=str(error),
                        planner_prompt=error.prompt,
                        planner_reply=error.reply,
                    )
                    continue
                except EditError as error:
                    record.update(kept=False, code=error.code, reason=str(error), **plan.record())
                    continue
                except Exception as error:  # an inpainting/LLM backend failing costs this edit, not the run
                    record.update(kept=False, code="backend_failed", reason=f"{type(error).__name__}: {error}")
                    continue
                record.update(plan.record())
                candidate = Candidate(item.image, edited.image, edited.changed, plan, features[row])
                pending.append((candidate, record))

        with result.timed("filter"):
            verdicts = self.filter([c for c, _ in pending]) if pending else []
        for (candidate, record), verdict in zip(pending, verdicts, strict=True):
            record.update(kept=verdict.kept, code=verdict.code, reason=verdict.reason, scores=verdict.scores)
            if not verdict.kept:
                continue
            with result.timed("write"):
                edited_path = f"{IMAGES}/{record['index']:06d}-{record['edit']}.png"
                save_png(candidate.edited, self.out / edited_path)
            record["uid"] = f"{DIFFERENCE_TASK}/synth/{record['sample_id']}"
            original = f"{IMAGES}/{record['index']:06d}.png"
            item_row = next(r for r in result.rows if r["task"] == CAPTION_TASK and r["sample_id"] == record["index"])
            k = item_rng(self.seed, record["index"], f"instruction/{record['edit']}").randrange(
                len(config.difference_instructions)
            )
            result.rows.append(
                {
                    **item_row,
                    "uid": record["uid"],
                    "task": DIFFERENCE_TASK,
                    "sample_id": record["sample_id"],
                    "instruction_id": k,
                    "instruction": config.difference_instructions[k],
                    "context": "{image#1}{image#2}",
                    "images": [original, edited_path],
                    "response": candidate.plan.sentence,
                }
            )
        result.rows.sort(  # item by item: its caption, then its pairs
            key=lambda r: (
                r["sample_id"] // (config.edits_per_image if r["task"] == DIFFERENCE_TASK else 1),
                r["task"] != CAPTION_TASK,
                r["sample_id"],
            )
        )
        return result


# ---------------------------------------------------------------------------------------------- journal


def fingerprint(config: SynthConfig, synth: Synthesizer, seed: int, vpg_checkpoint: str | Path | None) -> str:
    """What a finished chunk depends on (not `count`/`--limit`: chunks record their own indices)."""
    settings = config.to_dict()
    settings.pop("count")
    checkpoint = None
    if vpg_checkpoint is not None:
        weights = Path(vpg_checkpoint) / "weights.safetensors"
        checkpoint = hashlib.sha256(weights.read_bytes()).hexdigest() if weights.is_file() else str(vpg_checkpoint)
    blob = {
        "version": VERSION,
        "seed": seed,
        "settings": settings,
        "model": synth.vision.config.to_dict(),
        "checkpoint": checkpoint,
        "source": synth.source.identity,
    }
    return hashlib.sha256(json.dumps(blob, sort_keys=True, default=str).encode()).hexdigest()


def claim_output(out: Path, stamp: str) -> dict[int, ChunkResult]:
    """Finished chunks of an interrupted run with the same fingerprint; otherwise a clean slate (our own previous
    outputs only: a folder with images/ we did not write is refused)."""
    shards = out / SHARDS
    run_file = shards / "run.json"
    if run_file.is_file() and json.loads(run_file.read_text()).get("fingerprint") == stamp:
        done = {}
        for path in sorted(shards.glob("chunk-*.json")):
            result = ChunkResult(**json.loads(path.read_text()))
            done[result.chunk] = result
        return done
    report = out / "report.json"
    ours = run_file.is_file() or (report.is_file() and json.loads(report.read_text()).get("generator") == GENERATOR)
    if (out / IMAGES).exists() and not ours:
        raise UserError(f"{out}/{IMAGES} exists and was not written by `{GENERATOR}`; choose an empty --out folder")
    shutil.rmtree(shards, ignore_errors=True)
    shutil.rmtree(out / IMAGES, ignore_errors=True)
    atomic.write_json(run_file, {"generator": GENERATOR, "fingerprint": stamp})
    return {}


def save_chunk(out: Path, result: ChunkResult) -> None:
    atomic.write_json(out / SHARDS / f"chunk-{result.chunk:06d}.json", result.__dict__)


# ---------------------------------------------------------------------------------------------- workers

_WORKER: Synthesizer | None = None  # one per worker process, built by `_start_worker`


def _start_worker(args: tuple, threads: int) -> None:
    global _WORKER
    torch.set_num_threads(threads)
    _WORKER = Synthesizer(*args)


def _work(chunk: int, indices: list[int]) -> ChunkResult:
    return _WORKER.run_chunk(chunk, indices)


# ---------------------------------------------------------------------------------------------- driver


def generate(
    config: SynthConfig,
    model_doc: Any,
    out: str | Path,
    *,
    limit: int | None = None,
    seed: int | None = None,
    workers: int = 1,
    vpg_checkpoint: str | Path | None = None,
    progress: bool = True,
) -> dict:
    """Generate the synthetic data into `out`; returns the report (`out/report.json` plus `RUN_KEYS`).

    `limit` caps the number of source items (after the config's `count`), `seed` replaces the config's, `workers`
    > 1 runs chunks in a process pool (same output as serial), `vpg_checkpoint` is a trained checkpoint folder
    whose VPG gives the attention maps.
    """
    out = Path(out)
    seed = config.seed if seed is None else seed
    if workers < 1:
        raise UserError(f"--workers must be at least 1, got {workers}")
    if limit is not None and limit < 0:
        raise UserError(f"--limit must be non-negative, got {limit}")
    threads = torch.get_num_threads()
    if config.threads:
        torch.set_num_threads(config.threads)
    try:
        return _generate(config, model_doc, out, seed, limit, workers, vpg_checkpoint, progress)
    finally:
        torch.set_num_threads(threads)  # the caller's setting, whatever the run did


def _generate(
    config: SynthConfig,
    model_doc: Any,
    out: Path,
    seed: int,
    limit: int | None,
    workers: int,
    vpg_checkpoint: str | Path | None,
    progress: bool,
) -> dict:
    started = time.perf_counter()
    args = (config, model_doc, out, seed, vpg_checkpoint)
    synth = Synthesizer(*args)
    total = len(synth.source)
    for cap in (config.count, limit):
        total = total if cap is None else min(total, cap)
    size = config.chunk_size
    chunks = {c: list(range(c * size, min((c + 1) * size, total))) for c in range((total + size - 1) // size)}
    stamp = fingerprint(config, synth, seed, vpg_checkpoint)
    out.mkdir(parents=True, exist_ok=True)
    done = {c: r for c, r in claim_output(out, stamp).items() if chunks.get(c) == r.indices}
    todo = [c for c in chunks if c not in done]
    bar = tqdm(total=total, initial=sum(len(chunks[c]) for c in done), desc="synth", unit="item", disable=not progress)
    if workers == 1 or len(todo) <= 1:
        for c in todo:
            done[c] = synth.run_chunk(c, chunks[c])
            save_chunk(out, done[c])
            bar.update(len(chunks[c]))
    else:
        del synth  # the workers build their own; free this copy's memory
        threads = config.threads or max(1, (os.cpu_count() or 1) // workers)
        context = multiprocessing.get_context("spawn")  # fork + torch threads can deadlock
        with ProcessPoolExecutor(
            workers, mp_context=context, initializer=_start_worker, initargs=(args, threads)
        ) as pool:
            futures = {pool.submit(_work, c, chunks[c]): c for c in todo}
            for future in as_completed(futures):
                result = future.result()
                save_chunk(out, result)
                done[result.chunk] = result
                bar.update(len(result.indices))
    bar.close()
    results = [done[c] for c in sorted(chunks)]
    report = write_outputs(
        out, results, config, seed, limit, total, stamp, vpg_checkpoint, resumed=len(chunks) - len(todo)
    )
    report["seconds"]["wall"] = round(time.perf_counter() - started, 3)
    atomic.write_json(out / "report.json", {k: v for k, v in report.items() if k not in RUN_KEYS})
    shutil.rmtree(out / SHARDS)
    return report


def write_outputs(
    out: Path,
    results: list[ChunkResult],
    config: SynthConfig,
    seed: int,
    limit: int | None,
    total: int,
    stamp: str,
    vpg_checkpoint: str | Path | None,
    resumed: int,
) -> dict:
    rows = [row for r in results for row in r.rows]
    edits = [edit for r in results for edit in r.edits]
    skipped = [skip for r in results for skip in r.skipped]
    frame = pd.DataFrame(rows, columns=list(COLUMNS))
    with atomic.atomic_path(out / "samples.parquet") as tmp:
        pq.write_table(pa.Table.from_pandas(frame, schema=SAMPLE_SCHEMA, preserve_index=False), tmp)
    atomic.write_jsonl(out / "edits.jsonl", edits)
    referenced = {Path(p).name for row in rows for p in row["images"]}
    for path in (out / IMAGES).iterdir() if (out / IMAGES).is_dir() else ():
        if path.name not in referenced:  # temp files of a killed write; chunks a smaller --limit no longer covers
            path.unlink()
    per_type = {}
    for edit_type in EDIT_TYPES:
        tried = [e for e in edits if e["type"] == edit_type]
        rejected = [e for e in tried if not e["kept"]]
        examples = {}
        for e in rejected:
            examples.setdefault(e["code"], e["reason"])
        per_type[edit_type] = {
            "tried": len(tried),
            "kept": len(tried) - len(rejected),
            "rejected": len(rejected),
            "rejected_by_code": dict(sorted(Counter(e["code"] for e in rejected).items())),
            "example_reasons": examples,
        }
    seconds = {step: round(sum(r.seconds[step] for r in results), 3) for step in STEPS}
    kept = sum(t["kept"] for t in per_type.values())
    used = sum(1 for row in rows if row["task"] == CAPTION_TASK)
    report = {
        "generator": GENERATOR,
        "version": VERSION,
        "fingerprint": stamp,
        "raw_root": ".",
        "seed": seed,
        "limit": limit,
        "vpg_checkpoint": None if vpg_checkpoint is None else str(vpg_checkpoint),
        "config": config.to_dict(),
        "inputs": {
            "total": total,
            "used": used,
            "skipped": len(skipped),
            "skipped_by_code": dict(sorted(Counter(s["code"] for s in skipped).items())),
        },
        "edits": per_type,
        "totals": {
            "tried": len(edits),
            "kept": kept,
            "rejected": len(edits) - kept,
            "pairs": kept,
            "captions": used,
            "samples": len(rows),
        },
        "skipped": skipped,
        "seconds": seconds,
        "chunks": len(results),
        "chunks_resumed": resumed,
    }
    pairs = [e for e in edits if e["kept"]][: config.contact_sheet_pairs]
    with atomic.atomic_path(out / "contact_sheet.png") as tmp:
        contact_sheet(out, pairs).save(tmp, format="PNG")
    return report


def generate_from_experiment(path: str | Path, out: str | Path, overrides: dict | None = None, **options: Any) -> dict:
    """`generate` with the `synth:` and `model:` sections of `experiments/<name>.yaml` (+ params overrides)."""
    document = load_experiment(path, overrides)
    config = synth_config_from_dict(section(document, "synth", path), f"{path}: synth")
    return generate(config, section(document, "model", path), out, **options)
