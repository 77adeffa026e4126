"""Visual Storytelling: AESOP, PororoSV, FlintstonesSV, VIST, DiDeMoSV.

A hero (a labelled shape for the named casts, a bare shape otherwise) goes from place to place; every frame is
painted as a place (beach, forest, kitchen...) and holds a new prop, sometimes with a friend. The held-out last
frame is drawn in a place the story has not been to and holds a prop of a colour not seen before, so its caption
has to come from the last image: the earlier captions never name that place or that object.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import partial

from components.demon.mini.draw import PLACES, Obj, objs, place, scene
from components.demon.mini.sample import Ctx, Sample, TaskTable, a
from components.demon.vocabulary import COLORS, SHAPES


@dataclass(frozen=True)
class Style:
    frames: int
    names: tuple[str, ...]  # the cast, or () for unnamed shapes
    alone: tuple[str, ...]  # caption phrasings: {a} hero, {b} friend, {prop} "a pink star", {place}, {where}
    together: tuple[str, ...]
    ext: str


STYLES: dict[str, Style] = {
    "AESOP": Style(
        3,
        ("Colin", "Lizzy", "Bobby", "Maya", "Omar", "Jared"),
        (
            "{a} wandered down to some {place} and found {prop} hidden nearby.",
            "One morning {a} went off alone to explore a {place}. Soon {prop} caught everyone's attention.",
            "Near that {place}, {a} spotted {prop} lying close by and picked it up carefully.",
            "Bored at home, {a} walked over to this {place}; there {prop} waited.",
            "{a} loved visiting the {place}, where {prop} always seemed to glow.",
        ),
        (
            "{a} and {b} raced each other across the {place}, sharing {prop}.",
            "Later {b} joined {a} by a {place}. Together they admired {prop}.",
            "Every day {a} met a good friend, {b}, at this {place} to play with {prop}.",
            "{b} came along too, so both kids watched {prop} until sunset.",
            "When {b} arrived at the {place}, {a} proudly showed off {prop}.",
        ),
        "jpg",
    ),
    "PororoSV": Style(
        5,
        ("Pororo", "Crong", "Loopy", "Eddy", "Poby", "Petty"),
        (
            " {a} is at the {place}. {a} looks at {prop}.",
            " {a} finds {prop} in a {place}.",
            " {a} stands near {prop} and smiles.",
            " {a} goes to this {place} alone and sees {prop}.",
            " {a} is happy because {prop} is there.",
            " {a} walks around some {place} looking for friends.",
        ),
        (
            " {a} and {b} play in the {place}. There is {prop}.",
            " {b} shows {prop} to {a}.",
            " {a} talks with {b}. {b} points at {prop}.",
            " {b} visits {a} at a {place}. They look at {prop} together.",
            " {a} and {b} are excited about {prop}.",
            " {b} says hello to {a} near some {place}.",
        ),
        "png",
    ),
    "FlintstonesSV": Style(
        5,
        ("Fred", "Barney", "Wilma", "Betty", "Pebbles"),
        (
            "{a} is standing in the {place} next to {prop}.",
            "{a} walks into a {place} holding {prop}.",
            "Alone, {a} stares at {prop} with a puzzled look.",
            "{a} sits down by some {place}. {prop} lies on the ground nearby.",
            "Somewhere in this {place} {a} waves at {prop}.",
            "{a} runs through the {place} carrying {prop} overhead.",
        ),
        (
            "{a} and {b} are talking in the {place}.",
            "{b} hands {prop} to {a}.",
            "{a} is arguing with {b} about {prop}.",
            "{b} laughs while {a} points at {prop} in a {place}.",
            "{a} and {b} are sitting around looking at {prop}.",
            "{b} surprises {a} at this {place} with {prop}.",
        ),
        "png",
    ),
    "VIST": Style(
        5,
        (),
        (
            "We spent the afternoon at the {place}.",
            "The kids found {prop} near a {place}.",
            "Then we spotted {prop} in our picture.",
            "Our trip to this {place} was so much fun.",
            "Look at {prop} we saw!",
        ),
        (
            "Our friends joined us at the {place}.",
            "Everyone gathered around {prop}.",
            "The whole family posed next to {prop}.",
            "We met another group by a {place} and shared {prop}.",
            "Grandma came over with {prop}.",
        ),
        "jpg",
    ),
    "DiDeMoSV": Style(
        3,
        (),
        (
            "the shape rolls over to the {where}.",
            "{prop} appears near the {where}.",
            "camera shows a {place}.",
            "it stops beside {prop}.",
            "we see {prop} on some {place}.",
        ),
        (
            "a second shape enters the frame.",
            "both shapes move close to {prop}.",
            "another one follows it to the {where}.",
            "they meet in front of {prop}.",
            "two shapes pass by this {place}.",
        ),
        "jpg",
    ),
}


PROP_SHAPES = (*SHAPES, "hexagon")


@dataclass(frozen=True)
class Frame:
    place: str
    hero: Obj
    friend: Obj | None
    prop: Obj


def story(c: Ctx, folder: str) -> Sample:
    """Frames 1..n-1 share one or two places and their props; the last frame's place and prop colour are new."""
    rng, style = c.rng, STYLES[folder]
    n = style.frames
    hero, friend = objs(rng, 2)
    a_name, b_name = rng.sample(style.names, 2) if style.names else ("", "")
    places = rng.sample(list(PLACES), 3)
    prop_colors = rng.sample([k for k in COLORS if k not in (hero.color, friend.color)], n)
    alone, together = rng.sample(style.alone, len(style.alone)), rng.sample(style.together, len(style.together))
    frames, captions = [], []
    for k in range(n):
        cells = rng.sample(range(9), 3)
        met = friend if rng.random() < 0.5 else None
        where = places[2] if k == n - 1 else places[k * 2 // n]
        prop = Obj(rng.choice(PROP_SHAPES), prop_colors[k], cells[2], "small")
        frames.append(Frame(where, replace(hero, cell=cells[0]), met and replace(met, cell=cells[1]), prop))
        # Without replacement within a story: no caption repeats an earlier caption's wording.
        phrasing = (together if met else alone).pop()
        noun = prop.noun()
        said = rng.choice((a(noun), f"one {noun}", f"that {noun}", f"a little {noun}"))
        captions.append(phrasing.format(a=a_name, b=b_name, prop=said, place=where, where=prop.where))
    context, images = "", []
    for k, frame in enumerate(frames, start=1):
        items = [frame.hero] + [o for o in (frame.friend, frame.prop) if o]
        labels = ([a_name] + [b_name] * bool(frame.friend) + [None]) if style.names else None
        images.append(c.pic(scene(items, bg=place(frame.place), labels=labels)))
        context += f"{{image#{k}}}Caption#{k}:" + (captions[k - 1] if k < n else "")
    return Sample(context, images, captions[-1])


TASKS: TaskTable = {folder: (partial(story, folder=folder), style.ext) for folder, style in STYLES.items()}
