"""Answers for DEMON samples: selection, prompts, sharding, the response cache, length-sorted batches, OOM splits.

    samples --select (tasks / categories / limit)--> requests (official prompt, hashed)
      --encode (text only) + sort by length--> this rank's share (round-robin over the sorted list)
      --cache lookup--> misses --batches (images decoded a batch ahead)--> adapter.generate --> cache, records

Every sample ends in exactly one record: an answer (generated or cached) or an error (image failure, prompt the
model cannot take, out of memory on its own, any other model failure on its own). A batch that runs out of memory
is split in halves and retried; a batch that fails otherwise is retried one sample at a time.
Under sampling each sample is generated alone with its own seed, so answers do not depend on batching or ranks.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from tqdm import tqdm

from components.demon.registry import find_task, resolve_categories
from components.demon.schema import sample_parts
from components.errors import UserError
from components.evaluation.adapters import Encoded, Loaded, ModelAdapter, Request, SampleError, first_line
from components.evaluation.cache import ResponseCache
from components.evaluation.settings import EvalSettings
from components.vpgc.generation import GenerationSettings

OOM_TYPES: tuple[type[BaseException], ...] = (torch.OutOfMemoryError,)
logger = logging.getLogger(__name__)


def select_samples(
    samples: pd.DataFrame,
    tasks: Sequence[str] | None = None,
    categories_: Sequence[str] | None = None,
    limit: int | None = None,
) -> pd.DataFrame:
    """DEMON samples of the chosen tasks / categories (both: their union), the first `limit` per task by sample_id."""
    known = samples["task"].map(lambda t: (task := find_task(str(t))) is not None and task.folder == t)
    frame = samples[known]
    keep = pd.Series(tasks is None and categories_ is None, index=frame.index)
    if tasks:
        resolved = []
        for name in tasks:
            task = find_task(name)
            if task is None:
                raise UserError(f"--tasks: {name!r} is no DEMON task; `demonlab data tasks` lists them")
            resolved.append(task.folder)
        missing = sorted(set(resolved) - set(frame["task"]))
        if missing:
            raise UserError(f"--tasks: the data has no samples of {missing}; check --data (a normalized folder)")
        keep |= frame["task"].isin(resolved)
    if categories_:
        keep |= frame["category"].isin(resolve_categories(categories_))
    frame = frame[keep].sort_values(["task", "sample_id"], kind="stable")
    if limit is not None:
        frame = frame.groupby("task", sort=True).head(limit)
    if frame.empty:
        raise UserError("no DEMON samples selected; check --data, --tasks and --categories")
    return frame.reset_index(drop=True)


def prompt_sha256(parts: Sequence[dict]) -> str:
    """sha256 of the interleaved prompt: texts and image paths (relative to the dataset root), in order."""
    return hashlib.sha256(json.dumps(list(parts), sort_keys=True, ensure_ascii=False).encode()).hexdigest()


def input_key(prompt_hash: str, image_paths: Sequence[Path]) -> str:
    """The cache's view of a sample's input: the prompt hash plus each image file's size and modification time,
    so a dataset rebuilt with other pictures under the same names is not answered from the cache."""
    stats = []
    for path in image_paths:
        try:
            info = path.stat()
            stats.append(f"{info.st_size}:{info.st_mtime_ns}")
        except OSError:
            stats.append("missing")
    return hashlib.sha256(f"{prompt_hash}|{'|'.join(stats)}".encode()).hexdigest()


def generation_settings(settings: EvalSettings, adapter: ModelAdapter) -> GenerationSettings:
    """The decoding settings for this model (its own token limit and stop strings unless the eval section says)."""
    return GenerationSettings(
        max_new_tokens=settings.max_new_tokens or adapter.default_max_new_tokens,
        do_sample=settings.decoding == "sample",
        temperature=settings.temperature,
        top_p=settings.top_p,
        seed=settings.seed,
        stop=tuple(getattr(adapter, "stop", ())),
    )


def generation_key(settings: GenerationSettings) -> str:
    """What an answer depends on besides model and input; greedy answers ignore the sampling knobs."""
    key: dict[str, Any] = {"max_new_tokens": settings.max_new_tokens, "stop": list(settings.stop)}
    if settings.do_sample:
        key.update(decoding="sample", top_p=settings.top_p, temperature=settings.temperature, seed=settings.seed)
    else:
        key.update(decoding="greedy")
    return json.dumps(key, sort_keys=True)


def sample_seed(seed: int, uid: str) -> int:
    """A sample's own sampling seed: independent of batch composition, ranks and order."""
    return int.from_bytes(hashlib.sha256(f"{seed}/{uid}".encode()).digest()[:7], "big")


def build_requests(samples: pd.DataFrame, image_root: Path | None) -> list[tuple[dict, Request]]:
    """(sample row as a dict, its request) in the frame's order; the prompt is the official runner's."""
    out = []
    for row in samples.to_dict("records"):
        out.append((row, Request(uid=row["uid"], parts=sample_parts(row), image_root=image_root)))
    return out


@dataclass
class InferenceStats:
    samples: int = 0
    cached: int = 0
    generated: int = 0
    errors: int = 0
    oom_splits: int = 0
    batch_failures: int = 0  # batches that failed other than by memory, retried one sample at a time
    batches: int = 0
    generate_s: float = 0.0
    total_s: float = 0.0
    lengths: list[int] = field(default_factory=list, repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in vars(self).items() if k != "lengths"}


def _empty_cuda_cache() -> None:
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def generate_resilient(
    adapter: ModelAdapter,
    batch: Sequence[Loaded],
    settings: GenerationSettings,
    stats: InferenceStats,
) -> list[tuple[str | None, str | None]]:
    """(answer, error) per item. Out of memory: split the batch in halves and retry each. Any other failure of a
    batch (a processor or model that cannot take this mix of prompts): retry its samples one at a time. What fails
    alone is that sample's error, with the reason; the run goes on."""
    try:
        outputs = adapter.generate(batch, settings)
    except OOM_TYPES as error:
        _empty_cuda_cache()
        if len(batch) == 1:
            hint = "lower max_new_tokens or use a larger device"
            return [(None, f"out of memory even alone ({first_line(error)}); {hint}")]
        stats.oom_splits += 1
        half = len(batch) // 2
        return generate_resilient(adapter, batch[:half], settings, stats) + generate_resilient(
            adapter, batch[half:], settings, stats
        )
    except Exception as error:  # any model or processor error: one sample's problem must not end the run
        reason = f"{type(error).__name__}: {first_line(error)}"
        if len(batch) == 1:
            return [(None, f"the model failed on this sample ({reason})")]
        stats.batch_failures += 1
        logger.warning("a batch of %d failed (%s); retrying its samples one at a time", len(batch), reason)
        return [result for item in batch for result in generate_resilient(adapter, [item], settings, stats)]
    if len(outputs) != len(batch):
        raise RuntimeError(f"{type(adapter).__name__}.generate returned {len(outputs)} answers for {len(batch)}")
    return [(text if isinstance(text, str) else "", None) for text in outputs]


def _load_batch(adapter: ModelAdapter, batch: Sequence[Encoded]) -> list[Loaded | str]:
    """Each item's decoded images, or the reason they failed."""
    loaded: list[Loaded | str] = []
    for encoded in batch:
        try:
            loaded.append(adapter.load(encoded))
        except SampleError as error:
            loaded.append(str(error))
    return loaded


def plan_batches(items: Sequence[Encoded], batch_size: int, sort_by_length: bool) -> list[list[Encoded]]:
    """Batches of `batch_size`, longest prompts first when sorting (similar lengths pad little, and a batch that
    runs out of memory does so at the start, not hours in)."""
    ordered = sorted(items, key=lambda e: (-e.length, e.request.uid)) if sort_by_length else list(items)
    return [ordered[i : i + batch_size] for i in range(0, len(ordered), batch_size)]


def shard(items: Sequence[Encoded], rank: int, world: int) -> list[Encoded]:
    """Rank `rank`'s share, in the items' order: round-robin over the items sorted by length, so every rank gets
    similar work."""
    ordered = sorted(items, key=lambda e: (-e.length, e.request.uid))
    mine = {e.request.uid for e in ordered[rank::world]}
    return [e for e in items if e.request.uid in mine]


def run_inference(
    adapter: ModelAdapter,
    requests: Sequence[Request],
    settings: EvalSettings,
    cache: ResponseCache,
    rank: int = 0,
    world: int = 1,
    progress: bool = True,
    on_batch: Callable[[int], None] | None = None,
) -> tuple[dict[str, dict], InferenceStats]:
    """Answer this rank's share of `requests`: {uid: record}, and where the time went.

    A record: `output` (None on error), `error`, `cached`, `prompt_sha256`, `prompt_tokens`, `n_images`.
    `on_batch(n)` is called after each finished batch (n samples), e.g. to stop a test evaluation midway.
    """
    start = time.perf_counter()
    stats = InferenceStats()
    gen = generation_settings(settings, adapter)
    gen_key = generation_key(gen)
    failed: dict[str, dict] = {}  # this rank's samples the model cannot take (spread over ranks round-robin)
    n_failed = 0
    infos: dict[str, dict] = {}
    encoded: list[Encoded] = []
    for request in requests:
        info = {
            "prompt_sha256": prompt_sha256(request.parts),
            "n_images": sum(p["type"] == "image" for p in request.parts),
        }
        try:
            item = adapter.encode(request)
        except SampleError as error:
            if n_failed % world == rank:
                failed[request.uid] = {**info, "output": None, "error": str(error), "cached": False}
            n_failed += 1
            continue
        infos[request.uid] = {**info, "prompt_tokens": item.length}
        encoded.append(item)
    mine = shard(encoded, rank, world)
    records = {**failed, **{e.request.uid: infos[e.request.uid] for e in mine}}
    keys = {e.request.uid: input_key(records[e.request.uid]["prompt_sha256"], e.request.image_paths()) for e in mine}
    hits = cache.get_many(adapter.fingerprint, gen_key, list(keys.values())) if settings.cache else {}
    todo = []
    for item in mine:
        uid = item.request.uid
        if keys[uid] in hits:
            records[uid].update(output=hits[keys[uid]], error=None, cached=True)
            stats.cached += 1
        else:
            todo.append(item)
    # Sampling: one sample per call with its own seed. Greedy: batches (batched == one-by-one in float32).
    size = 1 if gen.do_sample else settings.batch_size
    batches = plan_batches(todo, size, settings.sort_by_length)
    bar = tqdm(total=len(mine), initial=stats.cached, desc=f"evaluate (rank {rank})", unit="sample",
               disable=None if progress else True)  # fmt: skip
    with ThreadPoolExecutor(max_workers=1) as pool:  # decode the next batch's images while this one generates
        pending: Future | None = pool.submit(_load_batch, adapter, batches[0]) if batches else None
        for index, batch in enumerate(batches):
            loaded_or_errors = pending.result()
            pending = pool.submit(_load_batch, adapter, batches[index + 1]) if index + 1 < len(batches) else None
            ready = [item for item in loaded_or_errors if isinstance(item, Loaded)]
            for item, failure in zip(batch, loaded_or_errors, strict=True):
                if isinstance(failure, str):
                    records[item.request.uid].update(output=None, error=failure, cached=False)
            results: list[tuple[str | None, str | None]] = []
            if ready:
                batch_settings = gen
                if gen.do_sample:  # batches of one: the sample's own seed
                    batch_settings = dataclasses.replace(gen, seed=sample_seed(gen.seed, ready[0].encoded.request.uid))
                t0 = time.perf_counter()
                results = generate_resilient(adapter, ready, batch_settings, stats)
                stats.generate_s += time.perf_counter() - t0
                stats.batches += 1
            done = []
            for item, (output, error) in zip(ready, results, strict=True):
                uid = item.encoded.request.uid
                records[uid].update(output=output, error=error, cached=False)
                if error is None:
                    stats.generated += 1
                    done.append((keys[uid], uid, output))
            if settings.cache:
                cache.put_many(adapter.fingerprint, gen_key, done)
            bar.update(len(batch))
            if on_batch is not None:
                on_batch(len(batch))
    bar.close()
    for record in records.values():
        record.setdefault("cached", False)
    stats.samples = len(records)
    stats.errors = sum(r["error"] is not None for r in records.values())
    stats.total_s = time.perf_counter() - start
    return records, stats
