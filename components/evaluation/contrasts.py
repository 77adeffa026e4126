"""Declared contrasts: the few comparisons a run exists to answer, tested as one family with Holm's adjustment.

A comparison of k models has k(k-1)/2 pairs x levels x scorers; bolding every p < 0.05 among them finds something
by chance. So the report leads with a family declared before the run (`evaluate.contrasts` in params.yaml):

    "vpgc-synthetic[images] - backbone[images]"      model[view] - model[view]; a side without [view] is a report
    "vpgc-synthetic - vpgc-synthetic-blind"           label as given (`<model>` or `<model>-<view>`)

Each contrast is tested on the overall score (x100) with both scorers, and the 2k p-values of the family (sign-flip
permutation tests, `intervals`) are adjusted together with Holm's step-down method, which controls the family-wise
error rate at alpha under any dependence between the tests. The interval beside each stays the plain 95% paired
bootstrap interval of that contrast. A contrast is "detected" when its Holm-adjusted p < alpha and its interval
excludes 0.

Undeclared, the family is the pipeline's ablation built from the models present: each VPG-C variant - the
backbone, VPG-C synthetic - VPG-C captions (both on images), and each model - its own blind control.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from components.errors import UserError
from components.evaluation.scorers import SCORERS

IMAGES, BLIND = "images", "blind"
# The pipeline's model names (params.yaml evaluate.models; flows/train.py writes vpgc-<variant>).
BACKBONE, VPGC_PREFIX, SYNTHETIC, CAPTIONS = "backbone", "vpgc-", "vpgc-synthetic", "vpgc-captions"
SIDE = r"([^\s\[\]]+)(?:\[(\w+)\])?"
CONTRAST = re.compile(rf"\s*{SIDE}\s+-\s+{SIDE}\s*")
NO_DIFFERENCE = "no detectable difference"


def label(model: str, view: str) -> str:
    """The report's name of a model seen one way: `vpgc-synthetic`, its blind control `vpgc-synthetic-blind`."""
    return model if view == IMAGES else f"{model}-{view}"


def parse_contrast(text: str, views: Sequence[str] = (IMAGES, BLIND)) -> tuple[str, str]:
    """`a[view] - b[view]` (spaces around the minus: model names hold hyphens) -> the two report labels."""
    found = CONTRAST.fullmatch(text) if isinstance(text, str) else None
    if found is None:
        raise UserError(f"contrast {text!r}: expected 'model[view] - model[view]', e.g. 'vpgc-synthetic - backbone'")
    a, view_a, b, view_b = found.groups()
    for view in (view_a, view_b):
        if view is not None and view not in views:
            raise UserError(f"contrast {text!r}: no view {view!r}; views: {', '.join(views)}")
    return label(a, view_a or IMAGES), label(b, view_b or IMAGES)


def default_contrasts(labels: Sequence[str]) -> list[tuple[str, str]]:
    """The ablation's questions among `labels`: did VPG-C help (each variant - backbone), did the synthetic data
    help (synthetic - captions), did each model use the images (model - its blind control)."""
    seen = [name for name in labels if not name.endswith(f"-{BLIND}")]
    pairs = [(name, BACKBONE) for name in seen if name.startswith(VPGC_PREFIX)] if BACKBONE in seen else []
    if SYNTHETIC in seen and CAPTIONS in seen:
        pairs.append((SYNTHETIC, CAPTIONS))
    return pairs + [(name, label(name, BLIND)) for name in seen if label(name, BLIND) in labels]


def resolve_contrasts(declared: Sequence[str] | None, labels: Sequence[str], where: str) -> list[tuple[str, str]]:
    """The family: `declared` contrasts (None: the default family) checked against the compared labels."""
    if declared is None:
        return default_contrasts(labels)
    if isinstance(declared, str) or not isinstance(declared, Sequence):
        raise UserError(f"{where}: contrasts must be a list of 'model[view] - model[view]', not {declared!r}")
    pairs = []
    for text in declared:
        try:
            a, b = parse_contrast(text)
        except UserError as error:
            raise UserError(f"{where}: {error}") from None
        for side in (a, b):
            if side not in labels:
                raise UserError(f"{where}: contrast {text!r}: no model {side!r} compared; known: {', '.join(labels)}")
        if a == b:
            raise UserError(f"{where}: contrast {text!r} compares a model with itself")
        pairs.append((a, b))
    if len(set(pairs)) != len(pairs):
        raise UserError(f"{where}: a contrast is declared twice: {list(declared)}")
    return pairs


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjustment: the i-th smallest of m p-values times (m - i), made monotone, capped at 1."""
    order = sorted(range(len(p_values)), key=lambda k: p_values[k])
    adjusted, running = [0.0] * len(p_values), 0.0
    for rank, k in enumerate(order):
        running = max(running, min(1.0, (len(p_values) - rank) * p_values[k]))
        adjusted[k] = running
    return adjusted


def _overall(paired: Sequence[Mapping[str, Any]], scorer: str, a: str, b: str) -> dict[str, Any] | None:
    """a - b at the overall level from compare.json's `paired` (which holds each pair once, in bundle order)."""
    for r in paired:
        if r["scorer"] == scorer and r["level"] == "overall":
            if (r["a"], r["b"]) == (a, b):
                return dict(r)
            if (r["a"], r["b"]) == (b, a):  # -d of the same resamples: the bounds negate and swap, p is two-sided
                low, high = r["ci_low"], r["ci_high"]
                return {**r, "a": a, "b": b, "diff": -r["diff"], "ci_low": None if high is None else -high,
                        "ci_high": None if low is None else -low}  # fmt: skip
    return None


def contrast_family(
    pairs: Sequence[tuple[str, str]], paired: Sequence[Mapping[str, Any]], declared: bool, alpha: float = 0.05
) -> dict[str, Any]:
    """compare.json's `contrasts`: the family, how it was adjusted, and one record per contrast and scorer with its
    paired difference, raw and Holm-adjusted p, whether it was detected, and its verdict in words."""
    records = []
    for a, b in pairs:
        for scorer in SCORERS:
            found = _overall(paired, scorer, a, b)
            # no shared sample: nothing to test
            records.append(found or {"scorer": scorer, "a": a, "b": b, "level": "overall", "n": 0, "diff": None,
                                     "ci_low": None, "ci_high": None, "p_value": None})  # fmt: skip
    tested = [r for r in records if r["p_value"] is not None]
    for r, adjusted in zip(tested, holm([r["p_value"] for r in tested]), strict=True):
        r["p_holm"] = adjusted
    for r in records:
        r["contrast"] = f"{r['a']} - {r['b']}"
        r.setdefault("p_holm", None)
        r["detected"] = bool(r["p_holm"] is not None and r["p_holm"] < alpha and (r["ci_low"] > 0 or r["ci_high"] < 0))
        r["verdict"] = verdict(r)
    return {
        "family": "declared"
        if declared
        else "the default: each VPG-C variant - backbone, synthetic - captions, each model - its blind control",
        "tests": len(tested),
        "adjustment": f"Holm over the {len(tested)} tests (contrasts x scorers, overall score)",
        "alpha": alpha,
        "records": records,
    }


def verdict(record: Mapping[str, Any]) -> str:
    """`higher by 1.56 [0.33, 2.87]`, `lower by ...`, `no detectable difference`, or why it could not be tested."""
    if record["p_holm"] is None:
        return "not tested (no shared samples)" if record["diff"] is None else "not tested (too few samples)"
    if not record["detected"]:
        return NO_DIFFERENCE
    low, high = sorted((abs(record["ci_low"]), abs(record["ci_high"])))
    return f"{'higher' if record['diff'] > 0 else 'lower'} by {abs(record['diff']):.2f} [{low:.2f}, {high:.2f}]"


def _cell(record: Mapping[str, Any], bold: bool = True) -> str:
    """`diff [low, high], p=raw, Holm p=adjusted (n)`, the difference bold where detected."""
    if record["p_holm"] is None:
        return verdict(record)
    text = f"{record['diff']:+.2f} [{record['ci_low']:+.2f}, {record['ci_high']:+.2f}]"
    text = f"**{text}**" if bold and record["detected"] else text
    return f"{text}, p={record['p_value']:.4f}, Holm p={record['p_holm']:.4f} ({record['n']})"


def sentences(family: Mapping[str, Any], figures: str | None = None) -> list[str]:
    """One plain sentence per contrast: its verdict per scorer, said once where both scorers agree; `figures`
    (a scorer) adds that scorer's difference and Holm-adjusted p, as the pipeline's closing summary shows them."""
    lines = []
    for contrast in dict.fromkeys(r["contrast"] for r in family["records"]):
        found = {r["scorer"]: r for r in family["records"] if r["contrast"] == contrast}
        said = {r["verdict"] for r in found.values()}
        text = said.pop() if len(said) == 1 else "; ".join(f"{scorer}: {r['verdict']}" for scorer, r in found.items())
        if figures in found and found[figures]["p_holm"] is not None:
            text += f" ({figures} x100: {_cell(found[figures], bold=False)})"
        lines.append(f"{contrast}: {text}")
    return lines


def contrast_section(family: Mapping[str, Any]) -> list[str]:
    """compare.md's opening: the answers in words, then the table they rest on."""
    rows = list(dict.fromkeys(r["contrast"] for r in family["records"]))
    if not rows:
        return ["## Answer: no contrasts", "", "None declared, and the default family's models are not compared."]
    table = ["| contrast (overall, x100) | " + " | ".join(SCORERS) + " |", "|---|" + "---:|" * len(SCORERS)]
    for contrast in rows:
        cells = {r["scorer"]: _cell(r) for r in family["records"] if r["contrast"] == contrast}
        table.append(f"| {contrast} | " + " | ".join(cells.get(s, "-") for s in SCORERS) + " |")
    return [
        "## Answer: the declared contrasts",
        "",
        *[f"- {line}" for line in sentences(family)],
        "",
        f"Family: {family['family']}; {family['adjustment']}. a - b on the samples both answered: diff [low, high] "
        f"of the 95% paired bootstrap interval, the sign-flip test's p and its Holm-adjusted p, (n); **bold** "
        f"(detected): Holm p < {family['alpha']:g} and the interval excludes 0.",
        "",
        *table,
    ]
