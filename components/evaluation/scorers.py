"""DEMON scorers: `parity` (the release's `scripts/evaluate.py`, score for score) and `strict`.

parity, per task routing (registry `Task.metric`):
- `rouge_l` (open-ended): ROUGE-L F as `rouge==1.0.1` computes it,
  `Rouge().get_scores(pred, gt)[0]["rouge-l"]["f"]`; an empty normalised prediction scores 0.
- `tfidf_accuracy` (text options): `TfidfVectorizer()` fitted on `[pred] + options`, the option with the highest
  cosine similarity to the prediction (first one on ties, so option 0 when nothing is shared) must equal the
  ground truth; when fitting fails (no token of two or more word characters anywhere) exact match decides.
- `image_option_accuracy`: the first 7 characters of prediction and ground truth must agree (`image b`),
  and a prediction naming more than one of `image a`..`image d` is wrong.
Task score: mean ROUGE-L F (`np.mean`) or correct / n, as the release computes them.

The release's algorithm is reproduced with cheaper arithmetic, and the tests check it against a plain per-sample
implementation on random inputs:
- ROUGE-L: rouge 1.0.1 splits both texts into sentences on ".", counts *distinct* words (m, n) and the distinct
  words of one particular LCS per sentence pair (its traceback: diagonal on a match, else up when up is larger,
  else left), unioned over pairs. We compute the LCS table with the bit-parallel recurrence (one Python integer per
  row) and only trace it back when a repeated word could make that set smaller than the LCS length.
- TF-IDF: a fresh vectoriser per sample means a per-sample vocabulary and idf; we compute all samples' tf-idf
  rows at once with numpy on (document, term) pairs, which is the same arithmetic up to floating-point summation
  order (|error| << 1e-12). Where two options come closer than a tolerance far above that error and the pick
  would change the score, that sample is re-scored with scikit-learn itself, so the outcome is exactly the
  release's.

strict, per sample, records the rule that decided it:
- open-ended: `rouge-l`, the same value as parity.
- text options, first rule that applies: `option-text` (prediction equals an option); `option-letter` (`a`,
  `(b)`, `option c`, `answer: d`, `b red car`); `option-index` (`option 2` or a bare `2`, 1-based, only when no
  option is a number); `true-false` (yes/no, true/false, correct/incorrect, right/wrong, `not true`, against a
  two-option true/false style set); `option-text-contained` (exactly one option, as whole words, inside the
  prediction; an option inside a longer matched option, or negated as `not X`, does not count).
- image options: `image-letter` (exactly one of `image a`.. named), then `option-letter` / `option-index`.
- otherwise `none` with score 0: strict never falls back to a default option.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from components.demon.registry import Task, get_task
from components.errors import UserError
from components.evaluation.normalize import as_text, normalize

Scorer = Literal["parity", "strict"]
SCORERS: tuple[Scorer, ...] = ("parity", "strict")
METRIC_KEYS = {"rouge_l": "Rouge-L f", "tfidf_accuracy": "Accuracy", "image_option_accuracy": "Accuracy"}
IMAGE_NAMES = ("image a", "image b", "image c", "image d")
NO_RULE = "none"


class ScoringError(UserError):
    """Inputs a task cannot be scored on (the release refuses them too): the message names task, samples, fix."""


@dataclass(frozen=True)
class TaskScore:
    """One task's per-sample scores under one scorer.

    `scores[i]` belongs to `sample_ids[i]`; `rules[i]` (strict only) names the rule that decided it and `picks[i]`
    the 0-based option it chose (None for open-ended samples and for rule `none`).
    """

    task: str
    scorer: Scorer
    metric: str  # the release's key: "Rouge-L f" or "Accuracy"
    sample_ids: tuple
    scores: np.ndarray  # (n,) float64
    rules: tuple[str, ...] | None = None
    picks: tuple[int | None, ...] | None = None

    @property
    def n(self) -> int:
        return len(self.scores)

    @property
    def score(self) -> float:
        """The task score exactly as the release aggregates it (np.mean of ROUGE-L F, correct / n)."""
        if self.metric == "Accuracy":
            return int(self.scores.sum()) / self.n
        return float(np.mean(self.scores))

    def eval_score_json(self) -> dict[str, float]:
        """The release's task-level record: `{"Rouge-L f": x}` or `{"Accuracy": x}`."""
        return {self.metric: self.score}

    def eval_rows(self) -> list[dict]:
        """Per-sample records: `id` (a string, as the release writes it), `score`, and strict's `rule`."""
        rows = [{"id": str(i), "score": float(s)} for i, s in zip(self.sample_ids, self.scores, strict=True)]
        if self.rules is not None:
            for row, rule, pick in zip(rows, self.rules, self.picks, strict=True):
                row["rule"] = rule
                row["pick"] = pick
        return rows

    def rule_counts(self) -> dict[str, int]:
        if self.rules is None:
            return {}
        return dict(sorted(Counter(self.rules).items()))


# ----------------------------------------------------------------------------------------------- ROUGE-L


def _sentences(text: str) -> list[list[str]]:
    """rouge 1.0.1's view of a text: sentences split on ".", whitespace collapsed, words split on " "."""
    return [" ".join(part.split()).split(" ") for part in text.split(".") if part]


def _lcs_rows(x: list[str], y: list[str]) -> list[int]:
    """Rows of the LCS table of x (rows) against y (columns), bit-parallel (Hyyro 2004).

    Row i is an integer whose bit j is 0 exactly where table[i][j+1] = table[i][j] + 1, so
    table[i][j] = j - popcount(row_i & (2**j - 1)) and LCS(x, y) = len(y) - popcount(row_n).
    """
    masks: dict[str, int] = {}
    for j, word in enumerate(y):
        masks[word] = masks.get(word, 0) | (1 << j)
    full = (1 << len(y)) - 1
    row = full
    rows = [row]
    for word in x:
        match = row & masks.get(word, 0)
        row = ((row + match) | (row - match)) & full
        rows.append(row)
    return rows


def _traced_lcs_words(x: list[str], y: list[str], rows: list[int]) -> set[str]:
    """The distinct words of the LCS that rouge 1.0.1's `_recon_lcs(x, y)` reconstructs (same tie-breaking).

    Walks back from (n, m) keeping t = table[i][j]: on a match go diagonal; otherwise go up when
    table[i-1][j] > table[i][j-1], else left. table[i][j-1] is t or t - 1 (bit j-1 of row i), and up can only win
    when left is t - 1 and table[i-1][j] is t, which costs one popcount.
    """
    words: set[str] = set()
    i, j = len(x), len(y)
    t = j - rows[i].bit_count()
    while i and j:
        if x[i - 1] == y[j - 1]:
            words.add(x[i - 1])
            i -= 1
            j -= 1
            t -= 1
        elif (rows[i] >> (j - 1)) & 1:  # left keeps t: up cannot be larger
            j -= 1
        elif j - (rows[i - 1] & ((1 << j) - 1)).bit_count() == t:  # up keeps t > left
            i -= 1
        else:
            j -= 1
            t -= 1
    return words


def _lcs_distinct_count(x: list[str], y: list[str]) -> int:
    """len(set(traced LCS of x, y)) for a single sentence pair."""
    counts_y: dict[str, int] = {}
    for word in y:
        counts_y[word] = counts_y.get(word, 0) + 1
    repeated = False
    shared = False
    counts_x: dict[str, int] = {}
    for word in x:
        if word in counts_y:
            shared = True
            counts_x[word] = counts_x.get(word, 0) + 1
            repeated = repeated or (counts_x[word] > 1 and counts_y[word] > 1)
    if not shared:
        return 0
    rows = _lcs_rows(x, y)
    if not repeated:  # no word can occur twice in a common subsequence: the set size is the LCS length
        return len(y) - rows[-1].bit_count()
    return len(_traced_lcs_words(x, y, rows))


def rouge_l_f(pred: str, gt: str) -> float:
    """rouge 1.0.1's summary-level ROUGE-L F of two *normalised* texts; 0.0 for an empty prediction.

    The release crashes (ValueError) when the prediction has no sentence at all (only periods left after
    normalisation, e.g. 33 or more periods); that is scored 0 like an empty prediction. A ground truth without a
    sentence raises ValueError (the release refuses it too). Deep tracebacks that overflow the release's
    recursion (sentence pairs over ~1000 words) get their mathematically defined value here.
    """
    if not pred:
        return 0.0
    ref = _sentences(gt)
    if not ref:
        raise ValueError("the ground truth is empty after normalisation")
    hyp = _sentences(pred)
    if not hyp:
        return 0.0
    m = len({w for s in ref for w in s})
    n = len({w for s in hyp for w in s})
    if len(ref) == 1 and len(hyp) == 1:
        llcs = _lcs_distinct_count(ref[0], hyp[0])
    else:
        union: set[str] = set()
        for x in ref:
            for y in hyp:
                if not union.issuperset(x) and not set(x).isdisjoint(y):
                    union |= _traced_lcs_words(x, y, _lcs_rows(x, y))
        llcs = len(union)
    r_lcs = llcs / m
    p_lcs = llcs / n
    return 2.0 * ((p_lcs * r_lcs) / (p_lcs + r_lcs + 1e-8))


# ------------------------------------------------------------------------------------------------ TF-IDF

_TOKEN = re.compile(r"(?u)\b\w\w+\b")  # TfidfVectorizer's default token_pattern


def _sklearn_pick(pred: str, options: Sequence[str]) -> int | None:
    """The release's own computation for one sample: the picked option, or None when fitting fails."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.metrics.pairwise import cosine_similarity

    try:
        matrix = TfidfVectorizer().fit_transform([pred, *options])
        return int(cosine_similarity(matrix[0:1], matrix[1:]).flatten().argmax())
    except ValueError:
        return None


def tfidf_correct(preds: Sequence[str], options: Sequence[Sequence[str]], gts: Sequence[str]) -> np.ndarray:
    """Batched release TF-IDF option matching on *normalised* texts; (n,) int64 of 0/1.

    Per sample s with documents d = 0 (prediction), 1..k (options): tf = raw counts, idf(t) = ln((1 + k + 1) /
    (1 + df_s(t))) + 1, rows l2-normalised, cosine = dot product. All samples' (document, term) pairs are
    processed together with numpy. Picks whose score could depend on floating-point rounding (a near-tie between
    a correct and a wrong option) are recomputed with scikit-learn, so every outcome is the release's.
    """
    n = len(preds)
    token_cache: dict[str, list[int]] = {}
    vocab: dict[str, int] = {}

    def term_ids(text: str) -> list[int]:
        ids = token_cache.get(text)
        if ids is None:
            ids = [vocab.setdefault(tok, len(vocab)) for tok in _TOKEN.findall(text.lower())]
            token_cache[text] = ids
        return ids

    n_options = np.fromiter((len(o) for o in options), dtype=np.int64, count=n)
    doc_sample = np.repeat(np.arange(n), n_options + 1)  # (D,) sample of each document
    doc_offset = np.concatenate(([0], np.cumsum(n_options + 1)[:-1]))  # (n,) first document of each sample
    doc_pos = np.arange(len(doc_sample)) - doc_offset[doc_sample]  # (D,) 0 = prediction, 1.. = option
    lengths: list[int] = []
    flat_terms: list[int] = []
    for pred, opts in zip(preds, options, strict=True):
        for text in (pred, *opts):
            ids = term_ids(text)
            lengths.append(len(ids))
            flat_terms.extend(ids)
    n_terms = max(len(vocab), 1)
    token_doc = np.repeat(np.arange(len(doc_sample)), lengths)
    keys, counts = np.unique(token_doc * n_terms + np.asarray(flat_terms, dtype=np.int64), return_counts=True)
    e_doc, e_term = np.divmod(keys, n_terms)  # one entry per (document, term) with its count
    e_sample = doc_sample[e_doc]
    pair_keys, e_pair, df = np.unique(e_sample * n_terms + e_term, return_inverse=True, return_counts=True)
    e_idf = np.log((n_options[e_sample] + 2) / (df[e_pair] + 1.0)) + 1.0
    weight = counts * e_idf
    norms = np.sqrt(np.bincount(e_doc, weight * weight, minlength=len(doc_sample)))
    weight = weight / norms[e_doc]
    is_pred = doc_pos[e_doc] == 0
    pred_weight = np.zeros(len(pair_keys))
    pred_weight[e_pair[is_pred]] = weight[is_pred]
    dots = np.bincount(e_doc, weight * pred_weight[e_pair] * ~is_pred, minlength=len(doc_sample))

    k_max = int(n_options.max(initial=1))
    cosine = np.full((n, k_max), -1.0)  # padding never wins: cosines are >= 0
    opt_docs = np.flatnonzero(doc_pos > 0)
    cosine[doc_sample[opt_docs], doc_pos[opt_docs] - 1] = dots[opt_docs]
    correct = np.zeros((n, k_max), dtype=bool)
    for s, (opts, gt) in enumerate(zip(options, gts, strict=True)):
        correct[s, : len(opts)] = [o == gt for o in opts]

    pick = cosine.argmax(axis=1)
    rows = np.arange(n)
    result = correct[rows, pick].astype(np.int64)
    # Error bound of either computation is ~(terms + a few) * 2**-52 per cosine; the tolerance is ~4000x that.
    vocab_size = np.bincount(pair_keys // n_terms, minlength=n)
    tolerance = 1e-12 * (vocab_size + 32)
    best = cosine[rows, pick]
    near = cosine >= (best - tolerance)[:, None]
    mixed = (near & correct).any(axis=1) & (near & ~correct & (cosine >= 0)).any(axis=1) & (best > 0)
    for s in np.flatnonzero(mixed):
        exact = _sklearn_pick(preds[s], options[s])
        result[s] = int(preds[s] == gts[s]) if exact is None else int(correct[s, exact])
    # No token anywhere: the release's vectoriser raises and exact match decides.
    empty = vocab_size == 0
    for s in np.flatnonzero(empty):
        result[s] = int(preds[s] == gts[s])
    return result


# ---------------------------------------------------------------------------------------- image options


def image_option_correct(pred: str, gt: str) -> int:
    """The release's rule on *normalised* texts: same first 7 characters, and at most one image named."""
    if sum(name in pred for name in IMAGE_NAMES) > 1:
        return 0
    return int(gt[:7] == pred[:7])


# ------------------------------------------------------------------------------------------------ strict

_PREFIX = r"(?:(?:the\s+)?(?:correct\s+|right\s+|final\s+)?(?:answer|option|choice)(?:\s+is)?\s*:?\s*)"
_LETTER = re.compile(rf"^{_PREFIX}?([a-z])(?:\s*[:)]\s*|\s+|$)(.*)$")
_INDEX_EXPLICIT = re.compile(rf"^{_PREFIX}(?:number\s+|no\s+|#\s*)?(\d+)$")
_INDEX_BARE = re.compile(r"^(\d+)$")
_NUMBER = re.compile(r"^\d+$")
_IMAGE_MENTION = re.compile(r"\bimage\s+([a-z])\b")
_LEADING_PREFIX = re.compile(rf"^{_PREFIX}")
AFFIRMATIVE = frozenset({"yes", "true", "correct", "right"})
NEGATIVE = frozenset({"no", "false", "incorrect", "wrong"})


def _contains_words(haystack: str, needle: str) -> bool:
    return re.search(rf"(?<!\w){re.escape(needle)}(?!\w)", haystack) is not None


def _strict_letter(pred: str, options: Sequence[str]) -> int | None:
    match = _LETTER.match(pred)
    if match is None:
        return None
    index = ord(match.group(1)) - ord("a")
    rest = match.group(2).strip()
    if index >= len(options) or (rest and rest != options[index]):
        return None
    return index


def _strict_index(pred: str, count: int, allow_bare: bool) -> int | None:
    match = _INDEX_EXPLICIT.match(pred) or (_INDEX_BARE.match(pred) if allow_bare else None)
    if match is None:
        return None
    index = int(match.group(1)) - 1
    return index if 0 <= index < count else None


def _strict_true_false(pred: str, options: Sequence[str]) -> int | None:
    positive = [i for i, o in enumerate(options) if o in AFFIRMATIVE]
    negative = [i for i, o in enumerate(options) if o in NEGATIVE]
    if len({options[i] for i in positive}) != 1 or len({options[i] for i in negative}) != 1:
        return None
    if len(set(options)) != 2:
        return None
    words = _LEADING_PREFIX.sub("", pred).split()
    if not words:
        return None
    if words[0] == "not" and len(words) > 1 and words[1] in AFFIRMATIVE:
        return negative[0]
    if words[0] in AFFIRMATIVE:
        return positive[0]
    if words[0] in NEGATIVE:
        return negative[0]
    return None


def _negated(haystack: str, needle: str) -> bool:
    return re.search(rf"(?:\bnot|n't|\bnever)\s+{re.escape(needle)}(?!\w)", haystack) is not None


def _strict_contained(pred: str, options: Sequence[str]) -> int | None:
    # An option only mentioned as "not X" / "isn't X" is no answer for X.
    found = [o for o in dict.fromkeys(options) if o and _contains_words(pred, o) and not _negated(pred, o)]
    found = [o for o in found if not any(o != other and _contains_words(other, o) for other in found)]
    return options.index(found[0]) if len(found) == 1 else None


def strict_text_option(pred: str, options: Sequence[str]) -> tuple[int | None, str]:
    """(picked option, rule) for a *normalised* prediction against *normalised* text options."""
    if not pred:
        return None, NO_RULE
    if pred in options:
        return options.index(pred), "option-text"
    if (index := _strict_letter(pred, options)) is not None:
        return index, "option-letter"
    # With numbers as options ("0".."6"), "option 5" most likely quotes an option: leave it to the text rules.
    numeric_options = any(_NUMBER.match(o) for o in options)
    if not numeric_options and (index := _strict_index(pred, len(options), allow_bare=True)) is not None:
        return index, "option-index"
    if (index := _strict_true_false(pred, options)) is not None:
        return index, "true-false"
    if (index := _strict_contained(pred, options)) is not None:
        return index, "option-text-contained"
    return None, NO_RULE


def strict_image_option(pred: str, n_images: int) -> tuple[int | None, str]:
    """(picked image 0..n-1, rule) for a *normalised* prediction; several images named is no answer."""
    named = set(_IMAGE_MENTION.findall(pred))
    if len(named) > 1:
        return None, NO_RULE
    if named:
        index = ord(named.pop()) - ord("a")
        return (index, "image-letter") if index < n_images else (None, NO_RULE)
    letters = [chr(ord("a") + i) for i in range(n_images)]
    if (index := _strict_letter(pred, letters)) is not None:
        return index, "option-letter"
    if (index := _strict_index(pred, n_images, allow_bare=True)) is not None:
        return index, "option-index"
    return None, NO_RULE


# ------------------------------------------------------------------------------------------------- tasks


def _fail(task: Task, sample_ids: Sequence, bad: list[int], reason: str, fix: str) -> None:
    if bad:
        shown = ", ".join(str(sample_ids[i]) for i in bad[:10])
        more = f" (and {len(bad) - 10} more)" if len(bad) > 10 else ""
        raise ScoringError(f"{task.folder}: {len(bad)} sample(s) {reason}: sample_id {shown}{more}; {fix}")


def _texts(task: Task, values: Sequence[object], sample_ids: Sequence, what: str) -> list[str]:
    out, bad = [], []
    for i, value in enumerate(values):
        try:
            out.append(normalize(as_text(value)))
        except TypeError:
            out.append("")
            bad.append(i)
    _fail(task, sample_ids, bad, f"have a {what} that is not text", f"write the {what} as a JSON string")
    return out


def score_task(
    task: Task | str,
    preds: Sequence[object],
    gts: Sequence[object],
    choices: Sequence[Sequence[object] | None] | None = None,
    scorer: Scorer = "parity",
    sample_ids: Sequence | None = None,
) -> TaskScore:
    """Score one DEMON task's predictions.

    preds/gts: raw (un-normalised) prediction and ground-truth texts, one per sample (numbers are accepted and
    scored as their decimal text). choices: each sample's options (needed for text-option tasks; used by strict
    for the number of images on image-option tasks; ignored otherwise). sample_ids: names used in outputs and
    error messages (default 0..n-1). Raises ScoringError for inputs the task cannot be scored on: no samples,
    an empty ground truth on an open-ended task, missing options, or a ground truth that is not an option.
    """
    task = get_task(task) if isinstance(task, str) else task
    if scorer not in SCORERS:
        raise ValueError(f"unknown scorer {scorer!r}; choose one of {', '.join(SCORERS)}")
    n = len(preds)
    if len(gts) != n or (choices is not None and len(choices) != n):
        raise ValueError(f"{task.folder}: preds, gts and choices must have one entry per sample")
    ids = tuple(range(n)) if sample_ids is None else tuple(sample_ids)
    if len(ids) != n:
        raise ValueError(f"{task.folder}: sample_ids must have one entry per sample")
    if n == 0:
        raise ScoringError(f"{task.folder}: no samples to score; predict at least one sample of the task")
    metric = METRIC_KEYS[task.metric]
    pred_n = _texts(task, preds, ids, "prediction")
    gt_n = _texts(task, gts, ids, "ground truth")

    if task.metric == "rouge_l":
        bad = [i for i, g in enumerate(gt_n) if not _sentences(g)]
        _fail(task, ids, bad, "have an empty ground truth after normalisation", "fix or drop them in the data")
        scores = np.fromiter((rouge_l_f(p, g) for p, g in zip(pred_n, gt_n, strict=True)), np.float64, n)
        if scorer == "parity":
            return TaskScore(task.folder, scorer, metric, ids, scores)
        return TaskScore(task.folder, scorer, metric, ids, scores, ("rouge-l",) * n, (None,) * n)

    if task.metric == "image_option_accuracy":
        if scorer == "parity":
            correct = [image_option_correct(p, g) for p, g in zip(pred_n, gt_n, strict=True)]
            return TaskScore(task.folder, scorer, metric, ids, np.asarray(correct, dtype=np.float64))
        answers = [_IMAGE_MENTION.match(g) for g in gt_n]
        bad = [i for i, a in enumerate(answers) if a is None]
        _fail(task, ids, bad, "have a ground truth that names no image", "the ground truth must read 'Image X'")
        rules, picks, correct = [], [], []
        for i, p in enumerate(pred_n):
            count = len(choices[i]) if choices is not None and choices[i] else len(IMAGE_NAMES)
            pick, rule = strict_image_option(p, count)
            rules.append(rule)
            picks.append(pick)
            correct.append(pick is not None and chr(ord("a") + pick) == answers[i].group(1))
        scores = np.asarray(correct, dtype=np.float64)
        return TaskScore(task.folder, scorer, metric, ids, scores, tuple(rules), tuple(picks))

    # Text options.
    if choices is None:
        choices = [None] * n
    bad = [i for i, c in enumerate(choices) if not c]
    _fail(task, ids, bad, "have no options", "give each sample its choice_list")
    options = [[normalize(as_text(o)) for o in c] for c in choices]
    bad = [i for i, (g, o) in enumerate(zip(gt_n, options, strict=True)) if g not in o]
    _fail(task, ids, bad, "have a ground truth that is not one of its options", "fix the data's response/choice_list")
    if scorer == "parity":
        scores = tfidf_correct(pred_n, options, gt_n).astype(np.float64)
        return TaskScore(task.folder, scorer, metric, ids, scores)
    rules, picks, correct = [], [], []
    for p, o, g in zip(pred_n, options, gt_n, strict=True):
        pick, rule = strict_text_option(p, o)
        rules.append(rule)
        picks.append(pick)
        correct.append(pick is not None and o[pick] == g)
    scores = np.asarray(correct, dtype=np.float64)
    return TaskScore(task.folder, scorer, metric, ids, scores, tuple(rules), tuple(picks))
