"""Benchmark: `parity` scoring against a straightforward per-sample implementation of the release's scorer.

Builds 18,176 predictions shaped like DEMON-Core (the registry's 29 tasks and per-task counts; open-ended
answers of sentence length, text options 2-7 per sample, image options `Image A`..), scores them with both,
asserts every per-sample score is identical, and prints both times and the ratio (target >= 5x).

    .venv/bin/python benchmarks/bench_scoring.py [--seed 0] [--scale 1.0]
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from demon_official_scorer import official_scores  # noqa: E402

from components.demon.registry import Task, tasks  # noqa: E402
from components.evaluation.normalize import normalize  # noqa: E402
from components.evaluation.scorers import score_task  # noqa: E402

SYLLABLES = ("ka", "lo", "mi", "ren", "sa", "tu", "vo", "el", "an", "dor", "pi", "ce", "ul", "bra", "nis", "to")
FUNCTION_WORDS = ("the", "a", "is", "on", "of", "and", "to", "in", "with", "it", "he", "she", "they", "was")


def make_vocabulary(rng: random.Random, size: int = 800) -> list[str]:
    words = {"".join(rng.choice(SYLLABLES) for _ in range(rng.randint(1, 3))) for _ in range(size * 2)}
    return sorted(words)[:size]


def sentence(rng: random.Random, vocab: list[str], lo: int, hi: int) -> str:
    words = [
        rng.choice(FUNCTION_WORDS) if rng.random() < 0.35 else rng.choice(vocab) for _ in range(rng.randint(lo, hi))
    ]
    text = " ".join(words).capitalize()
    return text + rng.choice((".", ".", "!", ", right?", " 3.5 times.", ""))


def perturb(rng: random.Random, vocab: list[str], text: str) -> str:
    """A prediction near the reference: some words dropped, replaced or added."""
    words = text.split()
    out = []
    for word in words:
        roll = rng.random()
        if roll < 0.15:
            continue
        out.append(rng.choice(vocab) if roll < 0.35 else word)
        if rng.random() < 0.1:
            out.append(rng.choice(FUNCTION_WORDS))
    return " ".join(out)


def open_ended_sample(rng: random.Random, vocab: list[str]) -> tuple[str, str, None]:
    gt = " ".join(sentence(rng, vocab, 6, 22) for _ in range(rng.randint(1, 3)))
    roll = rng.random()
    if roll < 0.05:
        pred = ""
    elif roll < 0.6:
        pred = perturb(rng, vocab, gt)
    else:
        pred = sentence(rng, vocab, 5, 40)
    return pred, gt, None


def text_option_sample(rng: random.Random, vocab: list[str]) -> tuple[str, str, list[str]]:
    k = rng.randint(2, 7)
    if rng.random() < 0.25:
        options = ["True", "False"] if rng.random() < 0.5 else [str(i) for i in range(k)]
    else:
        options = [sentence(rng, vocab, 1, 6).rstrip(".!") for _ in range(k)]
    gt = rng.choice(options)
    roll = rng.random()
    if roll < 0.3:
        pred = rng.choice(options)
    elif roll < 0.6:
        pred = f"The answer is {rng.choice(options)} because " + sentence(rng, vocab, 3, 15)
    elif roll < 0.7:
        pred = f"({'ABCDEFG'[rng.randrange(len(options))]})"
    else:
        pred = sentence(rng, vocab, 2, 25)
    return pred, gt, options


def image_option_sample(rng: random.Random, vocab: list[str]) -> tuple[str, str, list[str]]:
    options = [f"Image {c}: {{image#{i + 2}}}" for i, c in enumerate("ABCD")]
    gt = f"Image {rng.choice('ABCD')}"
    roll = rng.random()
    if roll < 0.6:
        pred = f"Image {rng.choice('ABCD')}"
    elif roll < 0.8:
        pred = f"Image {rng.choice('ABCD')} or Image {rng.choice('ABCD')}"
    else:
        pred = sentence(rng, vocab, 3, 20)
    return pred, gt, options


def build(seed: int, scale: float) -> list[tuple[Task, list, list, list]]:
    """Per task (task, preds, gts, choices), with the registry's DEMON-Core counts times `scale`."""
    rng = random.Random(seed)
    vocab = make_vocabulary(rng)
    makers = {"rouge_l": open_ended_sample, "tfidf_accuracy": text_option_sample}
    out = []
    for task in tasks("core"):
        make = makers.get(task.metric, image_option_sample)
        rows = [make(rng, vocab) for _ in range(max(1, round(task.counts["core"] * scale)))]
        preds, gts, choices = (list(col) for col in zip(*rows, strict=True))
        out.append((task, preds, gts, choices))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--scale", type=float, default=1.0, help="fraction of the DEMON-Core counts")
    args = parser.parse_args()
    data = build(args.seed, args.scale)
    total = sum(len(preds) for _, preds, _, _ in data)
    print(f"{total} predictions over {len(data)} tasks")

    # CPU time (process_time) is the comparison: these machines are shared, so wall time also counts waiting.
    metrics = ("rouge_l", "tfidf_accuracy", "image_option_accuracy")
    t_reference = dict.fromkeys(metrics, 0.0)
    t_parity = dict.fromkeys(metrics, 0.0)
    reference, parity = [], []
    wall = time.perf_counter()
    for task, preds, gts, choices in data:
        start = time.process_time()
        reference.append(official_scores(task, preds, gts, choices))
        t_reference[task.metric] += time.process_time() - start
    wall_reference = time.perf_counter() - wall
    normalize.cache_clear()  # the timed parity run starts cold
    wall = time.perf_counter()
    for task, preds, gts, choices in data:
        start = time.process_time()
        parity.append(score_task(task, preds, gts, choices, "parity"))
        t_parity[task.metric] += time.process_time() - start
    wall_parity = time.perf_counter() - wall
    start = time.process_time()
    for task, preds, gts, choices in data:
        score_task(task, preds, gts, choices, "strict")
    t_strict = time.process_time() - start

    for (task, *_), ref, got in zip(data, reference, parity, strict=True):
        assert np.array_equal(np.asarray(ref, dtype=np.float64), got.scores), f"{task.folder}: scores differ"
        expected = float(np.mean(ref)) if got.metric == "Rouge-L f" else sum(ref) / len(ref)
        assert got.score == expected, f"{task.folder}: task scores differ"
    print("per-sample and task scores identical: yes")
    counts = {m: sum(len(p) for t, p, _, _ in data if t.metric == m) for m in metrics}
    print(f"{'routing (CPU seconds)':<24} {'samples':>8} {'reference':>10} {'parity':>8} {'ratio':>7}")
    for m in metrics:
        print(
            f"{m:<24} {counts[m]:>8} {t_reference[m]:>10.2f} {t_parity[m]:>8.3f} {t_reference[m] / t_parity[m]:>6.1f}x"
        )
    total_ref, total_par = sum(t_reference.values()), sum(t_parity.values())
    print(f"{'all':<24} {total:>8} {total_ref:>10.2f} {total_par:>8.3f} {total_ref / total_par:>6.1f}x")
    print(f"wall clock: reference {wall_reference:.2f} s, parity {wall_parity:.2f} s")
    print(f"speed-up: {total_ref / total_par:.1f}x CPU (target >= 5x); strict on the same data: {t_strict:.2f} s CPU")


if __name__ == "__main__":
    main()
