"""RecipeQA: TextCloze, VisualCloze and ImageCoherence, all about one iced-cookie recipe and its step photos."""

from __future__ import annotations

from PIL import Image, ImageDraw

from components.demon.mini.draw import SIDE
from components.demon.mini.sample import Ctx, Sample, TaskTable, choices, image_options, letters, other
from components.demon.vocabulary import COLORS, PALETTE, SHAPES, draw_shape

RECIPE_TITLES = ("Mix the Dough", "Cut the {S} Shape", "Paint It {C}", "Bake and Enjoy")


def _recipe_image(step: int, shape: str, color: str, variant: int = 0) -> Image.Image:
    """Step photos of a shaped, iced cookie: 0 dough in a bowl, 1 the cut shape, 2 iced, 3 baked on a tray.
    `variant` moves the camera a little, for alternative shots of the same step."""
    im = Image.new("RGB", (SIDE, SIDE), (222, 196, 150) if step < 3 else (110, 110, 115))
    draw = ImageDraw.Draw(im)
    cx, cy = 80 + 12 * (variant % 3 - 1), 80 + 10 * (variant // 3 % 3 - 1)
    if step == 0:
        draw.ellipse((cx - 55, cy - 30, cx + 55, cy + 45), fill=(235, 235, 240), outline=(90, 90, 90), width=3)
        draw.ellipse((cx - 30, cy - 12, cx + 30, cy + 25), fill=(245, 225, 180))
    elif step == 1:
        draw_shape(draw, shape, (cx, cy), 45, (245, 225, 180), outline=(90, 60, 30), width=3)
    else:
        if step == 3:
            draw.rectangle((cx - 62, cy - 62, cx + 62, cy + 62), fill=(170, 170, 175))
        draw_shape(draw, shape, (cx, cy), 45, PALETTE[color], outline=(90, 60, 30), width=3)
    return im


def _recipe_steps(shape: str, color: str, specific: bool) -> list[tuple[str, str]]:
    """(title, text) per step; with `specific` False the text hides the shape and colour (only images show them)."""
    texts = (
        "Mix flour, butter and sugar into a soft dough.",
        f"Roll the dough flat and cut out a {shape}." if specific else "Roll the dough flat and cut out the shape.",
        f"Cover the {shape} with {color} icing." if specific else "Cover the cookie with icing.",
        "Bake for ten minutes and let it cool.",
    )
    return [
        (t.format(S=shape.capitalize(), C=color.capitalize()), x) for t, x in zip(RECIPE_TITLES, texts, strict=True)
    ]


def recipe_text_cloze(c: Ctx) -> Sample:
    rng = c.rng
    shape, color = rng.choice(SHAPES), rng.choice(COLORS)
    steps = _recipe_steps(shape, color, specific=False)
    unknown = rng.choice((1, 2))  # the steps whose titles only the pictures can tell
    details = "".join(f"Step#{k + 1}: {text} {{image#{k + 1}}}\n" for k, (_, text) in enumerate(steps))
    summary = ", ".join("'UNKNOWN'" if k == unknown else f"'{title}'" for k, (title, _) in enumerate(steps))
    answer = steps[unknown][0]
    wrong_shapes = rng.sample([s for s in SHAPES if s != shape], 2)
    wrong_colors = rng.sample([k for k in COLORS if k != color], 2)
    if unknown == 1:
        options = [answer, *(f"Cut the {s.capitalize()} Shape" for s in wrong_shapes),
                   f"Paint It {wrong_colors[0].capitalize()}"]  # fmt: skip
    else:
        options = [answer, *(f"Paint It {k.capitalize()}" for k in wrong_colors),
                   f"Cut the {wrong_shapes[0].capitalize()} Shape"]  # fmt: skip
    rng.shuffle(options)
    context = (
        f"Recipe: iced-cookies\nDetails: {details}Recipe Summary: {summary}\n"
        f"Choice List:{choices(options)} Your answer to replace 'UNKNOWN' is:"
    )
    images = [c.pic(_recipe_image(k, shape, color)) for k in range(4)]
    return Sample(context, images, answer, options)


def _recipe_details(shape: str, color: str) -> str:
    return "".join(f"Step#{k + 1}: {t}: {x} \n" for k, (t, x) in enumerate(_recipe_steps(shape, color, True)))


def recipe_visual_cloze(c: Ctx) -> Sample:
    """The text names shape and colour; the missing step photo is the one that matches it."""
    rng = c.rng
    shape, color = rng.choice(SHAPES), rng.choice(COLORS)
    unknown = rng.randint(1, 3)
    series = [k for k in range(4) if k != unknown]
    if unknown == 1:  # the cut dough has no colour: distractors differ in shape
        wrong = [(s, color) for s in rng.sample([s for s in SHAPES if s != shape], 3)]
    else:  # wrong shape, wrong colour, wrong both
        wrong = [(other(rng, SHAPES, shape), color), (shape, other(rng, COLORS, color))]
        wrong.append((other(rng, SHAPES, shape), other(rng, COLORS, color)))
    candidates = [(shape, color), *wrong]
    order = rng.sample(range(4), 4)
    slots = [f"{{image#{series.index(k) + 1}}}" if k != unknown else "UNKNOWN" for k in range(4)]
    labels = letters(4)
    context = (
        f"Recipe: {color}-{shape}-cookies\nDetails: {_recipe_details(shape, color)}\n"
        f"Recipe Image Series: {' '.join(slots)}\nChoice List:{image_options(4)}Your answer to replace 'UNKNOWN' is:"
    )
    images = [c.pic(_recipe_image(k, shape, color)) for k in series]
    images += [c.pic(_recipe_image(unknown, *candidates[j], variant=rng.randrange(9))) for j in order]
    return Sample(context, images, labels[order.index(0)], labels)


def recipe_image_coherence(c: Ctx) -> Sample:
    """Three candidate photos show the recipe's cookie; one shows a cookie of another shape and colour."""
    rng = c.rng
    shape, color = rng.choice(SHAPES), rng.choice(COLORS)
    odd = (other(rng, SHAPES, shape), other(rng, COLORS, color))
    candidates = [odd, (shape, color), (shape, color), (shape, color)]
    order = rng.sample(range(4), 4)
    labels = letters(4)
    context = (
        f"Recipe: {color}-{shape}-cookies\nDetails: {_recipe_details(shape, color)}"
        f"Recipe Image Series: {{image#1}} {{image#2}} {{image#3}} {{image#4}}\n"
        f"Choice List:{image_options(5)}The incoherent image is:"
    )
    images = [c.pic(_recipe_image(k, shape, color)) for k in range(4)]
    images += [c.pic(_recipe_image(rng.choice((2, 3)), *candidates[j], variant=rng.randrange(9))) for j in order]
    return Sample(context, images, labels[order.index(0)], labels)


TASKS: TaskTable = {
    "RecipeQA_TextCloze": (recipe_text_cloze, "jpg"),
    "RecipeQA_VisualCloze": (recipe_visual_cloze, "jpg"),
    "RecipeQA_ImageCoherence": (recipe_image_coherence, "jpg"),
}
