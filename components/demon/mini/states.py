"""MIT-States PropertyCoherence and StateCoherence: one object drawn in states (broken, empty, small, dark...)."""

from __future__ import annotations

from PIL import Image, ImageDraw

from components.demon.mini.draw import SIDE, objs
from components.demon.mini.sample import TRUE_FALSE, Ctx, Sample, TaskTable, choices, other, true_false
from components.demon.vocabulary import COLORS, PALETTE, SHAPES, draw_shape

OPPOSITES = (("whole", "broken"), ("full", "empty"), ("large", "small"), ("bright", "dark"))
STATES = tuple(s for pair in OPPOSITES for s in pair)
# A picture shows one state and the neutral form of every other property (whole, full, medium, bright): these
# three neutral states draw the same picture, so a question may never hinge on telling them apart.
NEUTRAL = frozenset({"whole", "full", "bright"})


def _opposite(state: str) -> str:
    return next(b if a == state else a for a, b in OPPOSITES if state in (a, b))


def _state_image(shape: str, color: str, state: str) -> Image.Image:
    """An object in one MIT-States-style state; unnamed properties take their neutral form."""
    dark = state == "dark"
    im = Image.new("RGB", (SIDE, SIDE), (45, 45, 55) if dark else (235, 235, 230))
    draw = ImageDraw.Draw(im)
    r = {"large": 68, "small": 24}.get(state, 46)
    fill = None if state == "empty" else PALETTE[color]
    draw_shape(draw, shape, (80, 80), r, fill, outline=PALETTE[color] if fill is None else None, width=5)
    if state == "broken":  # a background-coloured zigzag crack splitting the object
        draw.line([(20 + 15 * k, 80 + (10 if k % 2 else -10)) for k in range(9)], fill=(235, 235, 230), width=7)
    return im


def mit_property(c: Ctx) -> Sample:
    """Templates 0-9: are four objects the same class; 10-19: two objects in the same state; 20-29: which
    state does the second picture show, opposite to the first."""
    rng = c.rng
    group = c.template_id // 10
    truth = rng.random() < 0.5
    if group == 0:
        shapes = [rng.choice(SHAPES)] * 4
        if not truth:
            shapes[rng.randrange(1, 4)] = other(rng, SHAPES, shapes[0])
        items = [(s, rng.choice(COLORS), rng.choice(STATES)) for s in shapes]
        options, answer = list(TRUE_FALSE), true_false(truth)
    elif group == 1:
        shape, color, state = rng.choice(SHAPES), rng.choice(COLORS), rng.choice(STATES)
        looks_different = [s for s in STATES if s != state and not (s in NEUTRAL and state in NEUTRAL)]
        second = state if truth else rng.choice(looks_different)
        items = [(shape, color, state), (shape, color, second)]
        options, answer = list(TRUE_FALSE), true_false(truth)
    else:
        shape, color = rng.choice(SHAPES), rng.choice(COLORS)
        pair = rng.choice(OPPOSITES)
        first, answer = rng.sample(pair, 2)
        items = [(shape, color, first), (shape, color, answer)]
        # Distractors are false of the second picture: the marked side of every other pair (either size).
        options = [answer] + [rng.choice(p) if p[0] == "large" else p[1] for p in OPPOSITES if p != pair]
        rng.shuffle(options)
    images = [c.pic(_state_image(*item)) for item in items]
    context = "".join(f"{{image#{k}}}" for k in range(1, len(images) + 1))
    context += f"Choice List:{choices(options)} Your answer is:"
    return Sample(context, images, answer, options)


def mit_state(c: Ctx) -> Sample:
    """Two sets of two pictures, each an object going from a state to its opposite; same transition?"""
    rng = c.rng
    (a, b) = objs(rng, 2)
    state = rng.choice(STATES)
    truth = rng.random() < 0.5
    other = state if truth else rng.choice([s for s in STATES if s not in (state, _opposite(state))])
    images = [
        c.pic(_state_image(o.shape, o.color, s))
        for o, first in ((a, state), (b, other))
        for s in (first, _opposite(first))
    ]
    context = f"{{image#1}}{{image#2}}{{image#3}}{{image#4}}Choice List:{choices(TRUE_FALSE)} Your answer is:"
    return Sample(context, images, true_false(truth), list(TRUE_FALSE))


TASKS: TaskTable = {
    "MIT-States_PropertyCoherence": (mit_property, "jpg"),
    "MIT-States_StateCoherence": (mit_state, "jpg"),
}
