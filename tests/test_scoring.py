"""DEMON scoring: the official normalisation, parity against a plain per-sample implementation of the release's
`evaluate.py` (tests/demon_official_scorer.py), the strict scorer's rules, summaries and `demonlab score`."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from demon_official_scorer import official_normalize, official_scores
from rouge import Rouge

from components.demon.registry import get_task, tasks
from components.evaluation import cli as evaluation_cli
from components.evaluation.normalize import normalize, normalize_uncached
from components.evaluation.report import paper_category_scores, summarize
from components.evaluation.scorers import SCORERS, ScoringError, rouge_l_f, score_task

DEMONLAB = Path(sys.executable).parent / "demonlab"
TQA, ALFRED, NLVR2, FASHION = (get_task(t) for t in ("TQA", "ALFRED", "NLVR2", "Fashion200K"))


def parity(task, preds, gts, choices=None):
    return score_task(task, preds, gts, choices, "parity").scores.tolist()


def strict(task, preds, gts, choices=None):
    result = score_task(task, preds, gts, choices, "strict")
    return result.scores.tolist(), list(result.rules), list(result.picks)


# ------------------------------------------------------------------------------------------ normalisation


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Hello, World!", "hello world"),  # "," touches a space: deleted; "!" does not: becomes a space
        ("1,000 apples.", "1000 apples"),  # digit-comma-digit anywhere: every mark is deleted
        ("3.5 stars.", "3.5 stars"),  # a period before a digit stays
        ("e.g. U.S.A.", "eg usa"),
        ("x.5", "x.5"),
        ("1.5. Next", "1.5 next"),
        ("'quoted'", "quoted"),
        ('"Yes"', "yes"),
        ("It's", "it's"),  # the apostrophe is not one of the 21 marks
        ("Line1\nLine2\tEnd", "line1 line2 end"),
        ("a-b", "a b"),
        ("a - b", "a  b"),  # deleted, so the two spaces stay
        ("(B)", "b"),
        ("(A) red car", "a red car"),
        ("C++ is fun", "c is fun"),
        ("?!", ""),
        ("  \n ", ""),
        ("ÀB", "àb"),
        ("." * 40, "." * 8),  # only the first 32 periods go (the release's `count=re.UNICODE`)
    ],
)
def test_normalize_edge_cases(text: str, expected: str) -> None:
    assert normalize(text) == expected
    assert official_normalize(text) == expected


def test_normalize_matches_the_release_loop_on_random_text() -> None:
    rng = random.Random(7)
    pieces = list("ab c.,;/[]\"{}()=+\\_-><@`?!'\n\t 09:*") + ["the ", "3.5", "1,000", "...", "Image A", "\u00a0"]
    for _ in range(5000):
        text = "".join(rng.choice(pieces) for _ in range(rng.randint(0, 40)))
        assert normalize_uncached(text) == official_normalize(text), repr(text)


# --------------------------------------------------------------------------------------------- ROUGE-L


def rouge_package(pred: str, gt: str) -> float:
    return Rouge().get_scores(pred, gt)[0]["rouge-l"]["f"]


def test_rouge_empty_and_punctuation_only_predictions_score_zero() -> None:
    assert parity(ALFRED, ["", "?!", "  ", "'\"'"], ["put the cup down"] * 4) == [0.0] * 4
    # 40 periods keep 8 after normalisation: the release's rouge call raises "Hypothesis is empty"; fixed to 0.
    assert parity(ALFRED, ["." * 40], ["put the cup down"]) == [0.0]


def test_rouge_matches_the_package_on_quirky_texts() -> None:
    cases = [
        ("the cat sat on the mat", "the cat sat on the mat"),
        ("the the", "the cat the dog"),  # LCS "the the": one distinct word
        ("dog the cat the", "the cat the dog the"),  # several LCSs; the traceback decides the word set
        ("a b a b a", "b a b a b"),
        ("3.5 cups of flour 2.5 eggs", "add 3.5 cups of flour and 2 eggs"),  # sentences split on "."
        ("x .5 y", "x y .5"),
        ("." * 34 + " a . b", "a b"),  # periods beyond the 32nd survive: empty-word sentences
        ("nothing in common", "completely different words"),
    ]
    for pred, gt in cases:
        p, g = normalize(pred), normalize(gt)
        assert rouge_l_f(p, g) == rouge_package(p, g), (pred, gt)


def test_rouge_long_sentences_beyond_the_release_recursion_limit() -> None:
    rng = random.Random(3)
    words = [f"w{rng.randrange(40)}" for _ in range(1400)]
    pred, gt = " ".join(words[:700]), " ".join(words[700:])
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(20000)  # the release would raise RecursionError at the default limit
    try:
        assert rouge_l_f(pred, gt) == rouge_package(pred, gt)
    finally:
        sys.setrecursionlimit(limit)


def test_empty_ground_truth_is_refused_with_the_sample_named() -> None:
    with pytest.raises(ScoringError, match=r"ALFRED: 1 sample\(s\) have an empty ground truth.*sample_id 17"):
        score_task(ALFRED, ["a", "b"], ["fine", "?!"], scorer="parity", sample_ids=[16, 17])


# ------------------------------------------------------------------------------------------------- TF-IDF


def test_no_shared_word_picks_option_zero_in_parity_and_nothing_in_strict() -> None:
    options = [["blue car", "red bus"], ["blue car", "red bus"]]
    preds = ["green tree", "green tree"]
    assert parity(TQA, preds, ["blue car", "red bus"], options) == [1.0, 0.0]
    scores, rules, picks = strict(TQA, preds, ["blue car", "red bus"], options)
    assert scores == [0.0, 0.0] and rules == ["none", "none"] and picks == [None, None]


def test_one_letter_options_and_integer_responses() -> None:
    options = [[str(i) for i in range(7)]] * 3
    # No token of two or more characters anywhere: the vectoriser fails and exact match decides.
    assert parity(FASHION, ["4", "5", "The answer is 4"], [4, 4, 4], options) == [1.0, 0.0, 0.0]
    # ... but one word in the prediction makes every option row empty, so option 0 ("0") is picked.
    assert parity(FASHION, ["The answer is 4"], [0], options[:1]) == [1.0]
    scores, rules, _ = strict(FASHION, ["4", "option 5", "The answer is 4"], [4, 4, 4], options)
    assert scores == [1.0, 0.0, 1.0]
    assert rules == ["option-text", "option-text-contained", "option-text-contained"]


def test_tied_options_match_the_release() -> None:
    # "car" is equally close to both options; identical options tie exactly.
    preds = ["car", "car", "a red car", "bus"]
    gts = ["blue car", "red car", "red car", "bus"]
    options = [["red car", "blue car"], ["red car", "blue car"], ["red car", "red car", "car"], ["bus", "bus"]]
    assert parity(TQA, preds, gts, options) == official_scores(TQA, preds, gts, options)


def test_ground_truth_outside_the_options_is_refused() -> None:
    with pytest.raises(ScoringError, match=r"TQA: 1 sample\(s\) have a ground truth that is not one of its options"):
        score_task(TQA, ["x"], ["Sun"], [["Oxygen", "Carbon"]], "parity")
    with pytest.raises(ScoringError, match="have no options"):
        score_task(TQA, ["x"], ["Sun"], [None], "strict")


def random_case(rng: random.Random, metric: str) -> tuple[str, object, list | None]:
    words = ["the", "a", "cat", "dog", "Red", "blue", "sits", "on", "mat", "3.5", "1,000", "yes", "no", "x", "!", "."]

    def text(lo: int, hi: int) -> str:
        return " ".join(rng.choice(words) for _ in range(rng.randint(lo, hi)))

    if metric == "rouge_l":
        return text(0, 30), text(1, 25) + " end", None
    if metric == "image_option_accuracy":
        gt = f"Image {rng.choice('ABCD')}"
        pred = rng.choice([gt, f"image {rng.choice('abcd')} and Image {rng.choice('ABCD')}", text(0, 8), "B"])
        return pred, gt, None
    options = [text(1, 4) + rng.choice(["", " car"]) for _ in range(rng.randint(2, 7))]
    if rng.random() < 0.2:
        options[-1] = options[0]
    pred = rng.choice([rng.choice(options), text(0, 12), ""])
    return pred, rng.choice(options), options


@pytest.mark.parametrize("metric", ["rouge_l", "tfidf_accuracy", "image_option_accuracy"])
def test_parity_equals_the_reference_on_random_inputs(metric: str) -> None:
    rng = random.Random(f"parity/{metric}")  # str seeds go through SHA-512: the same cases in every process
    task = next(t for t in tasks("core") if t.metric == metric)
    cases = [random_case(rng, metric) for _ in range(400)]
    preds, gts, choices = (list(c) for c in zip(*cases, strict=True))
    result = score_task(task, preds, gts, choices, "parity")
    reference = official_scores(task, preds, gts, choices)
    assert result.scores.tolist() == [float(s) for s in reference]
    expected = float(np.mean(reference)) if metric == "rouge_l" else sum(reference) / len(reference)
    assert result.score == expected


# ------------------------------------------------------------------------------------------ image options


def test_image_options_seven_character_rule_and_several_images_named() -> None:
    task = get_task("recipeqa_visualcloze")  # the release misnames it and falls through to TF-IDF: fixed
    assert task.image_options
    preds = ["Image B.", "image b, not image c", "image b is the one", "B", "Image C"]
    gts = ["Image B"] * 5
    assert parity(task, preds, gts) == [1.0, 0.0, 1.0, 0.0, 0.0]
    scores, rules, picks = strict(task, preds, gts)
    assert scores == [1.0, 0.0, 1.0, 1.0, 0.0]
    assert rules == ["image-letter", "none", "image-letter", "option-letter", "image-letter"]
    assert picks == [1, None, 1, 1, 2]


# ----------------------------------------------------------------------------------------------- strict


def test_strict_option_letters_and_indices() -> None:
    options = [["Sun", "Oxygen", "Hydrogen", "Carbon"]] * 8
    preds = ["B", "(b)", "option B", "The answer is: b", "2", "option 2", "b oxygen", "E"]
    scores, rules, picks = strict(TQA, preds, ["Oxygen"] * 8, options)
    assert scores == [1.0] * 7 + [0.0]
    assert rules == ["option-letter"] * 4 + ["option-index"] * 2 + ["option-letter", "none"]
    assert picks[:7] == [1] * 7


def test_strict_numbers_are_option_text_when_options_are_numbers() -> None:
    options = [["1", "2", "3"]] * 2
    scores, rules, picks = strict(TQA, ["2", "option 2"], ["2", "2"], options)
    assert rules == ["option-text", "option-text-contained"] and scores == [1.0, 1.0] and picks == [1, 1]


def test_strict_true_false_variants() -> None:
    preds = ["yes", "No.", "correct", "Incorrect", "true", "Not true", "The answer is false", "maybe", "it is true"]
    preds += ["it is not true", "this isn't true"]
    gts = ["True", "False", "True", "False", "True", "False", "False", "True", "True", "False", "False"]
    scores, rules, _ = strict(NLVR2, preds, gts, [["True", "False"]] * len(preds))
    assert scores == [1.0] * 7 + [0.0, 1.0, 0.0, 0.0]
    assert (
        rules
        == ["true-false"] * 4 + ["option-text"] + ["true-false"] * 2 + ["none", "option-text-contained"] + ["none"] * 2
    )


def test_strict_containment_must_be_unique() -> None:
    options = [["red bus", "blue car", "red"]] * 3
    preds = ["I think it is the red bus", "red bus or blue car", "the answer is green"]
    scores, rules, picks = strict(TQA, preds, ["red bus"] * 3, options)
    assert scores == [1.0, 0.0, 0.0]
    assert rules == ["option-text-contained", "none", "none"] and picks == [0, None, None]


def test_strict_open_ended_equals_parity() -> None:
    preds, gts = ["put the cup on the table", ""], ["Place the cup on the table.", "Open the fridge."]
    scores, rules, _ = strict(ALFRED, preds, gts)
    assert scores == parity(ALFRED, preds, gts) and rules == ["rouge-l", "rouge-l"]


def test_cli_scorer_choices_match_the_scorers() -> None:
    assert evaluation_cli.SCORERS == SCORERS


# ---------------------------------------------------------------------------------------------- reports


def test_summary_category_scores_are_unweighted_means_beside_the_paper() -> None:
    cloze = [t for t in tasks("core") if t.category == "Multimodal Cloze"]
    image_tasks = [t for t in cloze if t.image_options]
    # One task with 1 of 1 right, one with 1 of 4 right: the category mean is unweighted, (1 + 0.25) / 2.
    results = [
        score_task(image_tasks[0], ["Image A"], ["Image A"], None, "parity"),
        score_task(image_tasks[1], ["Image A"] * 4, ["Image A", "Image B", "Image C", "Image D"], None, "parity"),
    ]
    summary = summarize(results)
    row = summary["categories"]["Multimodal Cloze"]
    assert row["score_x100"] == 62.5
    assert row["complete"] is False and set(row["tasks_missing"]) == {t.folder for t in cloze if not t.image_options}
    assert row["paper"]["VPG-C (Vicuna-7B)"] == paper_category_scores()["Multimodal Cloze"]["VPG-C (Vicuna-7B)"]
    assert summary["tasks"]["COMICS_Panel"]["paper"]["VPG-C (Vicuna-7B)"] == 3.60
    assert summary["tasks"]["COMICS_Panel"]["score_x100"] == 100.0
    assert summary["categories"]["Visual Storytelling"]["score_x100"] is None


# ---------------------------------------------------------------------------------------- demonlab score


def write_task(root: Path, folder: str, question_type: str, samples: list[dict]) -> None:
    path = root / folder / "core" / "core.json"
    path.parent.mkdir(parents=True)
    meta = {"dataset": folder, "split": "core", "num_sample": len(samples), "question_type": question_type}
    path.write_text(json.dumps({"metadata": meta, "data": samples}))


def write_preds(root: Path, folder: str, records: list[dict] | str) -> None:
    (root / folder).mkdir(parents=True)
    text = records if isinstance(records, str) else json.dumps(records)
    (root / folder / "pred.json").write_text(text)


def sample(i: int, response: object, choices: list | None = None) -> dict:
    instance = {"context": "{image#1}", "images_path": ["0.png"]}
    if choices is not None:
        instance["choice_list"] = choices
    return {"sample_id": i, "task_instruction_id": 0, "task_instance": instance, "response": response}


def build_demon_tree(root: Path) -> tuple[Path, Path]:
    """A raw DEMON tree of six tasks and predictions for them; MMCoQA's are not JSON, VizWiz's lack a sample."""
    data, preds = root / "demon", root / "preds"
    alfred = ["Pick up the mug.", "Open the fridge, then close it."]
    write_task(data, "ALFRED", "", [sample(i, r) for i, r in enumerate(alfred)])  # the release rejects ""
    write_task(
        data, "TQA", "multi-choice", [sample(0, "Oxygen", ["Sun", "Oxygen"]), sample(1, "Sun", ["Sun", "Oxygen"])]
    )
    write_task(data, "nuscenes", "multi-choice", [sample(0, "red", ["red", "blue"])])  # lower-case folder
    write_task(data, "RecipeQA_VisualCloze", "multi-choice", [sample(0, "Image B"), sample(1, "Image A")])
    write_task(data, "MMCoQA", "open-ended", [sample(0, "Madjid Bougherra.")])
    write_task(
        data, "VizWiz", "multi-choice", [sample(0, "True", ["True", "False"]), sample(1, "False", ["True", "False"])]
    )
    write_preds(
        preds,
        "alfred",
        [
            {"sample_id": 0, "pred_response": "pick up the mug", "gt_response": alfred[0]},
            {"sample_id": 1, "pred_response": "close the fridge", "gt_response": alfred[1]},
        ],
    )
    write_preds(
        preds,
        "TQA",
        [
            {"sample_id": 0, "pred_response": "B", "gt_response": "Oxygen"},
            {"sample_id": "1", "pred_response": "The sun", "gt_response": "Sun"},
        ],
    )
    write_preds(preds, "nuScenes", [{"sample_id": 0, "pred_response": "It is red.", "gt_response": "red"}])
    write_preds(
        preds,
        "RecipeQA_VisualCloze",
        [
            {"sample_id": 0, "pred_response": "Image B", "gt_response": "Image B"},
            {"sample_id": 1, "pred_response": "Image A or Image B", "gt_response": "Image A"},
        ],
    )
    write_preds(preds, "MMCoQA", "[{not json")
    write_preds(preds, "VizWiz", [{"sample_id": 0, "pred_response": "yes", "gt_response": "True"}])
    return data, preds


@pytest.fixture()
def demon_tree(tmp_path: Path) -> tuple[Path, Path]:
    return build_demon_tree(tmp_path)


def run_score(*args: str | Path) -> subprocess.CompletedProcess:
    return subprocess.run([DEMONLAB, "score", *map(str, args)], capture_output=True, text=True, timeout=120)


def test_cli_scores_a_tree_and_reports_broken_tasks(demon_tree: tuple[Path, Path]) -> None:
    data, preds = demon_tree
    done = run_score("--data", data, "--preds", preds)
    assert done.returncode == 0, done.stderr
    summary = json.loads((preds / "summary.json").read_text())
    assert summary["scorer"] == "parity"
    assert set(summary["tasks"]) == {"ALFRED", "TQA", "nuScenes", "RecipeQA_VisualCloze"}
    assert "not readable JSON" in summary["errors"]["MMCoQA"] and "MMCoQA" in done.stderr
    assert "1 missing sample_id(s): 1" in summary["errors"]["VizWiz"] and "VizWiz" in done.stderr

    # Per task, the release's files: eval.json with its key, eval_score.json per sample.
    assert json.loads((preds / "TQA" / "eval.json").read_text()) == {"Accuracy": 0.5}  # "B" is not TF-IDF-close
    assert json.loads((preds / "RecipeQA_VisualCloze" / "eval.json").read_text()) == {"Accuracy": 0.5}
    assert json.loads((preds / "nuScenes" / "eval.json").read_text()) == {"Accuracy": 1.0}
    alfred = json.loads((preds / "alfred" / "eval.json").read_text())
    expected = official_scores(
        ALFRED,
        ["pick up the mug", "close the fridge"],
        ["Pick up the mug.", "Open the fridge, then close it."],
        [None, None],
    )
    assert alfred == {"Rouge-L f": float(np.mean(expected))}
    rows = json.loads((preds / "alfred" / "eval_score.json").read_text())
    assert [r["id"] for r in rows] == ["0", "1"] and [r["score"] for r in rows] == expected
    assert not (preds / "MMCoQA" / "eval.json").exists()
    category = summary["categories"]["Multimodal Dialogue"]
    assert category["tasks_scored"] == ["ALFRED"] and category["tasks_missing"] == ["MMCoQA"]
    assert category["score_x100"] == pytest.approx(100 * alfred["Rouge-L f"])
    assert category["paper"]["VPG-C (Vicuna-7B)"] == 37.50
    assert "Multimodal Dialogue" in done.stdout


def test_cli_strict_writes_rules_elsewhere(demon_tree: tuple[Path, Path], tmp_path: Path) -> None:
    data, preds = demon_tree
    out = tmp_path / "strict"
    done = run_score("--data", data, "--preds", preds, "--scorer", "strict", "--out", out)
    assert done.returncode == 0, done.stderr
    rows = json.loads((out / "TQA" / "eval_score.json").read_text())
    assert [(r["rule"], r["score"]) for r in rows] == [("option-letter", 1.0), ("option-text-contained", 1.0)]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["scorer"] == "strict" and summary["tasks"]["TQA"]["rules"] == {
        "option-letter": 1,
        "option-text-contained": 1,
    }
    assert not (preds / "summary.json").exists()


def test_cli_reads_a_normalized_folder(demon_tree: tuple[Path, Path], tmp_path: Path) -> None:
    data, preds = demon_tree
    raw = run_score("--data", data, "--preds", preds, "--out", tmp_path / "raw")
    assert raw.returncode == 0, raw.stderr
    rows = []
    for task_dir in data.iterdir():
        task = get_task(task_dir.name)
        for item in json.loads((task_dir / "core" / "core.json").read_text())["data"]:
            options = item["task_instance"].get("choice_list")
            rows.append(
                {
                    "task": task.folder,
                    "split": "core",
                    "sample_id": item["sample_id"],
                    "question_type": task.normalized_question_type,
                    "choice_list": options,
                    "response": str(item["response"]),
                }
            )
    normalized = tmp_path / "normalized"
    normalized.mkdir()
    pq.write_table(pa.Table.from_pylist(rows), normalized / "samples.parquet")
    done = run_score("--data", normalized, "--preds", preds, "--out", tmp_path / "norm")
    assert done.returncode == 0, done.stderr
    a = json.loads((tmp_path / "raw" / "summary.json").read_text())
    b = json.loads((tmp_path / "norm" / "summary.json").read_text())
    assert a["tasks"] == b["tasks"] and a["errors"].keys() == b["errors"].keys()


def test_cli_without_data_is_a_user_error(tmp_path: Path) -> None:
    (tmp_path / "preds").mkdir()
    done = run_score("--data", tmp_path / "nothing", "--preds", tmp_path / "preds")
    assert done.returncode == 2 and "no DEMON data" in done.stderr and "Traceback" not in done.stderr
