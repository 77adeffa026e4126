"""Visual Relation Inference: Spot-the-Diff, CLEVR-Change, IEdit (one scene before and after a change) and
Birds-to-Words (two birds whose parts differ in colour).

Each answer names what is specific to the pair (which object, where, what became of it) in one of several
phrasings per kind of change, in varied order: the task's wording alone gives a guess little ROUGE-L.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import replace

from PIL import Image, ImageDraw

from components.demon.mini.draw import BLACK, CELL_PHRASES, SIDE, SIZE_WORDS, Obj, objs, scene
from components.demon.mini.sample import Ctx, Sample, TaskTable, a, other, say
from components.demon.vocabulary import COLORS, PALETTE, SHAPES

# Where each part of a Birds-to-Words bird is drawn (x, y on a SIDE x SIDE image): a point well inside it.
BIRD_PART_POINTS: dict[str, tuple[int, int]] = {
    "head": (112, 62),
    "beak": (138, 62),
    "wings": (82, 100),
    "belly": (58, 120),
    "tail": (20, 100),
}


def change(
    rng: random.Random, before: list[Obj], kinds: Sequence[str], touched: Sequence[Obj] = ()
) -> tuple[list[Obj], str, Obj, Obj]:
    """Apply one change to a scene, leaving `touched` objects alone. Returns (objects after, kind, the object
    before, the object after); for "add" both are the new object, for "remove" both the removed one."""
    kind = rng.choice(kinds)
    free = [k for k in range(9) if k not in {o.cell for o in before}]
    unused = [k for k in COLORS if k not in {o.color for o in before}]  # colours stay unique in a scene
    if kind == "add":
        new = Obj(rng.choice(SHAPES), rng.choice(unused), rng.choice(free), rng.choice(("large", "small")))
        return [*before, new], kind, new, new
    old = rng.choice([o for o in before if o not in touched])
    rest = [o for o in before if o != old]
    if kind == "remove":
        return rest, kind, old, old
    new = replace(old, cell=rng.choice(free)) if kind == "move" else replace(old, color=rng.choice(unused))
    return [*rest, new], kind, old, new


def slots(rng: random.Random, old: Obj, new: Obj) -> dict[str, str]:
    """The words a phrasing may use: n(oun), o (sized noun), an (with article), c(olour), s(hape), sz, w(here), w2,
    new (colour); places and sizes each in one of their several wordings."""
    sz = rng.choice(SIZE_WORDS[old.size])
    w, w2 = (rng.choice(CELL_PHRASES[o.cell]) for o in (old, new))
    return {"n": old.noun(), "o": f"{sz} {old.noun()}", "an": a(old.noun()), "c": old.color, "s": old.shape,
            "sz": sz, "w": w, "w2": w2, "new": new.color}  # fmt: skip


# Surveillance-camera notes (Spot-the-Diff): terse, lower case, one clause per change.
SPOT = {
    "add": (
        "there is a new {n} at {w}",
        "{an} appeared in {w}",
        "someone put {an} {w}",
        "{n} added near {w}",
        "now {an} sits at {w}",
        "{o} showed up {w}",
        "extra {c} {s} by {w}",
    ),
    "remove": (
        "{n} at {w} is gone",
        "{n} in {w} has vanished",
        "no longer {an} in {w}",
        "someone took away that {n}",
        "{w} {n} now missing",
        "{o} which stood {w} was removed",
        "{c} {s} disappeared",
    ),
    "move": (
        "{n} moved from {w} to {w2}",
        "{n} is now {w2} instead of {w}",
        "{o} was shifted toward {w2}",
        "{n} went over to {w2}",
        "that {c} one left {w} for {w2}",
        "{s} relocated {w2}",
    ),
}
# CLEVR-Change: several sentences about the one change, as the crowd-sourced references have.
CLEVR = {
    "recolour": (
        "the {o} changed to {new}",
        "{sz} {s} became {new}",
        "that {c} thing turned {new}",
        "someone painted one {s} {new}",
        "{o} is {new} now instead of {c}",
        "this {sz} object now looks {new}",
        "a {c} {s} got repainted {new}",
    ),
    "add": (
        "someone added a {o}",
        "a {o} has been added",
        "there is a new {c} thing",
        "{sz} {s} appeared at {w}",
        "{w} now holds a {c} {s}",
        "one more {c} object showed up",
    ),
    "remove": (
        "the {o} has disappeared",
        "{o} is missing",
        "that {c} thing is gone",
        "someone removed a {s} from {w}",
        "{w} no longer has any {c} object",
        "{sz} {c} shape vanished",
    ),
    "move": (
        "the {o} changed its location",
        "{o} moved to {w2}",
        "that {c} thing was moved",
        "someone shifted one {sz} {s} away from {w}",
        "{s} sits at {w2} now",
        "{c} object went elsewhere",
    ),
}
# IEdit: the edit request that turns the source photo into the target.
EDIT = {
    "recolour": (
        "make the {n} {new}",
        "change color of {n} to {new}",
        "paint that {s} {new} instead of {c}",
        "turn this {c} {s} {new}",
        "recolor {w} {s} in {new}",
        "{c} {s} should become {new}",
    ),
    "add": (
        "add {an} to {w}",
        "put {an} in {w} of the photo",
        "insert a {sz} {c} {s}",
        "place {an} at {w}",
        "draw one more {s} , {c} , {w}",
        "we need another {c} shape near {w}",
    ),
    "remove": (
        "remove the {n}",
        "take {n} out of {w}",
        "delete that {c} {s}",
        "get rid of {s} at {w}",
        "erase this {c} shape",
        "{c} {s} must go",
    ),
    "move": (
        "move the {n} to {w2}",
        "shift {n} over to {w2}",
        "drag that {c} {s} from {w} to {w2}",
        "put this {s} in {w2}",
        "relocate {c} one toward {w2}",
        "{c} {s} belongs {w2}",
    ),
}


def spot_the_diff(c: Ctx) -> Sample:
    rng = c.rng
    before = objs(rng, rng.randint(3, 5), sizes=("large", "small"))
    after, notes, touched = before, [], []
    for _ in range(1 if rng.random() < 0.6 else 2):
        after, kind, old, new = change(rng, after, tuple(SPOT), touched)
        touched.append(new)
        notes.append(say(rng, SPOT[kind], **slots(rng, old, new)))
    bg = (120, 120, 125)  # asphalt seen from a surveillance camera
    return Sample(
        "{image#1}{image#2}Difference:", [c.pic(scene(before, bg)), c.pic(scene(after, bg))], ". ".join(notes)
    )


def _said(rng: random.Random, bank: dict[str, tuple[str, ...]], kind: str, old: Obj, new: Obj, n: int) -> str:
    """n different phrasings of one change, in random order, as ". "-joined sentences."""
    return ". ".join(p.format(**slots(rng, old, new)) for p in rng.sample(bank[kind], n))


def clevr_change(c: Ctx) -> Sample:
    rng = c.rng
    before = objs(rng, rng.randint(3, 6), sizes=("large", "small"))
    after, kind, old, new = change(rng, before, tuple(CLEVR))
    bg = (165, 165, 165)
    images = [c.pic(scene(before, bg)), c.pic(scene(after, bg))]
    return Sample("{image#1}{image#2}Difference:", images, _said(rng, CLEVR, kind, old, new, rng.randint(2, 3)))


def iedit(c: Ctx) -> Sample:
    rng = c.rng
    before = objs(rng, rng.randint(2, 4))
    after, kind, old, new = change(rng, before, tuple(EDIT))
    bg = (235, 225, 205)
    context = "Source Image:{image#1} Target Image:{image#2}Instruction:"
    images = [c.pic(scene(before, bg)), c.pic(scene(after, bg))]
    return Sample(context, images, _said(rng, EDIT, kind, old, new, rng.randint(1, 2)))


def _bird(colors: dict[str, str]) -> Image.Image:
    """A side-view bird facing right; the part colours are read back at BIRD_PART_POINTS."""
    im = Image.new("RGB", (SIDE, SIDE), (220, 232, 240))
    draw = ImageDraw.Draw(im)
    for x in (70, 90):  # legs
        draw.line((x, 128, x - 4, 150), fill=(60, 60, 60), width=3)
    draw.polygon([(38, 100), (10, 88), (14, 112)], fill=PALETTE[colors["tail"]])
    draw.ellipse((34, 72, 126, 138), fill=PALETTE[colors["belly"]])
    draw.ellipse((62, 82, 114, 116), fill=PALETTE[colors["wings"]])
    draw.ellipse((92, 42, 132, 82), fill=PALETTE[colors["head"]])
    draw.polygon([(128, 52), (128, 72), (154, 62)], fill=PALETTE[colors["beak"]])
    draw.ellipse((116, 50, 122, 56), fill=BLACK)  # eye
    return im


BIRDS = (("animal1", "animal2"), ("first", "second"), ("left specimen", "right specimen"),
         ("bird one", "bird two"), ("former", "latter"), ("image 1", "image 2"))  # fmt: skip
PART_WORDS = {"head": ("head", "crown"), "beak": ("beak", "bill"), "wings": ("wings", "wing feathers"),
              "belly": ("belly", "chest", "underside"), "tail": ("tail", "tail feathers")}  # fmt: skip
# One clause per differing part: {x}/{y} the birds, {p} the part, {c1}/{c2} its colours, {a1}/{a2} with article.
DIFFER = ("{x} has {a1} {p} while {y} has {a2} {p}", "{x} has {a1} {p} compared to {y} which has {a2} {p}",
          "{y} shows {a2} {p} where {x} shows {c1}", "{c1} {p} on {x} versus {c2} on {y}",
          "unlike {x} , {y} sports {a2} {p} instead of {c1}", "{p} of {x} looks {c1} but that of {y} is {c2}",
          "{x} : {c1} {p} ; {y} : {c2}", "{c2} {p} for {y}, {c1} for {x}")  # fmt: skip
SHARED = ("both have {a1} {p}", "{p} is {c1} on both", "they share {a1} {p}", "same {c1} {p}")


def birds_to_words(c: Ctx) -> Sample:
    """1-3 parts differ in colour; each difference (and sometimes one shared part) is one " . "-joined clause."""
    rng = c.rng
    first = {part: rng.choice(COLORS) for part in BIRD_PART_POINTS}
    second = dict(first)
    changed = rng.sample(list(BIRD_PART_POINTS), rng.choice((1, 1, 2)))
    for part in changed:
        second[part] = other(rng, COLORS, first[part])
    x, y = rng.choice(BIRDS)

    def clause(phrasing: str, part: str) -> str:
        article = (lambda k: k) if part == "wings" else a
        words = {"x": x, "y": y, "p": rng.choice(PART_WORDS[part]), "c1": first[part], "c2": second[part]}
        return phrasing.format(a1=article(first[part]), a2=article(second[part]), **words)

    clauses = [clause(p, part) for p, part in zip(rng.sample(DIFFER, len(changed)), changed, strict=False)]
    if rng.random() < 0.3:
        clauses.append(clause(rng.choice(SHARED), rng.choice([p for p in BIRD_PART_POINTS if p not in changed])))
    rng.shuffle(clauses)
    return Sample(
        "{image#1}{image#2}Difference:", [c.pic(_bird(first)), c.pic(_bird(second))], " . ".join(clauses) + " ."
    )


TASKS: TaskTable = {
    "Spot-the-Diff": (spot_the_diff, "jpg"),
    "CLEVR-Change": (clevr_change, "jpg"),
    "IEdit": (iedit, "jpg"),
    "Birds-to-Words": (birds_to_words, "jpg"),
}
