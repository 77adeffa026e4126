"""Text-Rich Images QA: SlideVQA, OCR-VQA, DocVQA (the answer is printed in one of the pictures)."""

from __future__ import annotations

from collections.abc import Sequence

from PIL import Image, ImageDraw

from components.demon.mini.draw import BLACK, WHITE, card, font
from components.demon.mini.sample import Ctx, Sample, TaskTable, choices
from components.demon.vocabulary import COLORS, PALETTE

PRODUCTS = ("Atlas", "Nova", "Pixel", "Orbit", "Zephyr", "Comet", "Echo", "Delta")


def _bar_slide(title: str, labels: Sequence[str], values: Sequence[int]) -> Image.Image:
    im = Image.new("RGB", (224, 168), WHITE)
    draw = ImageDraw.Draw(im)
    draw.rectangle((0, 0, 224, 26), fill=(40, 60, 110))
    draw.text((8, 6), title, fill=WHITE, font=font(13))
    top = max(values)
    for i, (label, value) in enumerate(zip(labels, values, strict=True)):
        x, h = 22 + 50 * i, int(95 * value / top)
        draw.rectangle((x, 140 - h, x + 30, 140), fill=PALETTE["blue"])
        draw.text((x + 15, 138 - h), str(value), fill=BLACK, font=font(10), anchor="mb")
        draw.text((x + 15, 144), label, fill=BLACK, font=font(10), anchor="mt")
    return im


def slidevqa(c: Ctx) -> Sample:
    rng = c.rng
    products = rng.sample(PRODUCTS, 4)
    sales = rng.sample(range(10, 99), 4)
    year = rng.randint(2010, 2023)
    chart = _bar_slide(f"Unit sales {year}", products, sales)
    notes = card([f"- {p} launched in {year - rng.randint(1, 5)}" for p in products[:3]] + ["- Thank you"],
                  (224, 168), title="Highlights", px=12)  # fmt: skip
    kind = rng.randrange(3)
    if kind == 2:
        p = rng.randrange(4)
        question, answer = f"How many units of {products[p]} were sold in {year}?", str(sales[p])
        options = [answer, *(str(v) for v in rng.sample([v for v in range(10, 99) if v != sales[p]], 3))]
    else:
        best = (max if kind == 0 else min)(range(4), key=lambda i: sales[i])
        question = f"Which product had the {'highest' if kind == 0 else 'lowest'} unit sales in {year}?"
        answer, options = products[best], list(products)
    rng.shuffle(options)
    slides = [chart, notes] if rng.random() < 0.5 else [notes, chart]
    context = f"{{image#1}}{{image#2}}Question: {question} Choice List:{choices(options)} Your answer is:"
    return Sample(context, [c.pic(s) for s in slides], answer, options)


AUTHORS = ("Sally M. Walker", "David W. Beskeen", "Stephan Van Dam", "Nora Quinn", "Hugo Alvarez",
           "Mei Tanaka", "Ravi Shah", "Olga Petrova")  # fmt: skip
TITLE_WORDS = (("Silent", "Hidden", "Golden", "Little", "Endless", "Quiet"),
               ("River", "Garden", "Engine", "Island", "Kitchen", "Forest"))  # fmt: skip


def ocrvqa(c: Ctx) -> Sample:
    """Two book covers with printed title and author; questions about the printed text."""
    rng = c.rng
    titles = [f"The {a} {b}" for a, b in zip(rng.sample(TITLE_WORDS[0], 2), rng.sample(TITLE_WORDS[1], 2), strict=True)]
    authors = rng.sample(AUTHORS, 2)
    kind = rng.randrange(3)
    if kind == 0 and rng.random() < 0.5:
        authors[1] = authors[0]
    covers = rng.sample(COLORS, 2)
    images = [
        c.pic(card([f"by {author}"], (128, 176), bg=PALETTE[color], fg=WHITE, title=title, px=11))
        for title, author, color in zip(titles, authors, covers, strict=True)
    ]
    spare = [a for a in AUTHORS if a not in authors]
    if kind == 0:
        question = "Are the authors of these two books the same?"
        same = authors[0] == authors[1]
        answer = authors[0] if same else "not the same"
        options = ["not the same", *dict.fromkeys(authors), *rng.sample(spare, 3)][:4]
    elif kind == 1:
        i = rng.randrange(2)
        question, answer = f"Who wrote the book with the {covers[i]} cover?", authors[i]
        options = list(dict.fromkeys(authors)) + rng.sample(spare, 4 - len(set(authors)))
    else:
        i = rng.randrange(2)
        question, answer = f"What is the title of the book with the {covers[i]} cover?", titles[i]
        options = [*titles, f"The {rng.choice(TITLE_WORDS[0])} Road", f"A {rng.choice(TITLE_WORDS[0])} Night"]
    rng.shuffle(options)
    context = f"{{image#1}}{{image#2}}Question: {question} Choice List:{choices(options)} Your answer is:"
    return Sample(context, images, answer, options)


VENDORS = ("Acme Paper Co.", "Blue River Supply", "Northwind Ltd.", "Summit Office Inc.")


def docvqa(c: Ctx) -> Sample:
    """A two-page purchase order; the question's answer is printed on one of the pages."""
    rng = c.rng
    number = f"{rng.randint(90, 99)}-{rng.randint(10000, 99999)}"
    total = f"${rng.randint(100, 9999)}.{rng.randint(0, 99):02d}"
    approver = rng.choice(AUTHORS)
    vendor = rng.choice(VENDORS)
    page1 = card([f"Purchase Order No: {number}", f"Vendor: {vendor}", "Date: March 3, 1999",
                   "Ship to: Research Dept."], (176, 224), title="PURCHASE ORDER")  # fmt: skip
    page2 = card(["Items: paper, toner, folders", f"Total: {total}", f"Approved by: {approver}"], (176, 224),
                  title="ORDER SUMMARY")  # fmt: skip
    kind = rng.randrange(3)
    if kind == 0:
        head, tail = number.split("-")
        question, answer = "what is purchase order no ?", number
        options = [answer, *(f"{head}-{int(tail) + d}" for d in rng.sample((-2, -1, 1, 2, 3), 3))]
    elif kind == 1:
        question, answer = "what is the total amount ?", total
        options = [answer, *(f"${rng.randint(100, 9999)}.{rng.randint(0, 99):02d}" for _ in range(3))]
    else:
        question, answer = "who approved the order ?", approver
        options = [answer, *rng.sample([a for a in AUTHORS if a != approver], 3)]
    options = list(dict.fromkeys(options))
    rng.shuffle(options)
    context = f"{{image#1}}{{image#2}}Question: {question}   Choice List:{choices(options)} Your answer is:"
    return Sample(context, [c.pic(page1), c.pic(page2)], answer, options)


TASKS: TaskTable = {
    "SlideVQA": (slidevqa, "jpg"),
    "OCR-VQA": (ocrvqa, "jpg"),
    "DocVQA": (docvqa, "jpg"),
}
