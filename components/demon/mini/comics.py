"""Multimodal Cloze, comics: COMICS_Dialogue (the masked line) and COMICS_Panel (the next panel)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from PIL import Image, ImageDraw

from components.demon.mini.dialogue import PEOPLE
from components.demon.mini.draw import BLACK, SIDE, WHITE, Obj, font, objs, scene, wrap
from components.demon.mini.sample import Ctx, Sample, TaskTable, a, choices, letters, other
from components.demon.vocabulary import COLORS, PALETTE, SHAPES, draw_shape

SMALL_TALK = ("what a nice day !", "let us go outside .", "did you hear that ?", "i am so hungry .",
              "wait for me !", "this is our chance .", "hurry up , we are late !", "who is there ?")  # fmt: skip
EXCLAIM = ("look , {a} !", "where did that {n} come from ?", "be careful with the {n} !", "i found {a} !")


def _panel(cast: Sequence[Obj], labels: Sequence[str | None] | None, bubble: str | None) -> Image.Image:
    """A comic panel: black frame, characters, and a speech bubble (text, or grey when masked)."""
    im = scene([replace(o, cell=o.cell % 3 + 3) for o in cast], bg=(250, 245, 225), labels=labels)
    draw = ImageDraw.Draw(im)
    draw.rounded_rectangle((10, 10, SIDE - 10, 58), radius=12, fill=WHITE if bubble else (150, 150, 150),
                           outline=BLACK, width=2)  # fmt: skip
    if bubble:
        for i, line in enumerate(wrap(bubble, font(11), SIDE - 36)[:3]):
            draw.text((18, 15 + 13 * i), line, fill=BLACK, font=font(11))
    draw.rectangle((0, 0, SIDE - 1, SIDE - 1), outline=BLACK, width=4)
    return im


def comics_dialogue(c: Ctx) -> Sample:
    """The masked last panel shows a new object; the right line names it, the others name absent objects."""
    rng = c.rng
    n = rng.randint(3, 5)
    hero, friend = objs(rng, 2, cells=range(3))
    names = rng.sample(PEOPLE, 2)
    labels = [p.split()[0] for p in names]
    kinds = [(s, k) for s in SHAPES for k in COLORS if k not in (hero.color, friend.color)]
    prop_shape, prop_color = rng.choice(kinds)
    prop = Obj(prop_shape, prop_color, ({0, 1, 2} - {hero.cell, friend.cell}).pop(), "small")
    lines = rng.sample(SMALL_TALK, n - 1)
    images = [c.pic(_panel([hero, friend], labels, line)) for line in lines]
    images.append(c.pic(_panel([hero, friend, prop], [*labels, None], None)))
    others = rng.sample([k for k in kinds if k != (prop_shape, prop_color)], 3)
    phrases = rng.sample(EXCLAIM, 4)
    nouns = [prop.noun()] + [f"{k} {s}" for s, k in others]
    options = [p.format(a=a(noun), n=noun) for p, noun in zip(phrases, nouns, strict=True)]
    answer = options[0]
    rng.shuffle(options)
    context = "".join(f"{{image#{k}}}" for k in range(1, n + 1)) + f"Choice List:{choices(options)}Your answer is: "
    return Sample(context, images, answer, options)


def _walker(obj: Obj, slot: int) -> Image.Image:
    """A comic panel with a character on the ground at one of six slots from left to right."""
    im = Image.new("RGB", (SIDE, SIDE), (250, 245, 225))
    draw = ImageDraw.Draw(im)
    draw.rectangle((0, 118, SIDE, SIDE), fill=(150, 200, 120))
    draw_shape(draw, obj.shape, (18 + slot * 25, 100), 14, PALETTE[obj.color])
    draw.rectangle((0, 0, SIDE - 1, SIDE - 1), outline=BLACK, width=4)
    return im


def comics_panel(c: Ctx) -> Sample:
    """Three panels walk a character one slot right each time; the next panel takes the next step."""
    rng = c.rng
    (hero,) = objs(rng, 1)
    start = rng.randint(0, 2)
    story = [c.pic(_walker(hero, start + k)) for k in range(3)]
    nxt = start + 3
    candidates = [
        _walker(hero, nxt),
        _walker(hero, start + 1),  # steps back
        _walker(replace(hero, color=other(rng, COLORS, hero.color)), nxt),
        _walker(replace(hero, shape=other(rng, SHAPES, hero.shape)), nxt),
    ]
    order = rng.sample(range(4), 4)
    labels = letters(4)
    # The README example's spacing, verbatim: "['Image A: {image#4} ', ' Image B: {image#5} ', ...]"
    inline = ", ".join(f"'{' ' if i else ''}{labels[i]}: {{image#{4 + i}}} '" for i in range(4))
    context = f"{{image#1}}{{image#2}}{{image#3}}Choice List:[{inline}]Your answer is: "
    images = story + [c.pic(candidates[j]) for j in order]
    return Sample(context, images, labels[order.index(0)], labels)


TASKS: TaskTable = {
    "COMICS_Dialogue": (comics_dialogue, "jpg"),
    "COMICS_Panel": (comics_panel, "jpg"),
}
