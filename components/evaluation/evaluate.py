"""Evaluate a model on DEMON: normalized samples in, a results bundle out (`demonlab evaluate`, the evaluate stage).

Data-parallel under `torchrun`: every rank loads the model, answers its share of the samples (round-robin over
the length-sorted list), and rank 0 gathers the answers (`gather_object`) and writes the bundle, which is
identical to a single-process run's (greedy answers do not depend on the batch they were in). The backend is gloo
on CPU and NCCL on GPUs; each rank uses `cuda:<LOCAL_RANK>` when CUDA is there.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
import torch.distributed as dist

from components.demon.normalize import load_samples
from components.evaluation.adapters import ModelAdapter, load_adapter
from components.evaluation.bundle import file_sha256, run_record, sample_row, versions, write_bundle
from components.evaluation.cache import ResponseCache, default_cache_path
from components.evaluation.inference import (
    build_requests,
    generation_key,
    generation_settings,
    run_inference,
    select_samples,
)
from components.evaluation.settings import EvalSettings


def _distributed(device: str | None) -> tuple[int, int, str]:
    """(rank, world size, device); joins the process group when started by torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device is None:
        device = f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu"
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.startswith("cuda") else "gloo")
    rank = dist.get_rank() if dist.is_initialized() else 0
    return rank, world, device


def evaluate(
    model: str | ModelAdapter,
    data: Path,
    out: Path,
    settings: EvalSettings | None = None,
    tasks: Sequence[str] | None = None,
    categories: Sequence[str] | None = None,
    vpgc: bool | None = None,
    blind: bool = False,
    device: str | None = None,
    cache_path: Path | None = None,
    compare_runs: Sequence[str] = (),
    experiment: str | None = None,
    progress: bool = True,
    on_batch: Callable[[int], None] | None = None,
) -> dict | None:
    """Answer the selected samples of `data` (a normalized DEMON folder) and write the bundle to `out`.

    `model`: a spec (`adapters.load_adapter`) or a ready adapter. `blind`: withhold a spec's images (the blind
    control). `cache_path`: the response cache (default `cache.default_cache_path()`; `settings.cache = False`
    disables it). Returns results.json's content plus `run` (`bundle.run_record`: timing, answers generated and
    cached) on rank 0, None on the other ranks.
    """
    from components.evaluation.bundle_report import run_scores

    settings = settings or EvalSettings()
    started = time.perf_counter()
    samples, image_root = load_samples(Path(data))
    selected = select_samples(samples, tasks, categories, settings.limit)
    compared = {run_id: run_scores(run_id) for run_id in compare_runs}  # fail early on a wrong run id
    rank, world, device = _distributed(device)
    if isinstance(model, ModelAdapter):
        adapter = model
    else:
        # Components a config leaves random (tiny's VPG before alignment) are drawn from the eval seed, so every
        # run and every rank builds the same model (and the cache recognises it).
        torch.manual_seed(settings.seed)
        adapter = load_adapter(model, vpgc=vpgc, device=device, image_placement=settings.image_placement, blind=blind,
                               prompt=settings.prompt, precision=settings.precision)  # fmt: skip
    if adapter.batch_size is not None:  # a served model: as many requests at once as keep its slots busy
        settings = settings.replace(batch_size=adapter.batch_size)
    loaded = time.perf_counter()
    cache = ResponseCache((cache_path or default_cache_path()) if settings.cache else None)
    if settings.cache:
        adapter.use_cache(cache, generation_key(generation_settings(settings, adapter)))
    requests = build_requests(selected, image_root)
    try:
        records, stats = run_inference(adapter, [r for _, r in requests], settings, cache, rank, world, progress,
                                       on_batch)  # fmt: skip
    finally:
        cache.close()
    if world > 1:
        gathered: list | None = [None] * world if rank == 0 else None
        dist.gather_object((records, stats.to_dict()), gathered, dst=0)
        if rank != 0:
            return None
        records = {uid: r for part, _ in gathered for uid, r in part.items()}
        all_stats = [s for _, s in gathered]
    else:
        all_stats = [stats.to_dict()]
    gen = generation_settings(settings, adapter)
    rows = [sample_row(sample, records[request.uid]) for sample, request in requests]
    meta = {
        "model": adapter.describe(),
        "generation": {"key": generation_key(gen), **settings.to_dict(), "max_new_tokens": gen.max_new_tokens},
        "data": {
            "path": str(data),
            # as `data` is given (relative to the working folder, or absolute): not the workspace's absolute path
            "image_root": str(image_root) if Path(data).is_absolute() else os.path.relpath(image_root),
            "samples_sha256": file_sha256(Path(data) / "samples.parquet"),
        },
        "selection": {
            "tasks": sorted(selected["task"].unique().tolist()),
            "categories": list(categories or []),
            "limit": settings.limit,
        },
        "provenance": {
            "versions": versions(),
            "seeds": {"seed": settings.seed, "per_sample": "sha256(f'{seed}/{uid}')[:7 bytes]"}
            if gen.do_sample
            else {"seed": None, "note": "greedy decoding draws no random numbers"},
            "experiment": experiment,
            "device": device,
            "world_size": world,
        },
    }
    results = write_bundle(Path(out), rows, meta, compared)
    cached = sum(bool(records[request.uid].get("cached")) for _, request in requests)
    run = run_record(
        generated=sum(r["error"] is None for r in rows) - cached,
        cached=cached,
        timing={
            "model_load_s": loaded - started,
            "wall_s": max(s["total_s"] for s in all_stats),
            "generate_s": sum(s["generate_s"] for s in all_stats),
            "batches": sum(s["batches"] for s in all_stats),
            "oom_splits": sum(s["oom_splits"] for s in all_stats),
            "batch_failures": sum(s["batch_failures"] for s in all_stats),
            "per_rank": all_stats,
        },
    )
    return {**results, "run": run}
