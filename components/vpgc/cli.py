"""`demonlab model summary` and `demonlab chat`: inspect a model config, talk to a model over several images."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    model = subparsers.add_parser("model", help="inspect the VPG-C model")
    commands = model.add_subparsers(dest="model_command", required=True, metavar="COMMAND")
    summary = commands.add_parser(
        "summary",
        help="architecture and parameter counts of an experiment config (no weights loaded)",
        description="Build the model on the meta device (no weights, no memory) and print its components and "
        "parameter counts: total, trainable, per component (llm, vision, vpg, vpgc).",
    )
    summary.add_argument("--config", type=Path, required=True, help="experiments/<name>.yaml")
    summary.add_argument("--json", action="store_true", help="print JSON instead of a table")
    summary.set_defaults(handler=run_summary)

    chat = subparsers.add_parser(
        "chat",
        help="ask a model about one or more images",
        description="Answer a question that refers to images as {image#1}, {image#2}, ... (in --image order). "
        "Images not referenced in the text are placed before it.",
    )
    chat.add_argument("question", nargs="?", help='e.g. "What changed between {image#1} and {image#2}?"')
    chat.add_argument("--config", type=Path, required=True, help="experiments/<name>.yaml")
    chat.add_argument("--image", action="append", default=[], help="an image file (repeat for several)")
    chat.add_argument("--checkpoint", type=Path, help="a folder with trained VPG-C/VPG weights (weights.safetensors)")
    chat.add_argument("--interactive", action="store_true", help="keep asking: multi-turn conversation")
    chat.add_argument("--no-vpgc", action="store_true", help="backbone only: switch VPG-C off")
    chat.add_argument("--max-new-tokens", type=int, help="default: the config's prompt.max_new_tokens")
    chat.add_argument("--sample", action="store_true", help="sample (top-p) instead of greedy decoding")
    chat.add_argument("--top-p", type=float, default=0.9)
    chat.add_argument("--temperature", type=float, default=1.0)
    chat.add_argument("--seed", type=int, default=0)
    chat.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    chat.set_defaults(handler=run_chat)


def summarize(config_path: Path) -> dict:
    from components.vpgc.config import load_config
    from components.vpgc.model import VPGCModel, parameter_counts

    config = load_config(config_path)
    model = VPGCModel.from_config(config, device="meta")
    counts = parameter_counts(model)
    llm = model.llm.config
    return {
        "config": str(config_path),
        "name": config.name,
        "architecture": {
            "llm": f"{type(model.llm).__name__}: {llm.num_hidden_layers} blocks, hidden {llm.hidden_size}, "
            f"vocab {llm.vocab_size}, {config.llm.dtype}",
            "vision": f"{config.vision.kind}: {config.vision.image_size} px -> width {config.vision.width}",
            "vpg": f"Q-Former: {model.vpg.qformer.config.num_hidden_layers} layers, hidden "
            f"{config.vpg.hidden_size}, cross-attention every {model.vpg.qformer.config.cross_attention_frequency}, "
            f"{config.vpg.num_query_tokens} queries -> Linear to {llm.hidden_size}",
            "vpgc": f"before block {config.layer} of {llm.num_hidden_layers} "
            f"({'on' if config.vpgc_enabled else 'off'}), guidance from the last prompt token",
        },
        "freeze": dict(config.freeze),
        "total_parameters": sum(c["total"] for c in counts.values()),
        "trainable_parameters": sum(c["trainable"] for c in counts.values()),
        "components": counts,
    }


def run_summary(args: argparse.Namespace) -> int:
    report = summarize(args.config)
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"{report['name']} ({report['config']})")
    for name, text in report["architecture"].items():
        print(f"  {name:<7}{text}")
    print(f"\n  {'component':<10}{'total':>16}{'trainable':>16}  mode")
    for name, counts in report["components"].items():
        print(f"  {name:<10}{counts['total']:>16,}{counts['trainable']:>16,}  {report['freeze'][name]}")
    print(f"  {'all':<10}{report['total_parameters']:>16,}{report['trainable_parameters']:>16,}")
    return 0


def question_parts(question: str, images: list[str], first_turn: bool = True) -> list[dict]:
    """Interleaved parts for one user turn. In the first turn, images the text does not reference go first."""
    from components.demon.schema import placeholder_indices, to_parts
    from components.errors import UserError

    referenced = placeholder_indices(question)
    bad = [k for k in referenced if not 1 <= k <= len(images)]
    if bad:
        raise UserError(f"the question refers to {{image#{bad[0]}}} but only {len(images)} --image were given")
    leading = [{"type": "image", "path": p, "index": k} for k, p in enumerate(images, 1) if k not in referenced]
    return (leading if first_turn else []) + to_parts(question, images)


def run_chat(args: argparse.Namespace) -> int:
    from components.errors import UserError
    from components.vpgc.checkpoints import load_checkpoint
    from components.vpgc.config import load_config
    from components.vpgc.generation import GenerationSettings
    from components.vpgc.model import VPGCModel
    from components.vpgc.prompts import Turn

    if not args.question and not args.interactive:
        raise UserError("give a question, or --interactive to type several")
    for image in args.image:
        if not Path(image).is_file():
            raise UserError(f"--image {image}: file not found")
    config = load_config(args.config)
    model = VPGCModel.from_config(config, device=args.device)
    if args.checkpoint:
        load_checkpoint(model, args.checkpoint)
    model.vpgc_enabled = config.vpgc_enabled and not args.no_vpgc
    settings = GenerationSettings(
        max_new_tokens=args.max_new_tokens or config.prompt.max_new_tokens,
        do_sample=args.sample,
        temperature=args.temperature,
        top_p=args.top_p,
        seed=args.seed,
        stop=config.prompt.stop,
    )
    conversation: list[Turn] = []
    question = args.question
    while True:
        if question is None:
            try:
                question = input("you> ").strip()
            except EOFError:
                return 0
            if question in ("", "/quit", "/exit"):
                return 0
        # the first turn shows every image; later turns may show image k again by writing {image#k}
        parts = question_parts(question, args.image, first_turn=not conversation)
        conversation.append(Turn(user=parts))
        reply = model.generate([conversation], settings=settings)[0]
        conversation[-1].assistant = reply
        print(f"model> {reply}" if args.interactive else reply, flush=True)
        if not args.interactive:
            return 0
        question = None
