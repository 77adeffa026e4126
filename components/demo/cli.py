"""`demonlab demo`: the web demo (docs/demo.md) on 127.0.0.1 unless `--host` says otherwise."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from components.runtime.lifetime import stoppable

DEFAULT_PORT = 7860  # Gradio's
PAPER_CHECKPOINT = "vpgc-synthetic/final"  # the pipeline's model trained with the paper's recipe (params.yaml train)


def register(subparsers: argparse._SubParsersAction) -> None:
    demo = subparsers.add_parser(
        "demo",
        help="web demo: multi-image chat with VPG-C on and off, attention maps, evaluation results",
        description="Serve a page with two tabs. Chat: upload 1-8 images, ask about them with {image#k}, and read "
        "the answers of one model with VPG-C on and off side by side, the prompt each saw, the time taken, and "
        "where the VPG looked in each image before and after VPG-C's re-extraction. Results: browse one evaluation "
        "bundle (or compare two) sample by sample, with images, predictions, scores and MLflow links.",
    )
    demo.add_argument(
        "--model",
        help=f"the model selected at start (default: CHECKPOINTS/{PAPER_CHECKPOINT}, else EXPERIMENTS/tiny.yaml); "
        "any checkpoint folder, models:/<name>@<alias> or experiment config",
    )
    demo.add_argument("--checkpoints", type=Path, default=Path("data/checkpoints"), help="offered checkpoints")
    demo.add_argument("--experiments", type=Path, default=Path("experiments"), help="offered experiment configs")
    demo.add_argument("--bundles", type=Path, default=Path("data/eval"), help="offered evaluation bundles")
    demo.add_argument("--host", default="127.0.0.1", help="address to bind (0.0.0.0 exposes it to the network)")
    demo.add_argument(
        "--insecure",
        action="store_true",
        help="allow a non-loopback --host without authentication (prints a warning)",
    )
    demo.add_argument("--port", type=int, default=DEFAULT_PORT)
    demo.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    demo.add_argument("--mlflow-ui", default="http://127.0.0.1:5000", help="the MLflow UI the links open (demonlab ui)")
    demo.add_argument("--max-image-mb", type=float, default=20.0, help="largest image file accepted")
    demo.add_argument("--max-new-tokens", type=int, default=64, help="the page's initial decoding limit")
    demo.set_defaults(handler=run_demo)


def offered_models(checkpoints: Path, experiments: Path) -> list[str]:
    """Final checkpoints of the pipeline (step-* snapshots left out), then the experiment configs."""
    from components.vpgc.checkpoints import CONFIG_FILE, WEIGHTS_FILE

    found = (
        []
        if not checkpoints.is_dir()
        else sorted(
            str(p.parent)
            for p in checkpoints.rglob(WEIGHTS_FILE)
            if (p.parent / CONFIG_FILE).is_file() and not p.parent.name.startswith("step-")
        )
    )
    return found + sorted(str(p) for p in experiments.glob("*.yaml"))


@stoppable
def run_demo(args: argparse.Namespace) -> int:
    from components.runtime.quiet import quiet
    from components.security import check_exposure

    check_exposure(
        args.host,
        auth_configured=False,
        insecure=args.insecure,
        service="the demo (it runs the model on whatever is sent and shows the evaluation bundles)",
        how="keep it on 127.0.0.1 and reach it through `ssh -L` or an authenticating proxy",
    )
    quiet(os.environ)
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # read when gradio is imported

    from components.demo.app import Options, serve
    from components.demo.chat import Engine, Limits
    from components.demo.results import find_bundles

    models = offered_models(args.checkpoints, args.experiments)
    preferred = [str(args.checkpoints / PAPER_CHECKPOINT), str(args.experiments / "tiny.yaml")]
    model = args.model or next((m for m in preferred + models if m in models), "")
    if model.endswith((".yaml", ".yml")):  # an experiment: validated before the server starts
        from components.experiment import load_experiment

        load_experiment(model)
    options = Options(
        model,
        models,
        find_bundles(args.bundles),
        args.mlflow_ui.rstrip("/"),
        Limits(max_bytes=int(args.max_image_mb * 2**20)),
        args.max_new_tokens,
    )
    print(f"demonlab demo on http://{args.host}:{args.port} (model: {model or 'none yet'})", flush=True)
    serve(Engine(args.device), options, args.host, args.port)
    return 0
