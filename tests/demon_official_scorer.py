"""A straightforward per-sample implementation of the release's DEMON scorer (`scripts/evaluate.py`).

This is the yardstick for `components.evaluation` (parity must give the same score for every sample) and the
baseline of `benchmarks/bench_scoring.py`. It follows the release step by step: the 21-mark punctuation loop,
`Rouge().get_scores` per sample, a fresh `TfidfVectorizer` + `cosine_similarity` per sample, and the 7-character
image rule. It carries the same documented fixes as parity (routing by the registry's metric, numbers scored as
text, a prediction with no sentence left scoring 0) and nothing else.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from rouge import Rouge
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.metrics.pairwise import cosine_similarity

from components.demon.registry import Task

MARKS = [";", r"/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!"]
DIGIT_COMMA = re.compile(r"(\d)(\,)(\d)")
PERIOD = re.compile(r"(?!<=\d)(\.)(?!\d)")


def official_normalize(text: object) -> str:
    text = str(text) if not isinstance(text, str) else text
    text = text.replace("\n", " ").replace("\t", " ").strip()
    out = text
    for mark in MARKS:
        delete = mark + " " in text or " " + mark in text or DIGIT_COMMA.search(text) is not None
        out = out.replace(mark, "" if delete else " ")
    out = PERIOD.sub("", out, count=re.UNICODE)  # the release's positional `re.UNICODE` is this count
    return out.strip("'").strip('"').strip().lower()


def official_rouge(rouge: Rouge, pred: str, gt: str) -> float:
    if pred == "":
        return 0
    if not [part for part in pred.split(".") if part]:  # release: ValueError("Hypothesis is empty.")
        return 0
    return rouge.get_scores(pred, gt)[0]["rouge-l"]["f"]


def official_tfidf(pred: str, options: list[str], gt: str) -> int:
    try:
        matrix = TfidfVectorizer().fit_transform([pred, *options])
        best = cosine_similarity(matrix[0:1], matrix[1:]).flatten().argmax()
        return int(options[best] == gt)
    except ValueError:
        return int(pred == gt)


def official_image(pred: str, gt: str) -> int:
    score = int(gt[:7] == pred[:7])
    named = sum(1 for name in ["image a", "image b", "image c", "image d"] if name in pred)
    return 0 if named > 1 else score


def official_scores(
    task: Task, preds: Sequence[object], gts: Sequence[object], choices: Sequence[Sequence[object] | None]
) -> list[float]:
    """Per-sample scores of one task, one sample at a time."""
    scores: list[float] = []
    rouge = Rouge()
    for pred, gt, options in zip(preds, gts, choices, strict=True):
        p, g = official_normalize(pred), official_normalize(gt)
        if task.metric == "rouge_l":
            assert g != ""
            scores.append(official_rouge(rouge, p, g))
        elif task.metric == "image_option_accuracy":
            scores.append(official_image(p, g))
        else:
            opts = [official_normalize(o) for o in options]
            assert g in opts
            scores.append(official_tfidf(p, opts, g))
    return scores
