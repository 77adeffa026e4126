"""Uncertainty of scores: bootstrap intervals that reproduce the official scores and cover ~95%, honest handling of
tiny tasks, paired differences with permutation p-values, and the results.json / compare.json / compare.md
contract through the real `write_bundle` and `compare_bundles` (on a small mini-DEMON, no model)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from evaluate_helpers import mini_normalized

from components.demon.registry import get_task, tasks
from components.errors import UserError
from components.evaluation.bundle import sample_row, write_bundle
from components.evaluation.bundle_report import compare_bundles
from components.evaluation.contrasts import contrast_family, default_contrasts, holm, sentences
from components.evaluation.intervals import (
    Bootstrap,
    compare_intervals,
    overall_summary,
    paired_differences,
    score_intervals,
)
from components.evaluation.scorers import score_task
from components.runtime.pipeline_cli import pipeline_summary

FAST = Bootstrap(resamples=2000)
INTERVAL_KEYS = {"scorer", "level", "name", "n", "score", "ci_low", "ci_high"}
PAIRED_KEYS = {"scorer", "a", "b", "level", "name", "n", "diff", "ci_low", "ci_high", "p_value"}


def rows_of(scores: dict[str, list[float]], scorer: str = "parity", uid_offset: int = 0) -> list[dict]:
    """samples.jsonl-like rows: {task: per-sample scores} under one scorer."""
    return [
        {"uid": f"{task}/core/{i + uid_offset}", "task": task, "sample_id": i + uid_offset, "response": "gt",
         "scores": {scorer: float(s)}}
        for task, values in scores.items()
        for i, s in enumerate(values)
    ]  # fmt: skip


def find(records: list[dict], **match) -> dict:
    (found,) = [r for r in records if all(r[k] == v for k, v in match.items())]
    return found


# ------------------------------------------------------------------------------------------ one model


def test_the_point_estimate_is_the_official_task_score_to_the_last_bit():
    rng = np.random.default_rng(0)
    words = ["red", "car", "blue", "sky", "a", "the", "dog"]
    gts = [" ".join(rng.choice(words, 6)) for _ in range(37)]
    preds = [" ".join(rng.choice(words, 5)) for _ in range(37)]
    official = score_task("VIST", preds, gts, scorer="parity")  # ROUGE-L F: floats whose sum order matters
    rows = [{"uid": f"VIST/core/{i}", "task": "VIST", "sample_id": i, "response": g, "scores": {"parity": s}}
            for i, (g, s) in enumerate(zip(gts, official.scores.tolist(), strict=True))]  # fmt: skip
    record = find(score_intervals(rows[::-1], FAST), level="task", name="VIST")  # rows in any order
    assert record["score"] == 100 * official.score and record["n"] == 37
    assert record["ci_low"] < record["score"] < record["ci_high"]


def test_a_constant_task_has_zero_width_only_with_two_samples_or_more():
    records = score_intervals(rows_of({"TQA": [1.0] * 5, "DocVQA": [0.0], "WebQA": [1, 0, 1, 0]}), FAST)
    tqa, docvqa = find(records, name="TQA"), find(records, name="DocVQA")
    assert (tqa["n"], tqa["score"], tqa["ci_low"], tqa["ci_high"]) == (5, 100.0, 100.0, 100.0)
    assert (docvqa["n"], docvqa["score"], docvqa["ci_low"], docvqa["ci_high"]) == (1, 0.0, None, None)
    # A level holding a one-sample task has no interval: it would look certain where nothing is known.
    category = find(records, level="category", name=get_task("DocVQA").category)
    assert category["ci_low"] is None and category["n"] == 1
    assert find(records, level="overall")["ci_low"] is None
    assert score_intervals([], FAST) == []


def test_percentile_intervals_cover_about_95_percent_of_bernoulli_samples():
    rng = np.random.default_rng(1)
    p, n, trials = 0.3, 80, 300
    covered = 0
    for _ in range(trials):
        record = find(score_intervals(rows_of({"TQA": rng.random(n) < p}), Bootstrap(1000)), level="task")
        covered += record["ci_low"] <= 100 * p <= record["ci_high"]
    assert 0.9 <= covered / trials <= 0.99


def test_categories_and_overall_resample_within_each_task():
    scores = {t.folder: [1, 0, 0, 1, 1] for t in tasks("core")}
    records = score_intervals(rows_of(scores), FAST)
    overall = find(records, level="overall")
    assert overall["score"] == 60.0 and overall["n"] == 5 * 29
    assert overall["ci_low"] < 60 < overall["ci_high"]
    # Averaging 29 independent tasks narrows the interval well below a single task's.
    task = find(records, name="TQA")
    assert overall["ci_high"] - overall["ci_low"] < (task["ci_high"] - task["ci_low"]) / 3
    # Each task draws from its own seeded generator: its interval does not depend on the other tasks present.
    alone = find(score_intervals(rows_of({"TQA": scores["TQA"]}), FAST), name="TQA")
    assert alone == task


# ------------------------------------------------------------------------------------------- paired


def test_a_model_against_itself_differs_by_zero_with_p_one():
    rows = rows_of({"TQA": [1, 0, 1, 1, 0, 1], "WebQA": [0, 0, 1, 1]})
    records, counts = paired_differences(rows, rows, "m", "m", FAST)
    assert {(r["diff"], r["ci_low"], r["ci_high"], r["p_value"]) for r in records} == {(0.0, 0.0, 0.0, 1.0)}
    assert counts == {"a": "m", "b": "m", "shared": 10, "dropped_a": 0, "dropped_b": 0}


def test_a_clear_difference_is_significant_and_a_tie_is_not():
    rng = np.random.default_rng(2)
    names = ["TQA", "WebQA", "DocVQA"]
    better = rows_of({t: rng.random(60) < 0.8 for t in names})
    worse = rows_of({t: rng.random(60) < 0.4 for t in names})
    records, _ = paired_differences(better, worse, "better", "worse", FAST)
    overall = find(records, level="overall")
    assert overall["diff"] > 0 and overall["ci_low"] > 0 and overall["p_value"] < 0.01
    assert set(overall) == PAIRED_KEYS and overall["n"] == 180
    # A model that differs on one sample of 60: a tiny difference whose interval covers 0.
    one_flip = [dict(r, scores={"parity": 1 - r["scores"]["parity"]}) if r["uid"] == "TQA/core/0" else r
                for r in better]  # fmt: skip
    tie = find(paired_differences(better, one_flip, "a", "b", FAST)[0], level="task", name="TQA")
    assert tie["ci_low"] <= 0 <= tie["ci_high"] and tie["p_value"] == 1.0


def test_different_sample_sets_pair_only_the_shared_samples():
    a = rows_of({"TQA": [1, 1, 0, 1, 0, 1, 1], "WebQA": [1, 0], "DocVQA": [1, 1, 1]})
    b = rows_of({"TQA": [0, 0, 0, 1, 0], "WebQA": [0]}) + rows_of({"WebQA": [1, 1]}, uid_offset=5)
    b[0]["response"] = "another ground truth"  # same uid, another sample: not paired
    records, counts = paired_differences(a, b, "a", "b", FAST)
    assert counts == {"a": "a", "b": "b", "shared": 5, "dropped_a": 7, "dropped_b": 3}
    tqa, webqa = find(records, name="TQA"), find(records, name="WebQA")
    assert (tqa["n"], tqa["diff"]) == (4, 25.0) and tqa["ci_low"] is not None
    assert (webqa["n"], webqa["diff"], webqa["ci_low"], webqa["p_value"]) == (1, 100.0, None, None)
    assert not [r for r in records if r["name"] == "DocVQA"]  # nothing shared: no record, no crash
    assert find(records, level="overall")["ci_low"] is None  # it holds the one-sample WebQA


def test_three_models_of_realistic_size_take_seconds():
    rng = np.random.default_rng(3)
    models = {m: [dict(r, scores={"parity": float(rng.random() < p), "strict": float(rng.random() < p)})
                  for r in rows_of({t.folder: [0] * 100 for t in tasks("core")})]
              for m, p in (("a", 0.4), ("b", 0.5), ("c", 0.6))}  # fmt: skip
    record = compare_intervals(models, Bootstrap(1000))  # a tenth of the default: the test stays fast
    assert len(record["intervals"]) == 3 * 2 * (1 + 7 + 29) and len(record["paired"]) == 3 * 2 * (1 + 7 + 29)
    assert [(c["a"], c["b"]) for c in record["paired_samples"]] == [("a", "b"), ("a", "c"), ("b", "c")]


# ---------------------------------------------------------------------------------------- the contract


FOCUS = "Visual Relation Inference"


@pytest.fixture(scope="module")
def bundles(tmp_path_factory) -> dict[str, Path]:
    """'Models' on a 4-per-task mini-DEMON, written by the real write_bundle: `even` answers with the ground truth
    on even sample ids, `low` on sample ids below 3 (one sample missing, as in a partial run). The pipeline's names
    answer only the FOCUS category's tasks, as the embedded default evaluates: `backbone` as `even`,
    `vpgc-synthetic` as `low` (all samples), `backbone-blind` never."""
    folder = tmp_path_factory.mktemp("intervals")
    data = mini_normalized(folder, per_task=4)
    samples = pd.read_parquet(data / "samples.parquet").to_dict("records")
    focus = [s for s in samples if get_task(s["task"]).category == FOCUS]
    meta = {"model": {"spec": "m"}, "data": {"path": str(data), "image_root": str(folder / "raw")}}
    out = {}
    for name, right, chosen in (
        ("even", lambda s: s["sample_id"] % 2 == 0, samples),
        ("low", lambda s: s["sample_id"] < 3, samples),
        ("backbone", lambda s: s["sample_id"] % 2 == 0, focus),
        ("vpgc-synthetic", lambda s: s["sample_id"] < 3, focus),
        ("backbone-blind", lambda s: False, focus),
    ):
        rows = [sample_row(s, {"output": str(s["response"]) if right(s) else "", "n_images": 1,
                               "prompt_sha256": "0" * 64}) for s in chosen]  # fmt: skip
        if name == "low":
            rows = rows[1:]
        write_bundle(folder / name, rows, meta)
        out[name] = folder / name
    return out


def test_results_json_carries_n_and_interval_of_every_score(bundles):
    results = json.loads((bundles["even"] / "results.json").read_text())
    assert results["interval_method"]["resamples"] == 10_000 and results["interval_method"]["seed"] == 0
    assert results["data_source"] == "mini-DEMON (procedural)"
    for record in results["intervals"]:
        assert set(record) == INTERVAL_KEYS
        summary = results["scores"][record["scorer"]]
        if record["level"] == "task":
            assert record["score"] == summary["tasks"][record["name"]]["score_x100"]
            assert record["n"] == summary["tasks"][record["name"]]["n"] == 4
        elif record["level"] == "category":
            assert record["score"] == summary["categories"][record["name"]]["score_x100"]
    overall = find(results["intervals"], scorer="parity", level="overall")
    assert overall["n"] == 116 and overall["ci_low"] < overall["score"] < overall["ci_high"]
    report = (bundles["even"] / "report.md").read_text()
    assert "| overall |" in report and " ± " in report and "not comparable to mini-DEMON scores" in report


def test_compare_json_and_md_follow_the_contract(bundles, tmp_path):
    floors = {"chance": {"Multimodal Dialogue": 12.5}, "copy context": {"Multimodal Dialogue": 30.0}}
    record = compare_bundles([("even", bundles["even"]), ("low", bundles["low"])], tmp_path, floors=floors)
    written = json.loads((tmp_path / "compare.json").read_text())
    assert written == json.loads(json.dumps(record))
    assert {"bundles", "scores", "data", "floors", "interval_method", "intervals", "paired", "paired_samples"} <= set(
        written
    )
    assert all(set(r) == INTERVAL_KEYS | {"model"} for r in written["intervals"])
    assert all(set(r) == PAIRED_KEYS for r in written["paired"])
    assert written["paired_samples"] == [{"a": "even", "b": "low", "shared": 115, "dropped_a": 1, "dropped_b": 0}]
    assert find(written["paired"], scorer="parity", level="overall")["n"] == 115
    # The same samples, the same seed: compare.json's intervals are results.json's.
    own = json.loads((bundles["even"] / "results.json").read_text())["intervals"]
    assert [{k: v for k, v in r.items() if k != "model"} for r in written["intervals"] if r["model"] == "even"] == own

    table = (tmp_path / "compare.md").read_text()
    assert "Data: even: mini-DEMON (procedural), 4 samples per task; low: mini-DEMON (procedural), 3-4 samples" in table
    assert "| category | floor: chance | floor: copy context | paper: Ablation 1 |" in table
    assert "not comparable to mini-DEMON scores" in table and "| even - low |" in table
    assert "1 only in even" in table and "| even - low | -" in table  # "low" is right on one more sample per task
    exploratory = table.split("## Exploratory, unadjusted: paired differences, parity")[1].split("## Tasks")[0]
    assert "**" not in exploratory and "Not adjusted for the number of tests" in exploratory
    relabelled = compare_bundles([("even", bundles["even"])], tmp_path / "one", data_label="DEMON-Core, 50 per task")
    assert relabelled["data"] == "DEMON-Core, 50 per task" and relabelled["paired"] == []

    lines = overall_summary(tmp_path / "compare.json", "low", "even")
    assert lines[0].startswith("even (parity x100): overall ") and " ± " in lines[0] and lines[0].endswith("(116)")
    assert lines[2].startswith("low - even (parity x100, paired): ")


def test_declared_contrasts_lead_the_report_holm_adjusted_as_one_family(bundles, tmp_path):
    labeled = [(name, bundles[name]) for name in ("even", "low")]
    record = compare_bundles(labeled, tmp_path, contrasts=["low[images] - even", "even - low"], where="test")
    family = record["contrasts"]
    assert family["family"].startswith("declared") and family["tests"] == 4
    assert [(r["contrast"], r["scorer"]) for r in family["records"]] == [
        ("low - even", "parity"), ("low - even", "strict"), ("even - low", "parity"), ("even - low", "strict")
    ]  # fmt: skip
    raw = [r["p_value"] for r in family["records"]]
    assert [r["p_holm"] for r in family["records"]] == holm(raw)
    assert all(holm_p >= p for holm_p, p in zip(holm(raw), raw, strict=True))
    low_even, even_low = family["records"][0], family["records"][2]
    assert low_even["diff"] == -even_low["diff"] and low_even["ci_low"] == -even_low["ci_high"]
    assert low_even["diff"] > 0 and low_even["detected"] and low_even["verdict"].startswith("higher by ")
    assert even_low["verdict"].startswith("lower by ")

    table = (tmp_path / "compare.md").read_text()
    headings = [line for line in table.splitlines() if line.startswith("## ")]
    assert headings[:2] == ["## Answer: the declared contrasts", "## Models"]
    assert f"- low - even: parity: {low_even['verdict']}; strict: higher by " in table
    assert "| low - even | **+" in table and "Holm p=" in table

    with pytest.raises(UserError, match=r"^test: contrast 'low - nobody': no model 'nobody' compared; known: even"):
        compare_bundles(labeled, tmp_path, contrasts=["low - nobody"], where="test")
    with pytest.raises(UserError, match=r"^test: contrast 'low-even': expected 'model\[view\] - model\[view\]'"):
        compare_bundles(labeled, tmp_path, contrasts=["low-even"], where="test")


def test_the_default_family_is_the_ablation_and_unevaluated_categories_are_not_printed(bundles, tmp_path):
    names = ("backbone", "vpgc-synthetic", "backbone-blind")
    record = compare_bundles([(name, bundles[name]) for name in names], tmp_path)
    family = record["contrasts"]
    assert family["family"].startswith("the default")
    assert list(dict.fromkeys(r["contrast"] for r in family["records"])) == [
        "vpgc-synthetic - backbone",
        "backbone - backbone-blind",
    ]
    table = (tmp_path / "compare.md").read_text()
    others = {t.category for t in tasks("core")} - {FOCUS}
    assert f"| {FOCUS} |" in table and not [c for c in others if c in table]
    assert not [line for line in table.splitlines() if re.fullmatch(r"\| [^|]+ \|( - \|)+", line)]
    assert [line for line in table.splitlines() if line.startswith("- vpgc-synthetic - backbone: ")]

    # `demonlab run` ends with the same answers, before each model's score
    summary = pipeline_summary({"evaluate": {"report": str(tmp_path)}})
    assert summary[0].startswith("contrasts (the default: ") and "Holm over the 4 tests" in summary[0]
    assert summary[1].startswith("  vpgc-synthetic - backbone: ") and "(parity x100: " in summary[1]
    assert "Holm p=" in summary[1] and "**" not in summary[1] and summary[3].startswith("backbone (parity x100)")


@pytest.mark.parametrize(
    ("p_values", "expected"),
    [
        ([0.01, 0.04, 0.03, 0.005], [0.03, 0.06, 0.06, 0.02]),  # worked by hand: 4 x 0.005, 3 x 0.01, 2 x 0.03, max
        ([0.5, 0.9], [1.0, 1.0]),
        ([], []),
    ],
)
def test_holm(p_values, expected):
    assert holm(p_values) == pytest.approx(expected)


def test_a_difference_that_is_significant_alone_is_not_detected_in_its_family():
    """The case the report used to bold: p = 0.0208 for one pair among six contrasts x two scorers."""
    pairs = default_contrasts(["backbone", "vpgc-captions", "vpgc-synthetic", "backbone-blind",
                               "vpgc-captions-blind", "vpgc-synthetic-blind"])  # fmt: skip
    assert len(pairs) == 6 and ("vpgc-synthetic", "backbone-blind") not in pairs  # a different model and view
    paired = [{"scorer": scorer, "a": a, "b": b, "level": "overall", "name": "overall", "n": 96, "diff": 1.56,
               "ci_low": 0.33, "ci_high": 2.87, "p_value": 0.0208 if (a, b) == pairs[0] else 0.5}
              for a, b in pairs for scorer in ("parity", "strict")]  # fmt: skip
    family = contrast_family(pairs, paired, declared=False)
    first = family["records"][0]
    assert first["p_holm"] == pytest.approx(12 * 0.0208) and not first["detected"]
    assert first["verdict"] == "no detectable difference"
    assert sentences(family)[0] == "vpgc-captions - backbone: no detectable difference"


def test_bundle_metrics_add_the_overall_and_the_interval_bounds(bundles):
    from flows.evaluate import bundle_metrics

    results = json.loads((bundles["even"] / "results.json").read_text())
    metrics = bundle_metrics(results)
    overall = find(results["intervals"], scorer="parity", level="overall")
    assert metrics["parity"]["overall"] == overall["score"]
    assert metrics["parity"]["overall_ci"] == {"low": overall["ci_low"], "high": overall["ci_high"]}
    assert set(metrics["strict"]["categories_ci"]) == set(metrics["strict"]["categories"])
    assert metrics["parity"]["categories"] == {
        c: r["score_x100"] for c, r in results["scores"]["parity"]["categories"].items()
    }
