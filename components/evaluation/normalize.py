"""The official DEMON answer normalisation (`Eval.process` in the release's `scripts/evaluate.py`).

Both scorers see predictions, ground truths and options through `normalize`, so it must match the
release character for character, quirks included:

1. newlines and tabs become spaces, then the text is stripped;
2. each of 21 punctuation marks (`. ' : * # $ % & ^ | ~` are *not* among them) is deleted when it touches
   a space somewhere in the text (`"p "` or `" p"`), or when the text contains a digit-comma-digit
   pattern anywhere; otherwise it becomes a space. The decision is made per mark on the original text;
3. periods not followed by a digit are deleted: the release passes `re.UNICODE` where `re.sub` expects
   `count`, so only the first 32 such periods go (its look-behind is also mistyped as a look-ahead for the
   literal `<=`, which never matches in front of a period, so preceding digits do not matter);
4. single quotes, then double quotes are stripped from both ends, then whitespace, then it is lower-cased.

The per-mark replacements never create another mark, so one `str.translate` with a per-text table
gives exactly the release's 21 successive `str.replace` calls.
"""

from __future__ import annotations

import re
from functools import lru_cache

PUNCTUATION = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!")
_PUNCTUATION_SET = frozenset(PUNCTUATION)
_DIGIT_COMMA_DIGIT = re.compile(r"(\d)(,)(\d)")
_PERIOD = re.compile(r"\.(?!\d)")
# The release's accidental `count` (re.UNICODE == 32).
PERIOD_LIMIT = int(re.UNICODE)
_DELETE_ALL = {ord(p): None for p in PUNCTUATION}


def _strip_punctuation(text: str) -> str:
    present = _PUNCTUATION_SET.intersection(text)
    if present:
        if _DIGIT_COMMA_DIGIT.search(text) is not None:
            table = _DELETE_ALL
        else:
            table = {ord(p): None if (p + " " in text or " " + p in text) else " " for p in present}
        text = text.translate(table)
    return _PERIOD.sub("", text, count=PERIOD_LIMIT)


def normalize_uncached(text: str) -> str:
    """The official normalisation of one answer, prediction or option (see the module docstring)."""
    text = text.replace("\n", " ").replace("\t", " ").strip()
    text = _strip_punctuation(text)
    return text.strip("'").strip('"').strip().lower()


@lru_cache(maxsize=1 << 16)
def normalize(text: str) -> str:
    """`normalize_uncached`, memoised: options and ground truths repeat across samples and scorers."""
    return normalize_uncached(text)


def as_text(value: object) -> str:
    """A response as text. The release crashes on non-string JSON values (Fashion200K's integer
    responses); scoring their decimal string form is the fix. Booleans and containers are refused."""
    if isinstance(value, str):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    raise TypeError(f"expected a string (or a number), got {type(value).__name__}: {value!r}")
