"""Orchestration overhead: the embedded pipeline through Prefect + DVC + MLflow (`demonlab run`) against the same
stage functions called directly in one process, side by side in one run; `demonlab run --parallel 2` in a third
copy; then `dvc repro` and `demonlab run` with nothing to do, each stage's peak memory, and a projection of the
evaluation matrix on 8 slots (8 GPUs) from the measured cell times.

    .venv/bin/python benchmarks/bench_orchestration.py            # the embedded default (~25 min on 2 cores)
    .venv/bin/python benchmarks/bench_orchestration.py --quick    # smaller settings (~6 min), same stages

Each side gets a fresh copy of the project and a fresh response cache (the LLM's safetensors copy is shared and
warmed first), so none answers from another's cache. Targets: pipeline <= 1.10x direct; no-op repro <= 3 s; no-op
`demonlab run` <= 5 s.
"""

from __future__ import annotations

import argparse
import heapq
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
QUICK = {"data": {"mini": {"per_task": 2}}, "evaluate": {"limit": 1}, "train": {"max_steps": 6}}


def workspace(base: Path, name: str, overrides: dict) -> Path:
    from components.experiment import deep_merge

    ws = base / name
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info")
    for folder in ("components", "flows", "experiments"):
        shutil.copytree(ROOT / folder, ws / folder, ignore=ignore)
    for file in ("dvc.yaml", ".dvcignore", "prefect.yaml"):
        shutil.copy(ROOT / file, ws / file)
    (ws / "data").mkdir()
    params = deep_merge(yaml.safe_load((ROOT / "params.yaml").read_text()), overrides)
    (ws / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    for command in (["git", "init", "-q"], [sys.executable, "-m", "dvc", "init", "-q"]):
        subprocess.run(command, cwd=ws, check=True)
    return ws


def direct(ws: Path) -> None:
    """Every stage function, in the pipeline's order, with the pipeline's parameters: no Prefect, DVC or MLflow."""
    from components.demon.mini import build_mini_demon
    from components.demon.normalize import load_samples, normalize
    from components.evaluation.baselines import write_baseline_predictions
    from components.evaluation.bundle import merge_bundles
    from components.evaluation.bundle_report import compare_bundles
    from components.evaluation.evaluate import evaluate
    from components.evaluation.runner import score_directory
    from components.evaluation.settings import load_eval_settings
    from components.experiment import load_experiment
    from components.synth.pipeline import generate_from_experiment
    from components.training.recipe import train

    os.chdir(ws)
    p = yaml.safe_load(Path("params.yaml").read_text())
    experiment = Path(f"experiments/{p['experiment']}.yaml")
    data, synth, train_p, ev = p["data"], p["synth"], p["train"], p["evaluate"]
    build_mini_demon(Path(data["raw"]), per_task=data["mini"]["per_task"], seed=data["mini"]["seed"], progress=False)
    normalize(Path(data["raw"]), Path(data["normalized"]), split=data["split"])
    samples, _ = load_samples(Path(data["normalized"]))
    predictions = Path(p["baseline"]["predictions"])
    for kind in p["baseline"]["kinds"]:
        write_baseline_predictions(samples, predictions / kind, kind, seed=p["baseline"]["seed"])
        for scorer in ("parity", "strict"):
            out = Path(p["score"]["out"]) / kind / scorer
            score_directory(Path(data["normalized"]), predictions / kind, scorer, out)
    common = {"seed": synth["seed"], "workers": synth["workers"], "limit": synth["limit"], "progress": False}
    captions_only = {"synth": {"edits_per_image": 0}}
    generate_from_experiment(experiment, Path(synth["captions"]), overrides=captions_only, **common)
    out = Path(train_p["out"])
    train(experiment, "align", Path(synth["captions"]), out / "backbone", max_steps=train_p["max_steps"])
    generate_from_experiment(experiment, Path(synth["out"]), vpg_checkpoint=Path(synth["vpg_checkpoint"]), **common)
    for variant, override in train_p["variants"].items():
        train(experiment, "vpgc", Path(synth["out"]), out / f"vpgc-{variant}", init=out / "backbone",
              max_steps=train_p["max_steps"], overrides={"train": {"vpgc": override or {}}})  # fmt: skip
    overrides = {"eval": {k: ev[k] for k in ("limit", "batch_size") if ev.get(k) is not None}}
    settings = load_eval_settings(load_experiment(experiment, overrides), str(experiment))
    eval_out, views = Path(ev["out"]), ev.get("views") or ["images"]
    for name, entry in ev["models"].items():  # the matrix: model x view x task group, as the DVC stages
        spec, vpgc = (entry, None) if isinstance(entry, str) else (entry["model"], entry.get("vpgc") == "on")
        for view in views:
            groups = eval_out / "groups" / name / view
            for group, categories in ev["groups"].items():
                evaluate(spec, Path(data["normalized"]), groups / group, settings, categories=categories, vpgc=vpgc,
                         blind=view == "blind", experiment=str(experiment), progress=False)  # fmt: skip
            merge_bundles([groups / g for g in ev["groups"]], eval_out / "models" / name / view)
    labeled = [(name if view == "images" else f"{name}-{view}", eval_out / "models" / name / view)
               for view in views for name in ev["models"]]  # fmt: skip
    compare_bundles(labeled, Path(ev["report"]))


def timed(command: list[str], cwd: Path, env: dict) -> float:
    start = time.perf_counter()
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"{command} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return time.perf_counter() - start


def stage_run_seconds(ws: Path) -> float:
    """The seconds the stages' own MLflow runs lasted in workspace `ws` (the work, as the stages record it)."""
    import sqlite3

    with sqlite3.connect(ws / "mlflow.db") as db:
        query = "select sum(end_time - start_time) from runs join tags on tags.run_uuid = runs.run_uuid "
        return db.execute(query + "where tags.key = 'dvc.stage'").fetchone()[0] / 1000


def makespan(seconds: list[float], slots: int) -> float:
    """The time `slots` workers take for jobs of `seconds`, longest first to the least loaded (LPT scheduling)."""
    loads = [0.0] * slots
    for job in sorted(seconds, reverse=True):
        heapq.heapreplace(loads, loads[0] + job)
    return max(loads)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smaller settings, the same stages")
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="demonlab-bench-"))
    overrides = QUICK if args.quick else {}
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    env.pop("PREFECT_API_URL", None)  # `demonlab run` starts its own server, as a user's first run does
    warm = Path(env.get("DEMONLAB_CACHE", Path.home() / ".cache" / "demonlab")) / "llm"
    for side in ("direct", "pipeline", "parallel"):
        cache = base / f"cache-{side}"
        if warm.is_dir():
            shutil.copytree(warm, cache / "llm")
    a, b, c = (workspace(base, side, overrides) for side in ("direct", "pipeline", "parallel"))

    script = f"import sys; sys.path.insert(0, {str(ROOT / 'benchmarks')!r}); import bench_orchestration as b; "
    script += f"b.direct(__import__('pathlib').Path({str(a)!r}))"
    direct_s = timed([sys.executable, "-c", script], a, {**env, "DEMONLAB_CACHE": str(base / "cache-direct"),
                                                         "PYTHONPATH": str(a)})  # fmt: skip
    pipeline_env = {**env, "DEMONLAB_CACHE": str(base / "cache-pipeline")}
    demonlab = str(Path(sys.executable).with_name("demonlab"))
    pipeline_s = timed([demonlab, "run"], b, pipeline_env)
    parallel_s = timed([demonlab, "run", "--parallel", "2"], c, {**env, "DEMONLAB_CACHE": str(base / "cache-parallel")})
    noop_repro = timed([sys.executable, "-m", "dvc", "repro"], b, pipeline_env)
    noop_run = timed([demonlab, "run"], b, pipeline_env)
    inside = stage_run_seconds(b)
    result = json.loads((b / ".prefect" / "last-pipeline-run.json").read_text())
    peak = result["peak_rss_mb"]
    stage_seconds = json.loads((b / ".prefect" / "stage-seconds.json").read_text())
    cells = [seconds for stage, seconds in stage_seconds.items() if stage.startswith("evaluate@")]

    print(f"settings: {'quick ' + str(QUICK) if args.quick else 'embedded default (params.yaml)'}")
    print(f"stage functions called directly  {direct_s:8.1f} s   1.00x")
    print(f"demonlab run (Prefect+DVC+MLflow) {pipeline_s:8.1f} s   {pipeline_s / direct_s:.2f}x  (target <= 1.10x)")
    print(f"  of which inside the stage runs  {inside:8.1f} s   (the stages' MLflow runs, start to end)")
    print(f"demonlab run --parallel 2         {parallel_s:8.1f} s   {parallel_s / pipeline_s:.2f}x --parallel 1")
    print(f"dvc repro, nothing changed        {noop_repro:8.1f} s   (target <= 3 s)")
    print(f"demonlab run, nothing changed     {noop_run:8.1f} s   (target <= 5 s)")
    top = sorted(peak.items(), key=lambda item: -item[1])[:3]
    print(f"peak RSS of a stage: {', '.join(f'{stage} {mb} MB' for stage, mb in top)} (of {len(peak)} stages)")
    print(f"peak RSS of the pipeline process itself: {result['pipeline_rss_mb']} MB")
    if cells:
        one, eight = sum(cells), makespan(cells, 8)
        print(f"evaluation matrix, {len(cells)} cells: {one:.1f} s on 1 slot; 8 slots (projection): {eight:.1f} s")
    shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
