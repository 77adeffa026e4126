"""The training recipe (paper section 2): one file, read it top to bottom.

    demonlab train --config experiments/tiny.yaml --stage align --data DIR --out runs/align
    demonlab train --config experiments/tiny.yaml --stage vpgc  --data DIR --out runs/vpgc --init runs/align
    torchrun --nproc_per_node=2 -m components.cli train ...        (DDP; `train.strategy: fsdp` shards the LLM)

Stages:
- `align`: train the VPG (Q-Former, its queries and the projection into the LLM) on captions, VPG-C off, every
  other part frozen. It gives the embedded default a working frozen VPG, as MiniGPT-4's stage 1 gave the release.
- `vpgc`: train only VPG-C (new queries copied from the VPG, zero-initialised projections) on synthetic
  difference pairs mixed with captions, everything else frozen. Loss: autoregressive cross-entropy on the
  response tokens only (labels from `prompts.layout`).

Per global step: `mix` samples of each task (`data.py`), split over ranks, then into micro-batches whose gradients
accumulate. The loss is the sum of the token losses divided by the number of target tokens in the GLOBAL batch,
so one process and N processes (and any micro-batch size) compute the same gradient. AdamW, linear warm-up then
cosine decay, gradient clipping. Precision follows the hardware (`train.precision: auto`, `vpgc/precision.py`):
frozen backbones in bf16 where the device has bf16 matrix units, float32 masters and optimiser state for what trains,
the loss reduced in float32. A checkpoint every `checkpoint_every` steps
(`state.py`) lets `--resume` continue to exactly the weights of an uninterrupted run.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from components import atomic
from components.errors import UserError
from components.experiment import load_experiment, section
from components.training import distributed, state
from components.training.config import StageSettings, train_settings_from_dict
from components.training.data import Example, TrainData, crop_rng
from components.training.loss import ResponseLoss
from components.vpgc.checkpoints import CONFIG_FILE, WEIGHTS_FILE, load_checkpoint, save_checkpoint
from components.vpgc.config import ModelConfig, load_config, model_config_from_dict
from components.vpgc.model import VPGCModel
from components.vpgc.precision import precision_name, resolve_precision
from components.vpgc.vpgc import decoder_layers

FINAL = "final"
SUMMARY = "summary.json"
SUMMARY_FIELDS = ("stage", "final", "steps", "heldout_loss_before", "heldout_loss_after", "heldout_loss_swapped")


@dataclass
class TrainResult:
    stage: str
    final: Path  # weights.safetensors + config.yaml
    steps: int
    heldout_loss_before: float | None  # None when train.heldout is 0
    heldout_loss_after: float | None
    seconds: float
    samples_per_s: float
    resumed_from: int | None = None
    precision: str = "float32"  # the compute dtype train.precision resolved to on this device
    # The trained model's held-out loss with every sample's images swapped for another's: clearly above
    # heldout_loss_after only if the model reads its images (the learning check "the VPG carries the image").
    heldout_loss_swapped: float | None = None
    samples_seen: dict[str, int] = dataclasses.field(default_factory=dict)  # per task, over all steps
    run_id: str | None = None
    model_uri: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {k: str(v) if isinstance(v, Path) else v for k, v in dataclasses.asdict(self).items()}

    def summary(self) -> dict[str, Any]:
        """summary.json: what the run made. How it went (seconds, throughput, the steps run after a resume, the
        MLflow run and model) stays in this result, the MLflow run and the printout, so two runs of the same stage,
        interrupted or not, write the same bytes (DVC output hashes)."""
        return {k: v for k, v in self.to_dict().items() if k in SUMMARY_FIELDS}


def stage_model_config(config: ModelConfig, stage: str) -> ModelConfig:
    """align: the VPG trains and VPG-C is off; vpgc: the experiment's config as written (VPG-C trains)."""
    if stage == "align":
        return config.replace(vpgc_enabled=False, freeze={**config.freeze, "vpg": "trainable", "vpgc": "frozen"})
    return config


def init_checkpoint(init: Path) -> Path:
    """`--init` may name a stage's output folder (its `final/` is used) or a checkpoint folder itself."""
    for candidate in (init / FINAL, init):
        if (candidate / WEIGHTS_FILE).is_file():
            return candidate
    raise UserError(f"--init {init}: no {WEIGHTS_FILE} there or in {init / FINAL}; run the align stage first")


def check_same_backbones(ours: ModelConfig, theirs: ModelConfig, where: Path) -> None:
    for name, a, b in (
        ("llm", ours.llm, theirs.llm),
        ("vision", ours.vision, theirs.vision),
        ("vpg", ours.vpg, theirs.vpg),
    ):
        if a != b:
            raise UserError(
                f"--init {where}: its {CONFIG_FILE} has another model.{name} than this experiment's; align and "
                "vpgc must use the same backbones"
            )


def lr_factor(step: int, settings: StageSettings, steps: int, warmup: int) -> float:
    """Linear warm-up to `lr`, then cosine decay to `min_lr` at the last step (LAVIS linear_warmup_cosine_lr)."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    floor = settings.min_lr / settings.lr
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Weight decay on matrices and query tokens, none on biases and norm weights (LAVIS's rule)."""
    decay, no_decay = [], []
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            (no_decay if parameter.ndim < 2 or name.endswith("bias") else decay).append(parameter)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def pixels_of(model: VPGCModel, examples: Sequence[Example], image_root: Path) -> torch.Tensor:
    """(M, 3, S, S): every image of `examples` in order, each sample cropped with its own seed."""
    tensors = [model.load_pixels(e.images, image_root, rng=crop_rng(e)) for e in examples]
    return torch.cat(tensors).to(model.device)


def swapped_images(examples: list[Example]) -> list[Example]:
    """Each example with the images of the next one that has as many images (cyclically, in order), so the text is
    unchanged and only the pictures stop matching it; an example alone in its image count keeps its own."""
    by_count: dict[int, list[int]] = {}
    for index, example in enumerate(examples):
        by_count.setdefault(len(example.images), []).append(index)
    swapped = list(examples)
    for indices in by_count.values():
        for index, donor in zip(indices, indices[1:] + indices[:1], strict=True):
            swapped[index] = dataclasses.replace(examples[index], images=examples[donor].images)
    return swapped


@torch.no_grad()
def heldout_loss(
    loss_fn: ResponseLoss, examples: list[Example], image_root: Path, micro_batch: int, swap: bool = False
) -> float:
    """Mean token loss on the held-out samples (evaluation transform, every rank computes the same number);
    `swap`: each sample sees another's images (`swapped_images`)."""
    model = loss_fn.model
    was_training = model.vpgc.training or model.vpg.training
    model.train(False)
    total, tokens = 0.0, 0
    for chunk, shown in zip(chunks(examples, micro_batch), chunks(swapped_images(examples) if swap else examples,
                                                                  micro_batch), strict=True):  # fmt: skip
        layouts = model.layouts([e.conversation for e in chunk], [e.target for e in chunk])
        total += float(loss_fn(layouts, pixels_of(model, shown, image_root), cached=True))
        tokens += sum(len(item.target_ids) for item in layouts)
    model.train(was_training)
    return total / max(tokens, 1)


def out_of_memory(error: BaseException) -> bool:
    return isinstance(error, torch.OutOfMemoryError) or "can't allocate memory" in str(error)


def train(
    experiment: Path,
    stage: str,
    data: Path,
    out: Path,
    init: Path | None = None,
    max_steps: int | None = None,
    resume: bool = False,
    overrides: dict[str, Any] | None = None,
    device: str = "auto",
    register_as: str | None = None,
    variant: str | None = None,
) -> TrainResult:
    """Run one training stage; every rank calls this (rank 0 writes files and logs to the active MLflow run).
    `variant` names the setting this run trains (`train.variants` of params.yaml) in the checkpoint's record."""
    experiment, data, out = Path(experiment), Path(data), Path(out)
    context = distributed.init(device)
    # Process-wide switches set for training go back afterwards (other work may share the process).
    deterministic = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    try:
        return _train(experiment, stage, data, out, init, max_steps, resume, overrides, context, register_as, variant)
    finally:
        torch.use_deterministic_algorithms(deterministic[0], warn_only=deterministic[1])
        distributed.shutdown(context)


def _train(
    experiment: Path,
    stage: str,
    data_dir: Path,
    out: Path,
    init: Path | None,
    max_steps: int | None,
    resume: bool,
    overrides: dict[str, Any] | None,
    context: distributed.Context,
    register_as: str | None,
    variant: str | None,
) -> TrainResult:
    import mlflow

    to_mlflow = context.is_main and mlflow.active_run() is not None

    # ---- 1. settings: the experiment's `model:` and `train:` sections (params.yaml overrides merged in)
    document = load_experiment(experiment, overrides)
    settings = train_settings_from_dict(section(document, "train", experiment), f"{experiment}: train")
    stage_settings = settings.stage(stage, str(experiment))
    steps = stage_settings.steps if max_steps is None else max_steps
    if steps < 1:
        raise UserError(f"--max-steps must be >= 1, got {steps}")
    # A shortened run keeps the schedule's shape: warm-up shrinks in proportion.
    warmup = round(stage_settings.warmup_steps * steps / stage_settings.steps)
    model_config = stage_model_config(model_config_from_dict(section(document, "model", experiment)), stage)
    compute_dtype = resolve_precision(settings.precision, context.device)
    if context.device.type == "cpu":
        torch.use_deterministic_algorithms(True, warn_only=True)
    else:
        torch.backends.cuda.matmul.allow_tf32 = True  # the float32 Q-Former and VPG-C

    # ---- 2. data: the same global batch on every rank for a given step; this rank takes its slice
    data = TrainData(data_dir, stage_settings.mix, settings.heldout, settings.seed)
    if data.global_batch_size % context.world_size:
        raise UserError(
            f"{experiment}: train.{stage}.mix sums to {data.global_batch_size} samples per step, which does not "
            f"split over {context.world_size} ranks; make it a multiple of the number of processes"
        )
    per_rank = data.global_batch_size // context.world_size

    # ---- 3. model: same seed on every rank, so random parts (tests, a fresh VPG) agree before DDP starts
    torch.manual_seed(settings.seed)
    model = VPGCModel.from_config(model_config, device=context.device)
    extra_components: tuple[str, ...] = ()
    if init is not None:
        init_dir = init_checkpoint(Path(init))
        check_same_backbones(model_config, load_config(init_dir / CONFIG_FILE), init_dir)
        loaded = load_checkpoint(model, init_dir)
        if "vpg" in loaded and not model_config.trainable("vpg"):
            extra_components = ("vpg",)  # our aligned VPG exists nowhere else: the final checkpoint carries it
    if stage == "vpgc":  # the paper's start: zero projections (= the base MLLM), queries copied from the VPG
        model.vpgc.reset_parameters()
        model.vpgc.init_queries_from(model.vpg)
    model.use_precision(compute_dtype).train(True)
    loss_fn = ResponseLoss(model)
    trainable = [p for p in model.parameters() if p.requires_grad]

    # ---- 4. optimiser and schedule
    optimizer = torch.optim.AdamW(
        param_groups(model, stage_settings.weight_decay), lr=stage_settings.lr, betas=stage_settings.betas
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, stage_settings, steps, warmup)
    )

    # ---- 5. resume: weights, optimiser, schedule, RNG and data position (= the step) from the newest step folder
    start, history, heldout_before, resumed_from, rng_restored = 0, [], None, None, False
    latest = state.latest(out) if resume else None
    if latest is not None:
        saved = state.load(latest, model, optimizer, scheduler, context.rank, context.device)
        rng_restored = saved["rng_restored"]
        mine = {"stage": stage, "steps": steps, "seed": settings.seed, "mix": stage_settings.mix}
        theirs = {key: saved.get(key) for key in mine}
        if theirs != mine:
            raise UserError(
                f"--resume: {latest} was written by another run ({theirs}, this one: {mine}); use the same "
                "stage, steps, seed and mix, or another --out"
            )
        # The schedule follows this run's settings: a lower lr after a NaN stop takes effect on --resume.
        scheduler.base_lrs = [stage_settings.lr for _ in optimizer.param_groups]
        for group in optimizer.param_groups:
            group["initial_lr"] = stage_settings.lr
            group["lr"] = stage_settings.lr * lr_factor(saved["step"], stage_settings, steps, warmup)
        start = resumed_from = saved["step"]
        history, heldout_before = saved["history"], saved["heldout_loss_before"]
        extra_components = tuple(saved["extra_components"])
    if not rng_restored:
        torch.manual_seed(settings.seed + start + 1_000_003 * context.rank)  # dropout differs per rank

    wrapped = distributed.wrap(loss_fn, decoder_layers(model.llm), context, settings.strategy)
    heldout = data.heldout_examples()
    if heldout_before is None and heldout:
        heldout_before = heldout_loss(loss_fn, heldout, data.image_root, stage_settings.micro_batch)
    if to_mlflow:
        mlflow.log_params(
            {f"train.{k}": v for k, v in dataclasses.asdict(stage_settings).items()}
            | {
                "train.stage": stage,
                "train.steps_run": steps,
                "train.world_size": context.world_size,
                "train.precision": precision_name(compute_dtype),
                "train.strategy": settings.strategy,
                "train.trainable_parameters": sum(p.numel() for p in trainable),
                "train.data_sizes": data.sizes(),
                "train.init": str(init),
                "train.resumed_from": resumed_from,
            }  # fmt: skip
        )
        if heldout_before is not None:
            mlflow.log_metric("heldout_loss", heldout_before, step=start)

    # ---- 6. the loop
    began = time.perf_counter()
    # What the loader yields per task over the whole run: the mix as trained, not as configured. The stream is a
    # function of the step, so a resumed run counts the steps before it too and reports what a whole run does.
    seen = Counter(example.task for step in range(start) for example in data.global_batch(step))
    progress = tqdm(range(start, steps), desc=f"train {stage}", disable=not context.is_main, unit="step")
    for step in progress:
        tick = time.perf_counter()
        batch = data.global_batch(step)
        seen.update(example.task for example in batch)
        examples = batch[context.rank * per_rank : (context.rank + 1) * per_rank]
        layouts = model.layouts([e.conversation for e in examples], [e.target for e in examples])
        global_tokens = float(context.sum(torch.tensor(float(sum(len(x.target_ids) for x in layouts)))))
        micro = list(chunks(range(len(examples)), stage_settings.micro_batch))
        loss_sum = torch.zeros((), device=context.device)
        try:
            for index, part in enumerate(micro):
                # Gradients sync across ranks on the last micro-batch only (DDP's no_sync before it).
                sync = index == len(micro) - 1 or not context.distributed
                with nullcontext() if sync else wrapped.no_sync():
                    summed = wrapped([layouts[i] for i in part], pixels_of(model, [examples[i] for i in part],
                                                                           data.image_root))  # fmt: skip
                    # DDP averages over ranks, hence * world_size: the result is sum / global target tokens.
                    (summed * context.world_size / global_tokens).backward()
                loss_sum += summed.detach()
        except (torch.OutOfMemoryError, RuntimeError) as error:
            if not out_of_memory(error):
                raise
            raise UserError(
                f"step {step}: a micro-batch of {stage_settings.micro_batch} samples does not fit in memory on "
                f"{context.device} ({str(error).splitlines()[0][:200]}); lower train.{stage}.micro_batch "
                "(gradient accumulation keeps the global batch)"
            ) from None
        loss = float(context.sum(loss_sum)) / global_tokens
        if not math.isfinite(loss):
            last = state.latest(out)
            raise UserError(
                f"step {step}: the loss is {loss}; training stopped without updating the weights. The last good "
                f"checkpoint is {last or 'none (no step folder yet)'}; lower train.{stage}.lr or check the data, "
                "then --resume"
            )
        max_norm = stage_settings.grad_clip if stage_settings.grad_clip is not None else math.inf
        grad_norm = float(torch.nn.utils.clip_grad_norm_(trainable, max_norm))
        lr = scheduler.get_last_lr()[0]
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)

        done = step + 1
        seconds = time.perf_counter() - tick
        history.append({"step": done, "loss": loss, "lr": lr, "grad_norm": grad_norm})
        progress.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}")
        if to_mlflow and (done % stage_settings.log_every == 0 or done == steps):
            mlflow.log_metrics(
                {"loss": loss, "lr": lr, "grad_norm": grad_norm, "samples_per_s": data.global_batch_size / seconds},
                step=done,
            )
        if done % stage_settings.checkpoint_every == 0 and done < steps:
            rng_states = context.gather(state.rng_state(context.device))
            if context.is_main:
                state.save(
                    out, done, model, optimizer, scheduler, rng_states,  # type: ignore[arg-type]
                    {"stage": stage, "steps": steps, "seed": settings.seed, "mix": stage_settings.mix,
                     "history": history, "heldout_loss_before": heldout_before,
                     "extra_components": list(extra_components)},
                    extra_components, stage_settings.keep_checkpoints,
                )  # fmt: skip
            context.barrier()
    elapsed = time.perf_counter() - began

    # ---- 7. the final model, held-out loss after, summary, MLflow model
    heldout_after = heldout_loss(loss_fn, heldout, data.image_root, stage_settings.micro_batch) if heldout else None
    heldout_swapped = (
        heldout_loss(loss_fn, heldout, data.image_root, stage_settings.micro_batch, swap=True) if heldout else None
    )
    trained = steps - start
    result = TrainResult(
        stage=stage,
        final=out / FINAL,
        steps=steps,
        heldout_loss_before=heldout_before,
        heldout_loss_after=heldout_after,
        heldout_loss_swapped=heldout_swapped,
        seconds=elapsed,
        samples_per_s=trained * data.global_batch_size / elapsed if elapsed > 0 else 0.0,
        resumed_from=resumed_from,
        precision=precision_name(compute_dtype),
        samples_seen=dict(sorted(seen.items())),
        run_id=mlflow.active_run().info.run_id if to_mlflow else None,
    )
    if context.is_main:
        # the checkpoint's own record of how it was trained, which evaluation reports (paths as given)
        record = {"experiment": str(experiment), "stage": stage, "variant": variant, "mix": stage_settings.mix,
                  "steps": steps, "lr": stage_settings.lr, "seed": settings.seed,
                  "init": str(init) if init else None}  # fmt: skip
        save_checkpoint(model, out / FINAL, extra_components, training=record)
        figure = plot_losses(history, heldout_before, heldout_after, steps, out / "loss_curve.png")
        if to_mlflow:
            mlflow.log_metric("heldout_loss", heldout_after, step=steps)
            if heldout_swapped is not None:
                mlflow.log_metric("heldout_loss_swapped", heldout_swapped)
            mlflow.log_metrics({"train_seconds": result.seconds, "train_samples_per_s": result.samples_per_s})
            mlflow.log_metrics({f"samples_seen.{task}": float(n) for task, n in result.samples_seen.items()})
            mlflow.log_artifact(str(figure))
            from components.tracking.models import log_checkpoint_model

            # every trained checkpoint is a logged model that evaluations attach their scores to; one is registered
            result.model_uri = log_checkpoint_model(out / FINAL, out.name, register_as=register_as, alias=stage)
        atomic.write_json(out / SUMMARY, result.summary())
    context.barrier()
    return result


@contextmanager
def system_metrics() -> Iterator[None]:
    """MLflow system metrics (CPU, memory, disk, network via psutil; GPUs via pynvml) for runs started inside,
    sampled every MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL seconds (MLflow's own setting; default 2 here)."""
    import mlflow

    mlflow.set_system_metrics_sampling_interval(float(os.environ.get("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", 2)))
    mlflow.set_system_metrics_samples_before_logging(1)
    mlflow.enable_system_metrics_logging()
    try:
        yield
    finally:
        mlflow.disable_system_metrics_logging()


def plot_losses(
    history: list[dict[str, float]], before: float | None, after: float | None, steps: int, path: Path
) -> Path:
    """Training loss per step and the held-out loss before/after, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 4), dpi=110)
    axis.plot([h["step"] for h in history], [h["loss"] for h in history], label="training loss", lw=1.2)
    if before is not None and after is not None:
        axis.plot([0, steps], [before, after], "o--", color="tab:red", label="held-out loss (before, after)")
    axis.set_xlabel("step")
    axis.set_ylabel("token cross-entropy")
    axis.legend()
    axis.grid(alpha=0.3)
    figure.tight_layout()
    with atomic.atomic_path(path) as temp:
        figure.savefig(temp, format="png")
    plt.close(figure)
    return path
