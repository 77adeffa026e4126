"""Knowledge Grounded QA: WebQA, TQA, MultiModalQA (tables, legends and captions joined with photos)."""

from __future__ import annotations

from PIL import Image, ImageDraw

from components.demon.mini.draw import BLACK, SIDE, WHITE, Obj, font, objs, scene, table
from components.demon.mini.sample import Ctx, Sample, TaskTable, choices, other
from components.demon.vocabulary import COLORS, PALETTE, SHAPES

GARDENS = ("Rose", "Maple", "Willow", "Cedar", "Lotus", "Iris", "Juniper", "Laurel")


def webqa(c: Ctx) -> Sample:
    """Count one kind of shape in two captioned photos and compare. The four outcomes are equally likely and every
    option repeats the question's words, so neither a prior over outcomes nor the question's wording picks one."""
    rng = c.rng
    shape = rng.choice(SHAPES)
    g1, g2 = rng.sample(GARDENS, 2)
    outcome = rng.randrange(4)  # first has more, second has more, equal (some), equal (none)
    high, low = rng.randint(2, 4), rng.randint(0, 1)
    same = rng.randint(1, 4)
    counts = ((high, low), (low, high), (same, same), (0, 0))[outcome]
    images = []
    for n in counts:
        color = rng.choice(COLORS)
        cells = rng.sample(range(9), n + 2)
        extra = [Obj(other(rng, SHAPES, shape), rng.choice(COLORS), cell, "small") for cell in cells[n:]]
        images.append(c.pic(scene([Obj(shape, color, cell, "small") for cell in cells[:n]] + extra, (205, 225, 200))))
    a, b, p = f"{g1} Garden", f"{g2} Garden", f"{shape}s"
    options = [
        f"{a} shows more {p} than {b}.",
        f"{b} shows more {p} than {a} does.",  # not the first option's bag of words: TF-IDF tells them apart
        f"Neither shows more {p}: {a} and {b} have the same number.",
        f"Neither shows more {p}: {a} and {b} have none at all.",
    ]
    answer = options[outcome]
    rng.shuffle(options)
    context = (
        f"{{image#1}}Image Caption #1: {a} {{image#2}}Image Caption #2: {b} Question: Which garden shows more "
        f"{p}; {a} or {b}?   Choice List:{choices(options)} Your answer is:"
    )
    return Sample(context, images, answer, options)


PARTS = ("core", "mantle", "crust", "stem", "leaf", "root", "petal", "seed", "nucleus", "membrane")


def tqa(c: Ctx) -> Sample:
    """Diagram 1 labels coloured parts A-D; diagram 2 is the legend colour -> part name."""
    rng = c.rng
    parts = objs(rng, 4, cells=(0, 2, 6, 8))
    names = rng.sample(PARTS, 4)
    diagram = scene(parts, bg=WHITE, labels=list("ABCD"))
    legend = Image.new("RGB", (SIDE, SIDE), WHITE)
    draw = ImageDraw.Draw(legend)
    draw.text((10, 8), "Legend", fill=BLACK, font=font(14))
    for i, j in enumerate(rng.sample(range(4), 4)):
        draw.rectangle((12, 36 + 30 * i, 34, 58 + 30 * i), fill=PALETTE[parts[j].color])
        draw.text((44, 40 + 30 * i), names[j], fill=BLACK, font=font(13))
    q = rng.randrange(4)
    options = rng.sample(names, 4)
    context = (
        f"{{image#1}}{{image#2}}Question: What is the part labeled {'ABCD'[q]}? "
        f"Choice List:{choices(options, ',')} Your answer is: "
    )
    return Sample(context, [c.pic(diagram), c.pic(legend)], names[q], options)


TEAMS = ("Falcons", "Otters", "Comets", "Pilots", "Rovers", "Tigers", "Wolves", "Hornets")
CITIES = ("Oslo", "Lima", "Perth", "Quito", "Turin", "Kobe", "Dakar", "Hanoi")


def multimodalqa(c: Ctx) -> Sample:
    """Table: team -> founding year; photo: the teams' badges, each labelled with its team."""
    rng = c.rng
    teams, cities = rng.sample(TEAMS, 3), rng.sample(CITIES, 3)
    years = rng.sample(range(1900, 2000), 3)
    badges = objs(rng, 3, cells=(3, 4, 5))
    sheet = table(["Team", "Founded", "City"], [[t, str(y), k] for t, y, k in zip(teams, years, cities, strict=True)])
    photo = scene(badges, bg=(225, 230, 225), labels=teams)
    q = rng.randrange(3)
    options = [b.color for b in badges] + [other(rng, COLORS, *(b.color for b in badges))]
    rng.shuffle(options)
    context = (
        f"Global Table: {{table#1}} Context: {{image#2}} Question: What colour is the badge of the team founded "
        f"in {years[q]}? Choice List:{choices(options)} Your answer is:"
    )
    return Sample(context, [(sheet, "png"), c.pic(photo)], badges[q].color, options)


TASKS: TaskTable = {
    "WebQA": (webqa, "jpg"),
    "TQA": (tqa, "png"),
    "MultiModalQA": (multimodalqa, "jpg"),
}
