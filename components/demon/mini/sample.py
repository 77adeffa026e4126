"""What a task generator returns, what it is given, and the small text helpers every task family shares."""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from PIL import Image

Picture = tuple[Image.Image, str]  # an image and the file format it is written in ("jpg" | "png")
TRUE_FALSE = ("True", "False")


@dataclass
class Sample:
    """One instruction before it is written: `images` in `{image#k}` order (1-based)."""

    context: str
    images: list[Picture]
    response: str | int
    choice_list: list[str] | None = None
    instruction_id: int | None = None  # set only where the generator must pick the template itself


@dataclass
class Ctx:
    rng: random.Random
    template_id: int  # drawn uniformly by the writer; some tasks ask different questions per template group
    templates: tuple[str, ...]  # the task's instruction templates, for generators that read the question
    sample_id: int
    ext: str  # the task's image format, as its README example has it

    def pic(self, im: Image.Image) -> Picture:
        return im, self.ext


Generator = Callable[[Ctx], Sample]
TaskTable = dict[str, tuple[Generator, str]]  # folder -> (generator, image format)


def choices(items: Sequence[str], sep: str = ", ") -> str:
    """A choice list as the README examples print it: `['a', 'b']` (TQA, Fashion200K, NLVR2 use `,`)."""
    return "[" + sep.join(f"'{item}'" for item in items) + "]"


def a(noun: str) -> str:
    """The noun with its indefinite article: "a red star", "an orange star"."""
    return f"{'an' if noun[0] in 'aeiou' else 'a'} {noun}"


def letters(n: int) -> list[str]:
    return [f"Image {chr(ord('A') + i)}" for i in range(n)]


def other(rng: random.Random, pool: Sequence[str], *exclude: str) -> str:
    return rng.choice([x for x in pool if x not in exclude])


def true_false(truth: bool) -> str:
    return TRUE_FALSE[0] if truth else TRUE_FALSE[1]


def say(rng: random.Random, phrasings: Sequence[str], **slots: str) -> str:
    """One of several phrasings of the same fact: real answers vary, so a template-copying guess must not score."""
    return rng.choice(phrasings).format(**slots)


def image_options(first: int) -> str:
    """The inline list of four image options, `{image#first}` onwards, as the RecipeQA README examples print it."""
    return "[" + ", ".join(f"'{x}: {{image#{first + i}}}'" for i, x in enumerate(letters(4))) + "]"
