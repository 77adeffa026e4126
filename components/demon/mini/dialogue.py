"""Multimodal Dialogue: ALFRED (the next step of a household plan) and MMCoQA (a multi-hop table-photo question)."""

from __future__ import annotations

from dataclasses import replace

from PIL import Image, ImageDraw

from components.demon.mini.draw import BLACK, CELL_PHRASES, SIZE_WORDS, Obj, cell_center, objs, scene, table
from components.demon.mini.sample import Ctx, Sample, TaskTable, a, say
from components.demon.vocabulary import COLORS, PALETTE, SHAPES, draw_shape

NUMBERS = ("no", "one", "two", "three", "four")
# The plan's steps, each said in one of several ways; {where} is a cell of the top-down room.
GO = (
    "Turn {dir} and walk {steps} to reach {where}.",
    "Head {steps} {dir} toward {where}.",
    "Go {dir}, {steps}, until you get to {where}.",
    "Walk {steps} {dir} over by {where}.",
)
PICK = (
    "Pick up the {item}.",
    "Grab that {item} from your feet.",
    "Take hold of this {item} lying there.",
    "Lift one {sized} off {where}.",
    "Reach down and collect {an}.",
    "Scoop up {sized} with both hands.",
)
CARRY = (
    "Carry it {steps} {dir} to {where}.",
    "Turn {dir} and bring it {steps} over.",
    "With {item} in hand, walk {steps} {dir}.",
    "Holding it, move {steps} {dir} toward {where}.",
    "Keep hold and step {dir} {steps}.",
)
PUT = (
    "Place the {item} on top of {a_target}.",
    "Set it down upon that {target}.",
    "Put your {item} onto {target} at {where}.",
    "Drop it on this {target}.",
    "Leave {sized} resting over {target}.",
    "Lay {item} onto one {target} and let go.",
)
GOALS = ("Put {item} on the {target}.", "Place {item} onto a {target}.", "Move {item} to the {target}.")


def _walk(start: int, end: int) -> dict[str, str]:
    """Direction and distance from one cell to another as the top-down view shows them (up = forward)."""
    (r0, c0), (r1, c1) = divmod(start, 3), divmod(end, 3)
    parts = [w for w, d in (("left", c0 - c1), ("right", c1 - c0), ("forward", r0 - r1), ("back", r1 - r0)) if d > 0]
    n = abs(r1 - r0) + abs(c1 - c0)
    return {"dir": " and ".join(parts) or "around", "steps": f"{NUMBERS[n]} step{'s' * (n != 1)}"}


def _alfred_view(item: Obj, target: Obj, agent_cell: int, holding: bool) -> Image.Image:
    """Top-down room: the target (large), the item (small) unless held, the agent as a black triangle below
    the centre of its cell; a held item rides beside the agent."""
    im = scene([target] + ([] if holding else [item]), bg=(205, 195, 180))
    draw = ImageDraw.Draw(im)
    ax, ay = cell_center(agent_cell)
    ay += 20
    draw_shape(draw, "triangle", (ax, ay), 8, BLACK)
    if holding:
        draw_shape(draw, item.shape, (ax + 14, ay), 7, PALETTE[item.color])
    return im


def alfred(c: Ctx) -> Sample:
    """Go to the item, pick it up, carry it to the target, put it there; the answer is the step the last
    view calls for, naming what that view shows (which item, which way, how far)."""
    rng = c.rng
    target, item = objs(rng, 2)
    item = replace(item, size="small")
    start = rng.choice([k for k in range(9) if k not in (item.cell, target.cell)])
    names = {"item": item.noun(), "an": a(item.noun()), "target": target.noun(), "a_target": a(target.noun()),
             "sized": f"{rng.choice(SIZE_WORDS['small'])} {item.noun()}"}  # fmt: skip
    at = {o: rng.choice(CELL_PHRASES[o.cell]) for o in (item, target)}
    steps = [
        say(rng, GO, where=at[item], **_walk(start, item.cell)),
        say(rng, PICK, where=at[item], **names),
        say(rng, CARRY, where=at[target], **_walk(item.cell, target.cell), **names),
        say(rng, PUT, where=at[target], **names),
    ]
    states = [(start, False), (item.cell, False), (item.cell, True), (target.cell, True)]  # before each step
    now = rng.randint(1, 3)
    goal = say(rng, GOALS, item=a(item.noun()), target=target.noun())
    history = "".join(f"{{image#{j + 1}}}Step#{j + 1}: {steps[j]} " for j in range(now))
    context = f"Your Main Goal:  {goal}  Step Details: {history}{{image#{now + 1}}} Current Step: "
    images = [c.pic(_alfred_view(item, target, *states[j])) for j in range(now + 1)]
    return Sample(context, images, steps[now])


PEOPLE = ("Ada Moss", "Ben Ortiz", "Cara Lind", "Dev Rao", "Eli Stone", "Fay Chen", "Gus Hale", "Ivy Park")


def mmcoqa(c: Ctx) -> Sample:
    """Multi-hop: the table maps player -> badge shape, the photos show which shape has which colour."""
    rng = c.rng
    people = rng.sample(PEOPLE, 3)
    shapes, colors = rng.sample(SHAPES, 3), rng.sample(COLORS, 3)
    years = rng.sample(range(1990, 2022), 3)
    sheet = table(
        ["Player", "Badge", "Joined"], [[p, s, str(y)] for p, s, y in zip(people, shapes, years, strict=True)]
    )
    q, h1, h2 = rng.sample(range(3), 3)
    history = (
        f"History Context 1: Table: {{table#2}} Question: what year did {people[h1]} join the club? "
        f"Answer: {years[h1]}.  "
        f"History Context 2: Text: {people[h2]} has played for the club since {years[h2]} and wears the "
        f"{shapes[h2]} badge on the shirt. Question: Which badge does {people[h2]} wear? "
        f"Answer: The {shapes[h2]} badge.  "
    )
    order = rng.sample(range(3), 3)
    context = (
        f"Global Table: {{table#1}} {history}Current Context: {{image#3}} {{image#4}} {{image#5}} "
        f"Question: What colour is the badge of {people[q]}? Answer:"
    )
    badges = [c.pic(scene([Obj(shapes[i], colors[i], 4)], bg=(230, 230, 225))) for i in order]
    # The history table is the global table again: one file referenced twice, as in the README example.
    return Sample(context, [(sheet, "png"), (sheet, "png"), *badges], f"{colors[q].capitalize()}.")


TASKS: TaskTable = {"ALFRED": (alfred, "jpg"), "MMCoQA": (mmcoqa, "jpg")}
