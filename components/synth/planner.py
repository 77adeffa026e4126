"""The edit description (paper section 2, step 5): which change to make to the chosen object, and the sentence
that states it (the training target).

The pipeline picks the edit type from the configured mix; the planner fills in the details from the editor's
`Options` (what that editor can actually do) and writes the sentence:
- `TemplatePlanner`: deterministic templates, the offline default;
- `TransformersPlanner`: any local instruct LLM through transformers (the embedded SmolLM2 included);
- `OpenAIPlanner`: an OpenAI-compatible endpoint (`POST <base_url>/v1/chat/completions`), the paper's ChatGPT.
LLM replies must be one JSON object; a reply that is not, or that picks something the editor cannot do, rejects
the edit with the reason. The prompt and the raw reply are kept with every edit (edits.jsonl).
"""

from __future__ import annotations

import json
import os
import random
import re
import time
from dataclasses import dataclass, field
from typing import Any

from components.errors import UserError
from components.security import redact
from components.synth.config import PlannerConfig
from components.synth.regions import Region
from components.synth.scenes import article, at
from components.synth.sources import Item

DEFINITIONS = {
    "modify": "change the colour of the object",
    "swap": "replace the object by a different object in the same place",
    "delete": "remove the object, leaving only background where it was",
    "add": "add a new object onto an empty background area",
}
# The synthetic world's own answer phrasings (none is a DEMON answer; tests/test_synth_separation.py checks).
SENTENCES = {
    "modify": (
        "In the second picture the {target} {at} is {color} instead.",
        "The {target} {at} has become {color}.",
        "The {kind} {at} is {color} now, no longer {old}.",
    ),
    "swap": (
        "In place of the {target} {at} there is now {new}.",
        "The {target} {at} turned into {new}.",
        "{New} took the place of the {target} {at}.",
    ),
    "delete": (
        "The {target} {at} no longer appears.",
        "The second picture lacks the {target} {at}.",
        "The {target} that stood {at} has vanished.",
    ),
    "add": (
        "{New} now appears {place_at}.",
        "The second picture has an extra {new_bare} {place_at}.",
        "{New} has been placed {place_at}.",
    ),
}
# What a template plan may put in a picture when the editor takes free text (diffusion) and no LLM is configured.
FREE_OBJECTS = (
    "red ball",
    "potted plant",
    "small dog",
    "blue vase",
    "yellow umbrella",
    "stack of books",
    "cat",
    "bicycle",
    "wooden chair",
    "green bottle",
)
SYSTEM_PROMPT = (
    "You plan one local edit of a photo for a dataset that teaches a model to describe the difference between "
    "two images. Reply with one JSON object and nothing else."
)


class PlanError(Exception):
    """The planner could not produce a usable edit; `code` groups the reasons in the report."""

    def __init__(self, code: str, reason: str, prompt: str = "", reply: str = "") -> None:
        super().__init__(reason)
        self.code, self.prompt, self.reply = code, prompt, reply


@dataclass
class Options:
    """What the editor can do for one edit: the values a plan may choose from."""

    colors: list[str]  # modify: new colours
    objects: list[str] | None  # swap/add: what may appear; None = any short noun phrase (text-driven inpainting)
    places: list[str]  # add: zones with room on background


@dataclass
class EditPlan:
    """One edit, as the editor applies it and the sample states it."""

    type: str
    target: Region | None  # None for add
    sentence: str
    color: str | None = None  # modify
    new_object: str | None = None  # swap, add
    place: str | None = None  # add: a zone name
    prompt: str = ""  # what the planner was asked ("template" for the template planner)
    reply: str = ""  # its raw reply
    details: dict[str, Any] = field(default_factory=dict)  # what the editor did (pasted from, location, ...)

    def record(self) -> dict[str, Any]:
        return {
            "type": self.type,
            "target": self.target.summary() if self.target is not None else None,
            "color": self.color,
            "new_object": self.new_object,
            "place": self.place,
            "sentence": self.sentence,
            "planner_prompt": self.prompt,
            "planner_reply": self.reply,
            "editor": self.details,
        }


def write_sentence(plan: EditPlan, rng: random.Random) -> str:
    target = plan.target
    new = article(plan.new_object) if plan.new_object else ""
    values = {
        "target": target.name if target else "",
        "kind": target.kind if target else "",
        "old": target.color if target else "",
        "at": at(target.where) if target else "",
        "color": plan.color,
        "new": new,
        "New": new[:1].upper() + new[1:],
        "new_bare": plan.new_object,
        "place_at": at(plan.place) if plan.place else "",
    }
    return rng.choice(SENTENCES[plan.type]).format(**values)


def check_choices(edit_type: str, target: Region | None, options: Options) -> None:
    """`PlanError` when the editor offers nothing for this edit (e.g. no background room to add onto)."""
    if edit_type == "modify" and not options.colors:
        raise PlanError("no_option", "no colour left to recolour the object to")
    if edit_type in ("swap", "add") and options.objects is not None and not options.objects:
        raise PlanError("no_option", f"no object available to {edit_type}")
    if edit_type == "add" and not options.places:
        raise PlanError("no_option", "no background area large enough to add an object onto")
    if edit_type != "add" and target is None:
        raise PlanError("no_option", f"a {edit_type} edit needs a target object")


class TemplatePlanner:
    def plan(self, item: Item, edit_type: str, target: Region | None, options: Options, rng: random.Random) -> EditPlan:
        check_choices(edit_type, target, options)
        plan = EditPlan(edit_type, None if edit_type == "add" else target, "", prompt="template")
        if edit_type == "modify":
            plan.color = rng.choice(options.colors)
        elif edit_type in ("swap", "add"):
            plan.new_object = rng.choice(options.objects if options.objects is not None else FREE_OBJECTS)
            if edit_type == "add":
                plan.place = rng.choice(options.places)
        plan.sentence = write_sentence(plan, rng)
        return plan


def llm_prompt(item: Item, edit_type: str, target: Region | None, options: Options) -> str:
    lines = [f'Caption of the original image: "{item.caption}"', f"Edit type: {edit_type} ({DEFINITIONS[edit_type]})."]
    if target is not None and edit_type != "add":
        lines.append(
            f"Object to edit: the {target.name} {at(target.where)} (it covers {target.area:.0%} of the image)."
        )
    if edit_type == "modify":
        lines.append(f'Set "color" to one of: {", ".join(options.colors)}.')
    if edit_type in ("swap", "add"):
        lines.append(
            'Set "new_object" to a short noun phrase for an object that fits the caption.'
            if options.objects is None
            else f'Set "new_object" to one of: {", ".join(options.objects)}.'
        )
    if edit_type == "add":
        lines.append(f'Set "place" to one of: {", ".join(options.places)}.')
    lines.append(
        'Reply with JSON only: {"color": ..., "new_object": ..., "place": ..., "sentence": "<one sentence stating '
        'what differs between the original and the edited image>"} (null for fields this edit does not use).'
    )
    return "\n".join(lines)


def parse_reply(reply: str, edit_type: str, target: Region | None, options: Options) -> EditPlan:
    """The JSON object in an LLM reply -> a plan the editor can apply; `PlanError` naming what is wrong."""
    match = re.search(r"\{.*\}", reply, re.DOTALL)
    try:
        data = json.loads(match.group(0)) if match else None
    except json.JSONDecodeError:
        data = None
    if not isinstance(data, dict):
        raise PlanError("planner_unusable", f"the reply holds no JSON object: {reply[:120]!r}")
    sentence = data.get("sentence")
    if not isinstance(sentence, str) or not sentence.strip() or len(sentence) > 400:
        raise PlanError("planner_unusable", "the reply has no usable `sentence`")
    sentence = " ".join(sentence.split())
    plan = EditPlan(
        edit_type, None if edit_type == "add" else target, sentence if sentence[-1] in ".!" else sentence + "."
    )

    def pick(key: str, allowed: list[str] | None) -> str:
        value = data.get(key)
        if not isinstance(value, str) or not value.strip():
            raise PlanError("planner_unusable", f"the reply has no `{key}` for a {edit_type} edit")
        value = value.strip().lower()
        if allowed is not None and value not in allowed:
            raise PlanError("planner_unusable", f"`{key}` {value!r} is not one of {allowed}")
        return value

    if edit_type == "modify":
        plan.color = pick("color", options.colors)
    if edit_type in ("swap", "add"):
        plan.new_object = pick("new_object", options.objects)
    if edit_type == "add":
        plan.place = pick("place", options.places)
    return plan


class LLMPlanner:
    """Shared by the LLM planners: prompt, ask (`complete`, per backend), parse, keep prompt and reply."""

    def complete(self, system: str, user: str, seed: int) -> str:
        raise NotImplementedError

    def plan(self, item: Item, edit_type: str, target: Region | None, options: Options, rng: random.Random) -> EditPlan:
        check_choices(edit_type, target, options)
        prompt = llm_prompt(item, edit_type, target, options)
        reply = self.complete(SYSTEM_PROMPT, prompt, rng.randrange(2**31))
        try:
            plan = parse_reply(reply, edit_type, target, options)
        except PlanError as error:
            raise PlanError(error.code, str(error), prompt, reply) from None
        plan.prompt, plan.reply = prompt, reply
        return plan


class TransformersPlanner(LLMPlanner):
    """A local instruct model; `model` takes what `model.llm.source` takes (folder, hub id, .gguf, package:)."""

    def __init__(self, config: PlannerConfig) -> None:
        from components.vpgc.backbones import build_llm, load_tokenizer
        from components.vpgc.config import LLMConfig

        self.config = config
        llm = LLMConfig(arch={}, source=config.model)
        self.model = build_llm(llm).to(config.device).eval()
        self.tokenizer = load_tokenizer(llm)

    def complete(self, system: str, user: str, seed: int) -> str:
        import torch

        messages = [{"role": "system", "content": system}, {"role": "user", "content": user}]
        if self.tokenizer.chat_template:
            text = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        else:
            text = f"{system}\n\n{user}\n\n"
        inputs = self.tokenizer(text, return_tensors="pt", add_special_tokens=False).to(self.config.device)
        sample = self.config.temperature > 0
        with torch.random.fork_rng(), torch.no_grad():  # sampling seeded per edit, global RNG left alone
            torch.manual_seed(seed)
            output = self.model.generate(
                **inputs,
                max_new_tokens=self.config.max_new_tokens,
                do_sample=sample,
                temperature=self.config.temperature if sample else None,
                top_p=None,
                top_k=None,
                pad_token_id=self.tokenizer.pad_token_id,
            )
        return self.tokenizer.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)


class OpenAIPlanner(LLMPlanner):
    """Plain HTTP to an OpenAI-compatible server (OpenAI, vLLM, llama.cpp, ...). The API key is read from the
    environment variable named by `api_key_env` and only ever put in the Authorization header."""

    def __init__(self, config: PlannerConfig) -> None:
        self.config = config
        self.url = re.sub(r"/(v1/?)?$", "", config.base_url.rstrip("/")) + "/v1/chat/completions"
        self.key: str | None = None
        if config.api_key_env:
            self.key = os.environ.get(config.api_key_env)
            if not self.key:
                raise UserError(
                    f"synth.planner.api_key_env: environment variable {config.api_key_env} is not set; export it "
                    "with the endpoint's API key (the key itself never goes into a config file)"
                )

    def complete(self, system: str, user: str, seed: int) -> str:
        import requests

        body = {
            "model": self.config.model,
            "messages": [{"role": "system", "content": system}, {"role": "user", "content": user}],
            "temperature": self.config.temperature,
            "max_tokens": self.config.max_new_tokens,
            "seed": seed,
        }
        headers = {"Authorization": f"Bearer {self.key}"} if self.key else {}
        problem = ""
        for attempt in range(3):
            try:
                response = requests.post(self.url, json=body, headers=headers, timeout=self.config.timeout_s)
            except requests.RequestException as error:
                problem = f"{type(error).__name__} talking to {redact(self.url)}"
            else:
                if response.status_code == 200:
                    try:
                        return response.json()["choices"][0]["message"]["content"] or ""
                    except (ValueError, KeyError, IndexError, TypeError):
                        raise PlanError(
                            "planner_error", f"{redact(self.url)} answered 200 without a chat completion"
                        ) from None
                problem = f"HTTP {response.status_code} from {redact(self.url)}: {redact(response.text[:200])}"
                if response.status_code < 500 and response.status_code != 429:
                    break  # a client error does not go away by asking again
            time.sleep(0.5 * 2**attempt)
        raise PlanError("planner_error", problem)


Planner = TemplatePlanner | TransformersPlanner | OpenAIPlanner


def build_planner(config: PlannerConfig) -> Planner:
    if config.kind == "template":
        return TemplatePlanner()
    if config.kind == "transformers":
        return TransformersPlanner(config)
    return OpenAIPlanner(config)
