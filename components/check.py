"""`demonlab check`: is an experiment whole? Validates every section of `experiments/<name>.yaml` without loading
weights or downloading anything, and prints the plan it describes.

    demonlab check --config experiments/vicuna7b.yaml [--data data/synth] [--peak-tflops 312] [--mfu 0.4]

What is checked, all at once (every problem is listed, exit 2 when there is any):
- each section with its own package's validator (`model`, `synth`, `train`, `eval`: `components.experiment.
  validate_experiment`, the validation every command runs), and no unknown section;
- every referenced file and folder exists; a value that is not a local path must be a hub id (`owner/name`) that is
  already in the Hugging Face cache, since a run that starts by downloading 13 GB is not what `check` promises;
- the step budget (warm-up, checkpoints and logging within the steps) and, for the data each stage would read
  (`--data` for tasks without their own `data:` folder), that every mix task is there with more than `heldout`
  samples; the epochs each task's data is walked;
- the evaluation: the prompt preset fits the model's template; the DEMON tasks it runs.

The GPU-hour estimate counts forward and backward FLOPs with `components.vpgc.flops` (and the vision encoder here)
for a typical sample (`TEXT_TOKENS` of text beside the images' visual tokens), at `--mfu` of `--peak-tflops`
(A100 bfloat16: 312). It is a budget, not a measurement: `benchmarks/gpu_train.py` measures a real step.
"""

from __future__ import annotations

import argparse
import glob
import os
import re
from pathlib import Path
from typing import Any

from components.errors import UserError

REQUIRED = ("model", "synth", "train")  # the pipeline runs every one; `eval` may take its defaults
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
TEXT_TOKENS = 64  # instruction + response tokens of a typical training sample (a caption, an edit sentence)
IMAGES_PER_SAMPLE = {"SynthDifference": 2}  # other tasks: one image (captions)


def register(subparsers: argparse._SubParsersAction) -> None:
    check = subparsers.add_parser(
        "check",
        help="validate a whole experiment (no weights loaded, nothing downloaded) and print its plan",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="""Validate an experiment config before any compute, print its plan with an estimate of GPU-hours.

What is validated (every problem at once, one line each: `<key path>: <what is wrong>, got <value>`; exit 2):
  the file       YAML syntax (file:line), a mapping, only the sections model, synth, train, eval
  each section   against its schema (docs/config.md): types, ranges, enums, required keys, unknown keys
                 (with a did-you-mean); the same validation every command runs when it loads an experiment
  across fields  the VPG-C layer exists in the LLM; every mix task exists (DEMON or synthetic) or names its own
                 folder; warm-up shorter than the run, min_lr <= lr; query and hidden sizes fit the weights
                 named; the Q-Former reads the vision encoder's width; the synth steps fit their source
  paths          every file and folder named exists; a hub id must already be in the Hugging Face cache
  budget, data   checkpoints and logging within the steps; with --data, every mix task has more samples than
                 train.heldout (and the epochs each is walked)
  evaluation     the prompt preset fits the model's chat template""",
    )
    check.add_argument("--config", type=Path, required=True, help="experiments/<name>.yaml")
    check.add_argument("--data", type=Path, help="the training data folder (samples.parquet) to count the mix against")
    check.add_argument("--peak-tflops", type=float, default=312.0, help="GPU peak bf16 TFLOP/s (A100: 312)")
    check.add_argument("--mfu", type=float, default=0.4, help="model FLOPs utilisation assumed (default 0.4)")
    check.set_defaults(handler=run_check)


def run_check(args: argparse.Namespace) -> int:
    plan, problems = check_experiment(args.config, args.data, args.peak_tflops * 1e12 * args.mfu)
    print("\n".join(plan))
    if problems:
        listed = "\n".join(f"  - {problem}" for problem in problems)
        raise UserError(f"{args.config}: {len(problems)} problem(s):\n{listed}")
    print(f"{args.config}: ok")
    return 0


def check_experiment(
    path: Path, data: Path | None = None, flops_per_s: float = 312e12 * 0.4
) -> tuple[list[str], list[str]]:
    """(plan lines, problems) of the experiment at `path`; `data` is the training folder `--data` would name."""
    from components.evaluation.settings import EvalSettings
    from components.experiment import read_experiment, validate_experiment

    try:
        document = read_experiment(path)
    except UserError as error:
        return [], [str(error)]
    sections, problems = validate_experiment(document)
    problems += [f"{name}: required section missing; see experiments/tiny.yaml for every key"
                 for name in REQUIRED if name not in document]  # fmt: skip
    model, synth, train = (sections.get(name) for name in REQUIRED)
    evaluation = sections.get("eval") or EvalSettings()

    plan = [f"experiment {path}"]
    if model is not None:
        problems += _model_paths(model)
        plan.append(f"model {model.name}: {model.llm.source} + {model.vision.kind}, VPG-C before block {model.layer}")
    if synth is not None:
        problems += _synth_paths(synth)
        plan += _synth_plan(synth)
    if train is not None:
        stage_plan, stage_problems = _train_plan(train, model, data, flops_per_s)
        plan += stage_plan
        problems += stage_problems
    if model is not None:
        eval_plan, eval_problems = _eval_plan(evaluation, model)
        plan += eval_plan
        problems += eval_problems
    if train is not None:
        plan.append(_precision_plan(train.precision, evaluation.precision))
    return plan, problems


def _precision_plan(train: str, evaluation: str) -> str:
    """What `train.precision` and `eval.precision` resolve to on this machine's CPU (or its first GPU)."""
    import torch

    from components.vpgc.precision import has_bf16_matrix_units, precision_name, resolve_precision

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    units = "has" if has_bf16_matrix_units(device) else "has no"
    chosen = {name: precision_name(resolve_precision(value, device)) for name, value in (("train", train),
              ("eval", evaluation))}  # fmt: skip
    return (f"precision here ({device.type}, {units} bf16 matrix units): train {train} -> {chosen['train']}, "
            f"eval {evaluation} -> {chosen['eval']}")  # fmt: skip


# ---------------------------------------------------------------------------------------------- paths


def _path_problem(key: str, value: str | None, kind: str = "file", hub: bool = False) -> list[str]:
    """[] when `value` (a `kind`: file | folder | any) is there without a download, else the problem."""
    if value is None:
        return []
    if value.startswith("package:"):
        from components.vpgc.backbones import resolve_path

        try:
            resolve_path(value, key)
        except UserError as error:
            return [str(error)]
        return []
    local = Path(value).expanduser()
    if local.exists():
        wrong = (kind == "file" and not local.is_file()) or (kind == "folder" and not local.is_dir())
        return [f"{key}: {value} is not a {kind}"] if wrong else []
    if hub and HUB_ID.fullmatch(value):
        if _in_hub_cache(value):
            return []
        return [f"{key}: {value} is neither a local path nor a hub model in the Hugging Face cache; fix the path, "
                "or download the model first (docs/model.md, docs/synth.md)"]  # fmt: skip
    return [f"{key}: {value} does not exist; download it (docs/model.md, docs/synth.md) or fix the path"]


def _in_hub_cache(repo_id: str) -> bool:
    hub = os.environ.get("HF_HUB_CACHE") or Path(os.environ.get("HF_HOME", "~/.cache/huggingface")) / "hub"
    snapshots = Path(hub).expanduser() / f"models--{repo_id.replace('/', '--')}" / "snapshots"
    return snapshots.is_dir() and any(snapshots.iterdir())


def _model_paths(model: Any) -> list[str]:
    problems = _path_problem("model.llm.source", model.llm.source, "any", hub=True)
    problems += _path_problem("model.llm.tokenizer", model.llm.tokenizer, "any", hub=True)
    problems += _path_problem("model.vision.weights", model.vision.weights)
    problems += _path_problem("model.vpg.weights", model.vpg.weights)
    return problems + _path_problem("model.checkpoint", model.checkpoint)


def _synth_paths(synth: Any) -> list[str]:
    source = synth.source
    problems = _path_problem("synth.source.captions", source.captions if source.kind == "folder" else None)
    problems += _path_problem("synth.source.root", source.root if source.kind == "folder" else None, "folder")
    if source.kind == "webdataset" and not glob.glob(os.path.expanduser(source.shards)):
        problems.append(f"synth.source.shards: no file matches {source.shards!r}; download the shards or fix the glob")
    models = {
        "segmenter": synth.segmenter.kind == "sam",
        "planner": synth.planner.kind == "transformers",
        "editor": synth.editor.kind == "diffusers",
        "filter": synth.filter.kind == "clip",
    }
    for name, used in models.items():
        if used:
            problems += _path_problem(f"synth.{name}.model", getattr(synth, name).model, "any", hub=True)
    planner = synth.planner
    if planner.kind == "openai":
        if not re.match(r"https?://[^/\s]+", planner.base_url or ""):
            problems.append(f"synth.planner.base_url: {planner.base_url!r} is not an http(s) URL")
        if planner.api_key_env is not None and not ENV_NAME.fullmatch(planner.api_key_env):
            problems.append(f"synth.planner.api_key_env: {planner.api_key_env!r} is not an environment variable name")
    return problems


# ---------------------------------------------------------------------------------------------- plan


def _synth_plan(synth: Any) -> list[str]:
    items = "every item" if synth.count is None else f"{synth.count:,} items"
    steps = (f"{synth.segmenter.kind} -> {synth.selection.rule} (k {synth.selection.k}) -> {synth.planner.kind} -> "
             f"{synth.editor.kind} -> {synth.filter.kind}")  # fmt: skip
    tries = "" if synth.count is None else f": at most {synth.count * synth.edits_per_image:,} pairs"
    return [f"synth: {synth.source.kind} source, {items}, {synth.edits_per_image} edit(s) each{tries}", f"  {steps}"]


def _task_counts(folder: Path) -> dict[str, int] | None:
    """Samples per task of a unified-schema folder (only the `task` column is read); None when it has none."""
    import pandas as pd

    parquet = folder / "samples.parquet"
    if not parquet.is_file():
        return None
    return pd.read_parquet(parquet, columns=["task"])["task"].value_counts().to_dict()


def _train_plan(train: Any, model: Any | None, data: Path | None, flops_per_s: float) -> tuple[list[str], list[str]]:
    """The stages' budgets and data (problems included); GPU-hours only with a valid model to count FLOPs of."""
    from components.training.config import STAGES, mix_counts, mix_folders

    plan, problems = [], []
    if model is not None and model.vpg.weights is None and model.checkpoint is None and train.align is None:
        problems.append("train: the VPG has no weights (model.vpg.weights) and no `train.align:` stage trains it")
    if train.vpgc is None:
        problems.append("train: no `vpgc:` stage; the pipeline trains VPG-C with it")
    if data is not None and _task_counts(data) is None:
        problems.append(f"--data: {data} has no samples.parquet; point it at the synthetic-data output")
    total_hours = 0.0
    for name in STAGES:
        stage = getattr(train, name)
        if stage is None:
            continue
        where = f"train.{name}"
        for key in ("checkpoint_every", "log_every"):
            if getattr(stage, key) > stage.steps:
                problems.append(f"{where}.{key}: {getattr(stage, key)} is more than the {stage.steps} steps")
        counts, folders = mix_counts(stage.mix), mix_folders(stage.mix)
        hours = None
        if model is not None:
            hours = (
                stage.steps
                * sum(n * _sample_flops(model, name, task) for task, n in counts.items())
                / flops_per_s
                / 3600
            )
            total_hours += hours
        plan.append(f"train {name}: {stage.steps:,} steps x {stage.global_batch} samples (micro-batch "
                    f"{stage.micro_batch}), lr {stage.lr:g} -> {stage.min_lr:g}, warm-up {stage.warmup_steps:,}: "
                    f"~{_hours(hours)} GPU-hours")  # fmt: skip
        for task, per_step in counts.items():
            folder = Path(folders[task]) if task in folders else data
            drawn = stage.steps * per_step
            line = f"  {task}: {per_step}/step, {drawn:,} drawn from {folder or '--data (not given: not counted)'}"
            available = _task_counts(folder) if folder is not None else None
            if task in folders and available is None:
                problems.append(f"{where}.mix.{task}.data: {folder} has no samples.parquet (a unified-schema folder)")
            elif available is not None:
                have = available.get(task, 0) - train.heldout
                if have <= 0:
                    problems.append(f"{where}.mix: {folder} has {available.get(task, 0)} {task} samples, not more "
                                    f"than train.heldout = {train.heldout}")  # fmt: skip
                else:
                    line += f" ({have:,} after {train.heldout} held out: {drawn / have:,.2f} epochs)"
            plan.append(line)
    assumed = f"at {flops_per_s / 1e12:,.0f} TFLOP/s sustained" if model is not None else "(no valid model)"
    plan.append(f"train total: ~{_hours(total_hours if model is not None else None)} GPU-hours {assumed}")
    return plan, problems


def _hours(hours: float | None) -> str:
    return "n/a" if hours is None else f"{hours:,.1f}"


def _vision_flops(model: Any) -> tuple[int, int]:
    """(forward FLOPs of one image through the vision encoder, its number of output tokens)."""
    vision = model.vision
    if vision.kind != "eva_vit_g":
        return 2 * 400_000_000, 49  # EfficientNet-Lite0: ~0.4 G multiply-adds, a 7x7 grid
    arch = vision.arch
    d, inner, layers = arch["hidden_size"], arch["intermediate_size"], arch["num_hidden_layers"]
    tokens = (arch["image_size"] // arch["patch_size"]) ** 2 + 1  # patches + CLS
    per_layer = 2 * tokens * (4 * d * d + 2 * d * inner) + 2 * 2 * tokens * tokens * d
    return layers * per_layer, tokens


def _sample_flops(model: Any, stage: str, task: str) -> float:
    """Training FLOPs of one sample: the frozen parts forward, backward only where gradients must flow (the decoder
    blocks above VPG-C's layer for stage vpgc, every block for align), the trainable part forward and backward."""
    from components.vpgc.flops import llm_prefill_flops, qformer_flops, vpgc_flops

    images = IMAGES_PER_SAMPLE.get(task, 1)
    vision, vision_tokens = _vision_flops(model)
    tokens = images * model.vpg.num_query_tokens + TEXT_TOKENS
    llm = llm_prefill_flops(model, 1, tokens)
    vpg = images * qformer_flops(model, vision_tokens)
    if stage == "align":  # the VPG trains: backward through the whole decoder (input gradients) and the VPG
        return images * vision + 3 * vpg + 2 * llm
    above = (model.llm.num_layers - model.layer) / model.llm.num_layers
    return images * vision + vpg + llm + above * llm + 3 * vpgc_flops(model, 1, images, vision_tokens)


def _eval_plan(evaluation: Any, model: Any) -> tuple[list[str], list[str]]:
    from components.demon.registry import tasks
    from components.vpgc.prompts import check_preset

    problems = []
    try:
        check_preset(evaluation.prompt, model.prompt.template)
    except UserError as error:
        problems.append(f"eval.prompt: {error}")
    core = tasks("core")
    limit = "all" if evaluation.limit is None else f"at most {evaluation.limit} per task"
    new_tokens = evaluation.max_new_tokens or model.prompt.max_new_tokens
    return [
        f"evaluate: {len(core)} DEMON-Core tasks in {len({t.category for t in core})} categories, {limit} of "
        f"{sum(t.counts['core'] for t in core):,} instructions; prompt {evaluation.prompt} ({model.prompt.template}), "
        f"{evaluation.decoding} decoding, at most {new_tokens} new tokens"
    ], problems
