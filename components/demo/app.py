"""The page: Gradio Blocks with a Chat tab and a Results tab, and `serve`, which binds it to one address.

Every handler turns a failure into a message in its tab's status line and leaves the page and the server running:
a `UserError` says what to fix; anything else (a checkpoint whose weights do not load, a model that fails) is
named in one line there and logged in full on the server. Gradio serves only files of its own upload and output
cache (no `allowed_paths`): uploads are checked before use and every image the page shows was decoded by us.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import gradio as gr
import pandas as pd
from PIL import Image

from components.demo import results as res
from components.demo.chat import (
    Engine,
    Limits,
    Reply,
    add_turn,
    check_images,
    describe_decoding,
    new_conversations,
    user_turn,
)
from components.demo.maps import ImageMaps, overlays
from components.errors import UserError
from components.evaluation.adapters import first_line
from components.evaluation.scorers import SCORERS
from components.vpgc.generation import GenerationSettings
from components.vpgc.prompts import Conversation

logger = logging.getLogger(__name__)
SIDES = {True: "VPG-C on", False: "VPG-C off"}


@dataclass(frozen=True)
class Options:
    """What `demonlab demo` was started with."""

    model: str  # the spec selected when the page opens
    models: list[str]  # suggestions: the pipeline's checkpoints, the experiment configs
    bundles: list[str]  # suggestions: bundles under the evaluation output
    mlflow_ui: str = "http://127.0.0.1:5000"
    limits: Limits = Limits()
    max_new_tokens: int = 64


@dataclass
class ChatState:
    """One browser session's conversation: the uploads it is about, both histories and what the user typed."""

    images: list[str] = field(default_factory=list)
    conversations: dict[bool, Conversation] = field(default_factory=new_conversations)
    asked: list[str] = field(default_factory=list)


@dataclass
class ResultsState:
    a: res.Bundle | None = None
    b: res.Bundle | None = None


def failure(error: Exception) -> str:
    """The status line for a failed action."""
    if isinstance(error, UserError):
        return f"**Error:** {error}"
    logger.exception("demo action failed")
    return f"**Error:** {type(error).__name__}: {first_line(error)} (the server log has the details)"


# ------------------------------------------------------------------------------------------------------- chat


def history(state: ChatState, vpgc: bool) -> list[dict[str, str]]:
    """One side's messages for a Chatbot: what the user typed, what that side answered."""
    turns = state.conversations[vpgc]
    return [
        message
        for typed, turn in zip(state.asked, turns, strict=True)
        for message in ({"role": "user", "content": typed}, {"role": "assistant", "content": turn.assistant})
    ]


def timing_markdown(spec: str, decoding: GenerationSettings, replies: dict[bool, Reply]) -> str:
    on, off = replies[True], replies[False]
    rows = [
        ("prompt tokens (visual included)", "prompt_tokens", "{}"),
        ("new tokens", "new_tokens", "{}"),
        ("prefill", "prefill_s", "{:.2f} s"),
        ("decode", "decode_s", "{:.2f} s"),
        ("total (images read and encoded too)", "total_s", "{:.2f} s"),
    ]
    lines = [f"`{spec}`, {describe_decoding(decoding)}", "", "| | VPG-C on | VPG-C off |", "|---|---:|---:|"]
    lines += [
        f"| {name} | {fmt.format(getattr(on, key))} | {fmt.format(getattr(off, key))} |" for name, key, fmt in rows
    ]
    return "\n".join(lines)


def attention_gallery(maps: list[ImageMaps]) -> list[tuple[Image.Image, str]]:
    shown = []
    for image in maps:
        first, guided = overlays(image)
        shown += [
            (first, f"{image.label}: VPG first pass"),
            (guided, f"{image.label}: VPG-C re-extraction ({100 * image.moved:.1f}% moved)"),
        ]
    return shown


def build_chat(engine: Engine, options: Options) -> None:
    state = gr.State(ChatState())
    with gr.Row():
        with gr.Column(scale=1):
            model = gr.Dropdown(
                options.models,
                value=options.model,
                allow_custom_value=True,
                elem_id="model",
                label="Model: a checkpoint folder, models:/<name>@<alias> or experiments/<name>.yaml",
            )
            load = gr.Button("Load model", elem_id="load-model")
            model_info = gr.Markdown(elem_id="model-info")
            uploads = gr.File(
                file_count="multiple",
                allow_reordering=True,
                type="filepath",
                elem_id="images",
                label=f"Images (1-{options.limits.max_images}); drag to reorder: the k-th is {{image#k}}",
            )
            preview = gr.Gallery(label="Numbered as the model gets them", columns=4, height=220, elem_id="preview")
            with gr.Accordion("Decoding", open=False):
                max_new_tokens = gr.Slider(1, 512, value=options.max_new_tokens, step=1, label="max new tokens")
                sample = gr.Checkbox(False, label="sample (top-p) instead of greedy")
                temperature = gr.Slider(0.05, 2.0, value=1.0, step=0.05, label="temperature")
                top_p = gr.Slider(0.05, 1.0, value=0.9, step=0.05, label="top-p")
                seed = gr.Number(0, precision=0, label="seed")
        with gr.Column(scale=2):
            with gr.Row():
                # Plain text: a model's reply is shown as written (rendered as markdown/HTML, "<Img>" vanished)
                chat_on = gr.Chatbot(label=SIDES[True], elem_id="chat-on", height=320, render_markdown=False)
                chat_off = gr.Chatbot(label=f"{SIDES[False]} (the backbone alone)", elem_id="chat-off", height=320,
                                      render_markdown=False)  # fmt: skip
            instruction = gr.Textbox(
                label="Instruction",
                lines=2,
                elem_id="instruction",
                placeholder="What is different between {image#1} and {image#2}?",
            )
            with gr.Row():
                ask = gr.Button("Ask both", variant="primary", elem_id="ask")
                clear = gr.Button("New conversation", elem_id="clear")
            status = gr.Markdown(elem_id="chat-status")
            details = gr.Markdown(elem_id="chat-details")
            with gr.Accordion("The prompt exactly as each side's model saw it", open=False):
                prompt_on = gr.Textbox(label=SIDES[True], lines=4, elem_id="prompt-on")
                prompt_off = gr.Textbox(label=SIDES[False], lines=4, elem_id="prompt-off")
            gr.Markdown(
                "**What the model looked at**: the VPG's cross-attention over each image with its own queries "
                "(first pass) and with VPG-C's queries guided by the instruction (re-extraction), one colour "
                "scale per image; identical while VPG-C's Linear_1 is zero."
            )
            attention = gr.Gallery(columns=4, height=360, elem_id="attention", label="Attention overlays")

    conversation_outputs = [state, chat_on, chat_off, details, prompt_on, prompt_off, attention]

    def fresh(images: list[str]) -> list[Any]:
        return [ChatState(images=images), [], [], "", "", "", []]

    def on_upload(paths: list[str] | None) -> dict:
        try:
            images = check_images(paths, options.limits) if paths else []
        except UserError as error:
            return dict(zip(conversation_outputs, fresh([]), strict=True)) | {preview: [], status: failure(error)}
        numbered = [(path, f"{{image#{k}}}") for k, path in enumerate(images, 1)]
        note = f"{len(images)} image(s); a new conversation starts" if images else ""
        return dict(zip(conversation_outputs, fresh(images), strict=True)) | {preview: numbered, status: note}

    def on_load(spec: str) -> dict:
        try:
            return {model_info: engine.load(spec), status: ""}
        except Exception as error:  # any load failure is reported in the page; the server keeps serving
            return {model_info: "", status: failure(error)}

    def on_ask(
        spec: str,
        paths: list[str] | None,
        text: str,
        tokens: float,
        do_sample: bool,
        temp: float,
        p: float,
        seed_value: float,
        chat: ChatState,
    ) -> dict:
        try:
            images = check_images(paths or [], options.limits)
            if images != chat.images:  # uploads changed without a change event reaching us: start over
                chat = ChatState(images=images)
            parts = user_turn(text, images, first_turn=not chat.asked)
            decoding = GenerationSettings(int(tokens), bool(do_sample), float(temp), float(p), int(seed_value or 0))
            conversations = add_turn(chat.conversations, parts)
            replies, maps = engine.ask(spec, conversations, decoding)
            overlaid = attention_gallery(maps)
        except Exception as error:  # bad input or a model that fails: a message, the conversation unchanged
            return {status: failure(error)}
        for vpgc, reply in replies.items():
            conversations[vpgc][-1].assistant = reply.text
        chat = ChatState(images, conversations, [*chat.asked, text])
        return {
            state: chat,
            chat_on: history(chat, True),
            chat_off: history(chat, False),
            instruction: "",
            details: timing_markdown(spec, decoding, replies),
            prompt_on: replies[True].prompt,
            prompt_off: replies[False].prompt,
            attention: overlaid,
            model_info: engine.description,
            status: "",
        }

    ask_inputs = [model, uploads, instruction, max_new_tokens, sample, temperature, top_p, seed, state]
    ask_outputs = [*conversation_outputs, instruction, model_info, status]
    ask.click(on_ask, ask_inputs, ask_outputs)
    instruction.submit(on_ask, ask_inputs, ask_outputs)
    uploads.change(on_upload, [uploads], [*conversation_outputs, preview, status])
    load.click(on_load, [model], [model_info, status])
    clear.click(lambda chat: fresh(chat.images), [state], conversation_outputs)


# ---------------------------------------------------------------------------------------------------- results


def bundle_summary(name: str, bundle: res.Bundle) -> str:
    overall = {r["scorer"]: r for r in bundle.results.get("intervals", []) if r["level"] == "overall"}
    scores = ", ".join(
        f"{scorer} {r['score']:.1f}" + ("" if r["ci_low"] is None else f" [{r['ci_low']:.1f}, {r['ci_high']:.1f}]")
        for scorer, r in sorted(overall.items())
    )
    lines = [f"**{name}: {bundle.label}** ({bundle.folder}, {len(bundle.rows)} samples; overall {scores})"]
    return "\n\n".join(line for line in (*lines, bundle.mlflow, bundle.note) if line)


def build_results(options: Options) -> None:
    state = gr.State(ResultsState())
    with gr.Row():
        folder_a = gr.Dropdown(
            options.bundles,
            value=None,
            allow_custom_value=True,
            elem_id="bundle-a",
            label="Bundle A (a folder with results.json + samples.jsonl)",
        )
        folder_b = gr.Dropdown(
            options.bundles,
            value=None,
            allow_custom_value=True,
            elem_id="bundle-b",
            label="Bundle B (optional: compare with A)",
        )
        open_button = gr.Button("Open", variant="primary", elem_id="open-bundles", scale=0)
    status = gr.Markdown(elem_id="results-status")
    summary = gr.Markdown(elem_id="results-summary")
    with gr.Row():
        scorer = gr.Radio(list(SCORERS), value=SCORERS[0], label="scorer", elem_id="scorer")
        category = gr.Dropdown([res.ALL], value=res.ALL, label="category", elem_id="category-filter")
        task = gr.Dropdown([res.ALL], value=res.ALL, label="task", elem_id="task-filter")
        low = gr.Number(0, label="A's score from", elem_id="score-low")
        high = gr.Number(100, label="to", elem_id="score-high")
        sort = gr.Dropdown(list(res.SORTS), value=res.SORTS[0], label="sort", elem_id="sort")
    table = gr.Dataframe(interactive=False, elem_id="results-table", max_height=360, wrap=True)
    sample = gr.Dropdown([], label="Sample (or pick a row)", elem_id="sample")
    with gr.Row():
        images = gr.Gallery(columns=4, height=300, label="Images", elem_id="sample-images")
        details = gr.Markdown(elem_id="sample-details")

    filters = [scorer, category, task, low, high, sort]

    def rows(
        bundles: ResultsState,
        scorer_name: str,
        category_name: str,
        task_name: str,
        low_score: float,
        high_score: float,
        sort_name: str,
    ) -> dict:
        if bundles.a is None:
            return {status: ""}
        try:
            frame = res.table(
                bundles.a,
                bundles.b,
                scorer_name,
                category_name,
                task_name,
                (float(low_score or 0), float(100 if high_score is None else high_score)),
                sort_name,
            )
        except UserError as error:
            return {status: failure(error)}
        uids = frame["uid"].tolist()
        return {
            table: frame,
            sample: gr.update(choices=uids, value=uids[0] if uids else None),
            status: f"{len(uids)} sample(s)",
        }

    def on_open(path_a: str | None, path_b: str | None, *filter_values: Any) -> dict:
        try:
            if not path_a:
                raise UserError("pick bundle A (a folder with results.json + samples.jsonl)")
            opened = ResultsState(
                res.open_bundle(path_a, options.mlflow_ui),
                res.open_bundle(path_b, options.mlflow_ui) if path_b else None,
            )
        except Exception as error:  # a folder that is not a bundle, an unreadable file: say so, keep serving
            return {status: failure(error)}
        categories, tasks = res.choices(opened.a)
        texts = [bundle_summary("A", opened.a)] + ([bundle_summary("B", opened.b)] if opened.b else [])
        reset = {
            state: opened,
            summary: "\n\n".join(texts),
            category: gr.update(choices=[res.ALL, *categories], value=res.ALL),
            task: gr.update(choices=[res.ALL, *tasks], value=res.ALL),
        }
        return reset | rows(opened, filter_values[0], res.ALL, res.ALL, *filter_values[3:])

    def on_sample(bundles: ResultsState, uid: str | None) -> dict:
        if bundles.a is None or not uid:
            return {images: [], details: ""}
        try:
            return {images: res.sample_images(bundles.a, uid), details: res.sample_markdown(bundles.a, bundles.b, uid)}
        except Exception as error:  # e.g. an image path leaving the dataset root: refused, said so
            return {images: [], details: "", status: failure(error)}

    def on_select(frame: pd.DataFrame, event: gr.SelectData) -> str:
        return frame.iloc[event.index[0]]["uid"]

    table_outputs = [table, sample, status]
    open_button.click(on_open, [folder_a, folder_b, *filters], [state, summary, category, task, *table_outputs])
    for control in filters:
        control.change(rows, [state, *filters], table_outputs)
    table.select(on_select, [table], [sample])
    sample.change(on_sample, [state, sample], [images, details, status])


# ------------------------------------------------------------------------------------------------------ serve


def build(engine: Engine, options: Options) -> gr.Blocks:
    with gr.Blocks(title="demonlab demo: VPG-C") as page:
        gr.Markdown("## demonlab demo: VPG-C on DEMON")
        with gr.Tab("Chat", id="chat"):
            build_chat(engine, options)
        with gr.Tab("Results", id="results"):
            build_results(options)
    return page


def serve(engine: Engine, options: Options, host: str, port: int) -> None:
    """Serve the page on host:port until interrupted (one request at a time per action)."""
    page = build(engine, options)
    page.queue(default_concurrency_limit=1)
    # Gradio's own size cap stops a huge upload before it is written; the checks in chat.py give the message.
    try:
        page.launch(
            server_name=host,
            server_port=port,
            ssr_mode=False,
            mcp_server=False,
            quiet=True,
            max_file_size=2 * options.limits.max_bytes,
        )
    finally:
        page.close()  # a stop signal (components.runtime.lifetime.Stopped) ends launch's loop here: free the port first
