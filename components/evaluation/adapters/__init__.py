"""Models behind one interface: VPG-C models of `components.vpgc` and Hugging Face image-text-to-text models.

A `ModelAdapter` answers DEMON prompts in three steps, so the runner can sort, batch and recover per sample:

    encode(request)       -> Encoded   text only (tokenized prompt, its length): cheap, done for every sample first
    load(encoded)         -> Loaded    the sample's images decoded; a bad image raises `SampleError` for that sample
    generate([Loaded...]) -> [str]     one batch, any mix of image counts; may raise (the runner retries it)

Model specs (`load_adapter`):
- `experiments/<name>.yaml`: a VPG-C experiment config (`model:` section), weights as the config names them;
- a checkpoint folder (`weights.safetensors` + `config.yaml`, written by training);
- `models:/<name>@<alias>` or `runs:/<run id>/<path>`: an MLflow model, downloaded to a checkpoint folder;
- `openai:<base url>#<model name>`: a model behind an OpenAI-compatible chat-completions server (vLLM, SGLang,
  llama.cpp, hosted APIs), one request per sample with bounded concurrency and retries (`openai_chat.py`);
- `hf:<hub id or local folder>`: any model with a chat template that `AutoProcessor` + `AutoModelForImageTextToText`
  load. The processor is probed once (`probe_feeding`): a chat template that renders images where they are gets
  the prompt interleaved, one that gathers them gets the DEMON paper's fallback (all images first, `[Image k]`
  markers where the text referred to them); images go in one list per prompt when the processor takes that and
  answers a batch as it answers each prompt alone, else in one flat list.

`fingerprint` identifies what the model computes (its config + a hash of every weight + whether it is blind), so
cached responses are reused exactly when the same model answers the same prompt with the same settings.

A blind adapter (`blind=True`) is the control of an ablation: the same model with every image replaced by a blank
grey image of the same size, so the prompt and its token count are unchanged and only the pixels are withheld.
What a model scores above its blind control is what it got from the images.
"""

from __future__ import annotations

from pathlib import Path

import torch

from components.errors import UserError
from components.evaluation.adapters.base import (
    BLANK_GREY,
    Encoded,
    Loaded,
    ModelAdapter,
    Request,
    SampleError,
    open_rgb,
    weights_sha256,
)
from components.evaluation.adapters.hf import (
    HF_PREFIX,
    HFAdapter,
    first_line,
    image_only_processor_class,
    render_hf_content,
)
from components.evaluation.adapters.openai_chat import OPENAI_PREFIX, OpenAIAdapter, ServeOptions
from components.evaluation.adapters.vpgc import VPGCAdapter

MLFLOW_PREFIXES = ("models:/", "runs:/")
UNKNOWN_SPEC_HELP = (
    "give an experiment config (experiments/<name>.yaml), a checkpoint folder (weights.safetensors + config.yaml), "
    "an MLflow model (models:/<name>@<alias>, runs:/<run id>/<path>), a Hugging Face model (hf:<id or folder>) or a "
    "served one (openai:<base url>#<model name>)"
)


def _is_checkpoint(path: Path) -> bool:
    from components.vpgc.checkpoints import CONFIG_FILE, WEIGHTS_FILE

    return (path / WEIGHTS_FILE).is_file() and (path / CONFIG_FILE).is_file()


def load_adapter(
    spec: str,
    vpgc: bool | None = None,
    device: str = "cpu",
    image_placement: str = "auto",
    blind: bool = False,
    prompt: str = "training",
    served: ServeOptions | None = None,
    precision: str = "auto",
) -> ModelAdapter:
    """The model a spec names (see the module docstring); `vpgc` switches VPG-C on or off (None: as configured);
    `blind` withholds the images (the blind control); `prompt` is the VPG-C prompt preset (`eval.prompt`);
    `served`: how requests reach a served model (default `ServeOptions()`); `precision`: a VPG-C model's compute
    precision (`eval.precision`, `components.vpgc.precision`)."""
    if spec.startswith(OPENAI_PREFIX):
        if vpgc is not None or prompt != "training":
            raise UserError("--vpgc and eval.prompt apply to VPG-C models only; a served model uses its own template")
        return OpenAIAdapter(spec, served, image_placement, blind)
    if spec.startswith(HF_PREFIX):
        if vpgc is not None:
            raise UserError(f"{spec}: --vpgc applies to VPG-C models only; leave it out for Hugging Face models")
        if prompt != "training":
            raise UserError(f"{spec}: eval.prompt: {prompt} applies to VPG-C models; HF models use their own template")
        return HFAdapter.from_pretrained(spec, device, image_placement, blind)
    from components.vpgc.checkpoints import checkpoint_record
    from components.vpgc.config import load_config
    from components.vpgc.model import VPGCModel
    from components.vpgc.precision import resolve_precision

    changes = {} if vpgc is None else {"vpgc_enabled": vpgc}
    dtype = resolve_precision(precision, torch.device(device))

    def adapter(model: VPGCModel, checkpoint: Path | None = None) -> VPGCAdapter:
        record = checkpoint_record(checkpoint) if checkpoint else None
        return VPGCAdapter(spec, model.use_precision(dtype).eval(), blind, prompt, record)

    if spec.startswith(MLFLOW_PREFIXES):
        import mlflow

        from components.tracking.models import download_checkpoint
        from components.tracking.runs import tracking_uri

        mlflow.set_tracking_uri(tracking_uri())  # the workspace's store unless MLFLOW_TRACKING_URI names another
        directory = Path(download_checkpoint(spec))
        return adapter(VPGCModel.from_checkpoint(directory, device=device, **changes), directory)
    path = Path(spec)
    if path.is_dir():
        if _is_checkpoint(path):
            return adapter(VPGCModel.from_checkpoint(path, device=device, **changes), path)
        if (path / "config.json").is_file():
            raise UserError(f"{spec} looks like a Hugging Face model folder; pass it as hf:{spec}")
        raise UserError(f"{spec}: no weights.safetensors + config.yaml in this folder; {UNKNOWN_SPEC_HELP}")
    if path.is_file() and path.suffix in (".yaml", ".yml"):
        config = load_config(path)
        return adapter(VPGCModel.from_config(config.replace(**changes) if changes else config, device=device))
    raise UserError(f"model {spec!r} not found; {UNKNOWN_SPEC_HELP}")


__all__ = [
    "BLANK_GREY",
    "HF_PREFIX",
    "Encoded",
    "HFAdapter",
    "Loaded",
    "ModelAdapter",
    "OPENAI_PREFIX",
    "OpenAIAdapter",
    "Request",
    "SampleError",
    "ServeOptions",
    "VPGCAdapter",
    "first_line",
    "image_only_processor_class",
    "load_adapter",
    "open_rgb",
    "render_hf_content",
    "weights_sha256",
]
