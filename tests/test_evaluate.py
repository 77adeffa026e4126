"""The evaluation runner on a tiny random VPG-C model and a small mini-DEMON: bundle layout, scores that agree with
`demonlab score`, batching that does not change answers, the response cache (repeat, resume after an interruption),
bad inputs recorded per sample, out-of-memory splitting, merge and compare, the CLI and model specs."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from evaluate_helpers import ScriptedAdapter, mini_normalized, tiny_experiment
from vpgc_tiny import tiny_model

from components.cli import main
from components.demon.registry import category_slug
from components.demon.schema import official_prompt
from components.errors import UserError
from components.evaluation.adapters import Encoded, Request, VPGCAdapter, load_adapter
from components.evaluation.bundle import merge_bundles, read_bundle
from components.evaluation.bundle_report import compare_bundles
from components.evaluation.cache import ResponseCache
from components.evaluation.evaluate import evaluate
from components.evaluation.inference import plan_batches, select_samples, shard
from components.evaluation.runner import score_directory
from components.evaluation.settings import EvalSettings, eval_settings_from_dict, load_eval_settings
from components.experiment import load_experiment
from components.vpgc.checkpoints import save_checkpoint

ROOT = Path(__file__).resolve().parents[1]
FAST = EvalSettings(batch_size=4, max_new_tokens=4)


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return mini_normalized(tmp_path_factory.mktemp("mini"), per_task=1)


@pytest.fixture(scope="module")
def adapter() -> VPGCAdapter:
    return VPGCAdapter("tiny", tiny_model(trained_vpgc=True))


def outputs(folder: Path) -> dict[str, str | None]:
    return {row["uid"]: row["output"] for row in read_bundle(folder)[1]}


# ------------------------------------------------------------------------------------------------ settings


def test_every_experiment_has_a_valid_eval_section():
    for path in sorted((ROOT / "experiments").glob("*.yaml")):
        settings = load_eval_settings(load_experiment(path), path)
        assert settings.decoding == "greedy" and settings.batch_size > 0, path


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({"batch_sise": 4}, "eval.batch_sise: unknown key (did you mean batch_size?)"),
        ({"decoding": "beam"}, "eval.decoding: expected one of 'greedy', 'sample', got 'beam'"),
        ({"batch_size": 0}, "eval.batch_size: expected an integer >= 1, got 0"),
        ({"cache": "yes"}, "eval.cache: expected true or false, got 'yes'"),
        ({"limit": True}, "eval.limit: expected an integer >= 1 or null, got true"),
    ],
)
def test_bad_eval_settings_name_the_key(section, message):
    with pytest.raises(UserError, match=re.escape(message)):
        eval_settings_from_dict(section)


def test_official_prompt_joins_options_like_the_release():
    sample = {"instruction": "Pick one. ", "context": "{image#1}Which?", "choice_list": ["it's red", "blue"]}
    # The release: context += 'Choice list:[\'' + '\', \''.join(choice_list) + '\']. Your answer is:'
    release = (
        "Pick one. {image#1}Which?" + "Choice list:['" + "', '".join(sample["choice_list"]) + "']. Your answer is:"
    )
    assert (
        official_prompt(sample)
        == release
        == "Pick one. {image#1}Which?Choice list:['it's red', 'blue']. Your answer is:"
    )
    assert official_prompt({**sample, "choice_list": None}) == "Pick one. {image#1}Which?"


def test_selection_by_task_category_and_limit(data):
    samples = pd.read_parquet(data / "samples.parquet")
    picked = select_samples(samples, tasks=["nuscenes"], categories_=["multimodal-dialogue"], limit=1)
    assert sorted(picked["task"]) == ["ALFRED", "MMCoQA", "nuScenes"]
    assert category_slug("Multi-Image Reasoning") == "multi-image-reasoning"
    with pytest.raises(UserError, match="unknown categor"):
        select_samples(samples, categories_=["dialogue"])
    with pytest.raises(UserError, match="no DEMON task"):
        select_samples(samples, tasks=["NoSuchTask"])


def test_shards_balance_lengths_and_batches_sort_longest_first():
    lengths = [5, 90, 40, 7, 60, 33, 12, 80]
    items = [Encoded(Request(f"T/core/{i}", []), n) for i, n in enumerate(lengths)]
    ranks = [shard(items, r, 2) for r in range(2)]
    assert sorted(e.request.uid for part in ranks for e in part) == sorted(e.request.uid for e in items)
    assert [sorted(e.length for e in part) for part in ranks] == [[7, 33, 60, 90], [5, 12, 40, 80]]
    assert all(part == [e for e in items if e in part] for part in ranks)  # each keeps the data order
    assert [[e.length for e in b] for b in plan_batches(items, 3, True)] == [[90, 80, 60], [40, 33, 12], [7, 5]]
    assert [[e.length for e in b] for b in plan_batches(items, 3, False)][0] == [5, 90, 40]


# ------------------------------------------------------------------------------------------------- bundle


def test_bundle_layout_and_scores_agree_with_demonlab_score(data, adapter, tmp_path):
    results = evaluate(adapter, data, tmp_path / "b", FAST.replace(cache=False), progress=False)
    samples = pd.read_parquet(data / "samples.parquet")
    assert results["counts"]["samples"] == len(samples) == 29 and results["counts"]["errors"] == 0
    for name in ("results.json", "samples.jsonl", "report.md", "categories.png"):
        assert (tmp_path / "b" / name).stat().st_size > 0
    # pred.json in the official layout, scored by the existing scorer, gives the bundle's task scores.
    for scorer in ("parity", "strict"):
        summary = score_directory(data, tmp_path / "b", scorer, tmp_path / f"scored-{scorer}")
        assert not summary["errors"]
        for task, row in summary["tasks"].items():
            assert results["scores"][scorer]["tasks"][task]["score"] == row["score"], (scorer, task)
    rows = read_bundle(tmp_path / "b")[1]
    first = rows[0]
    assert set(first) >= {"prompt_sha256", "output", "answer", "scores", "response", "rule", "error"}
    assert all(len(r["prompt_sha256"]) == 64 for r in rows)
    report = (tmp_path / "b" / "report.md").read_text()
    assert "paper V-7B" in report and "| Multi-Image Reasoning (8/8) |" in report
    assert results["provenance"]["versions"]["torch"] == torch.__version__
    assert results["data"]["samples_sha256"] and results["model"]["fingerprint"] == adapter.fingerprint


def test_batches_sorted_by_length_answer_like_one_by_one(data, adapter, tmp_path):
    tasks = ["AESOP", "NLVR2", "TQA", "ALFRED", "DocVQA", "CLEVR-Change"]  # 1 to 6 images, varied lengths
    batched = evaluate(adapter, data, tmp_path / "batched", FAST.replace(cache=False), tasks=tasks, progress=False)
    single = FAST.replace(cache=False, batch_size=1, sort_by_length=False)
    evaluate(adapter, data, tmp_path / "single", single, tasks=tasks, progress=False)
    assert batched["run"]["timing"]["batches"] == 2
    assert outputs(tmp_path / "batched") == outputs(tmp_path / "single")


# -------------------------------------------------------------------------------------------------- cache


def test_repeat_is_free_and_settings_are_part_of_the_key(data, adapter, tmp_path):
    cache = tmp_path / "responses.sqlite"
    first = evaluate(adapter, data, tmp_path / "one", FAST, cache_path=cache, progress=False)
    again = evaluate(adapter, data, tmp_path / "two", FAST, cache_path=cache, progress=False)
    assert first["run"]["generated"] == 29 and again["run"]["cached"] == 29 and again["run"]["generated"] == 0
    assert outputs(tmp_path / "one") == outputs(tmp_path / "two")
    # a bundle is what was answered, not where the answers came from: the cached run writes the same bytes
    for name in ("results.json", "samples.jsonl", "report.md", "TQA/pred.json"):
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes(), name
    assert first["scores"] == again["scores"]
    longer = evaluate(adapter, data, tmp_path / "three", FAST.replace(max_new_tokens=5), cache_path=cache,
                      tasks=["TQA"], progress=False)  # fmt: skip
    assert longer["run"]["cached"] == 0
    assert ResponseCache(cache).count(adapter.fingerprint) == 30


def test_an_interrupted_evaluation_resumes_without_recomputing(data, adapter, tmp_path):
    cache = tmp_path / "responses.sqlite"
    seen = []

    def stop_after_two_batches(n: int) -> None:
        seen.append(n)
        if len(seen) == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        evaluate(adapter, data, tmp_path / "b", FAST, cache_path=cache, progress=False, on_batch=stop_after_two_batches)
    assert not (tmp_path / "b" / "results.json").exists()
    assert ResponseCache(cache).count() == 8
    resumed = evaluate(adapter, data, tmp_path / "b", FAST, cache_path=cache, progress=False)
    assert resumed["run"]["cached"] == 8 and resumed["run"]["generated"] == 21
    evaluate(adapter, data, tmp_path / "fresh", FAST.replace(cache=False), progress=False)
    assert outputs(tmp_path / "b") == outputs(tmp_path / "fresh")
    assert len(read_bundle(tmp_path / "b")[1]) == 29


# ----------------------------------------------------------------------------------------------- bad input


def test_broken_images_and_empty_answers_are_recorded_per_sample(tmp_path):
    data = mini_normalized(tmp_path, per_task=1)
    samples = pd.read_parquet(data / "samples.parquet").set_index("task")
    root = tmp_path / "raw"
    (root / samples.loc["TQA", "images"][0]).write_bytes(b"not an image")
    (root / samples.loc["NLVR2", "images"][1]).unlink()
    silent = ScriptedAdapter(answer=lambda uid: "" if uid.startswith("VIST/") else "image a")
    results = evaluate(silent, data, tmp_path / "b", FAST.replace(cache=False), progress=False)
    rows = {r["task"]: r for r in read_bundle(tmp_path / "b")[1]}
    assert "cannot be decoded" in rows["TQA"]["error"] and "TQA" in rows["TQA"]["error"]
    assert "not found" in rows["NLVR2"]["error"] and rows["NLVR2"]["output"] is None
    assert rows["VIST"]["empty"] and rows["VIST"]["error"] is None and rows["VIST"]["scores"]["parity"] == 0
    assert results["counts"] == {**results["counts"], "samples": 29, "errors": 2, "empty": 1, "answered": 27}
    assert {e["uid"] for e in results["sample_errors"]} == {rows["TQA"]["uid"], rows["NLVR2"]["uid"]}
    preds = json.loads((tmp_path / "b" / "TQA" / "pred.json").read_text())
    assert preds[0]["pred_response"] == ""  # scored as no answer, as the release would
    assert "Samples without an answer (2" in (tmp_path / "b" / "report.md").read_text()


def test_out_of_memory_splits_the_batch_and_records_what_fails_alone(data, tmp_path):
    samples = pd.read_parquet(data / "samples.parquet")
    victim = samples["uid"].iloc[3]
    model = ScriptedAdapter(max_batch=2, oom_uids=[victim])
    results = evaluate(model, data, tmp_path / "b", FAST.replace(batch_size=8, cache=False), progress=False)
    rows = {r["uid"]: r for r in read_bundle(tmp_path / "b")[1]}
    assert "out of memory even alone" in rows[victim]["error"]
    assert all(r["output"] == f"answer of {uid}" for uid, r in rows.items() if uid != victim)
    assert max(len(b) for b in model.batches) == 8 and results["run"]["timing"]["oom_splits"] > 0
    fitted = [u for b in model.batches if len(b) <= 2 and victim not in b for u in b]
    assert sorted(fitted) == sorted(u for u in rows if u != victim)  # each answered once, in a batch that fit


def test_sampling_is_seeded_per_sample(data, adapter, tmp_path):
    sample = FAST.replace(decoding="sample", temperature=1.0, top_p=0.9, cache=False, batch_size=4)
    tasks = ["AESOP", "VIST", "ALFRED"]
    evaluate(adapter, data, tmp_path / "a", sample, tasks=tasks, progress=False)
    evaluate(adapter, data, tmp_path / "b", sample.replace(batch_size=1), tasks=tasks, progress=False)
    evaluate(adapter, data, tmp_path / "c", sample.replace(seed=1), tasks=tasks, progress=False)
    assert outputs(tmp_path / "a") == outputs(tmp_path / "b") != outputs(tmp_path / "c")
    results = json.loads((tmp_path / "a" / "results.json").read_text())
    assert '"decoding": "sample"' in results["generation"]["key"] and results["provenance"]["seeds"]["seed"] == 0


# ----------------------------------------------------------------------------------------- merge, compare


def test_group_bundles_merge_into_the_whole_run(data, adapter, tmp_path):
    settings = FAST.replace(cache=False)
    whole = evaluate(adapter, data, tmp_path / "whole", settings, progress=False)
    groups = ["multimodal-dialogue", "visual-storytelling", "visual-relation-inference", "multimodal-cloze",
              "knowledge-grounded-qa", "text-rich-images-qa", "multi-image-reasoning"]  # fmt: skip
    for group in groups:
        evaluate(adapter, data, tmp_path / group, settings, categories=[group], progress=False)
    merged = merge_bundles([tmp_path / g for g in groups], tmp_path / "merged")
    assert merged["scores"] == whole["scores"]
    assert outputs(tmp_path / "merged") == outputs(tmp_path / "whole")
    for task in whole["counts"]["tasks"]:
        assert (tmp_path / "merged" / task / "pred.json").read_text() == (
            tmp_path / "whole" / task / "pred.json"
        ).read_text()

    other = ScriptedAdapter()
    evaluate(other, data, tmp_path / "other", settings, categories=["multimodal-dialogue"], progress=False)
    with pytest.raises(UserError, match="model.fingerprint differ"):
        merge_bundles([tmp_path / "visual-storytelling", tmp_path / "other"], tmp_path / "bad")

    record = compare_bundles([("tiny", tmp_path / "whole"), ("scripted", tmp_path / "other")], tmp_path / "cmp")
    table = (tmp_path / "cmp" / "compare.md").read_text()
    assert "| category | tiny | scripted |" in table and (tmp_path / "cmp" / "compare.png").is_file()
    assert "| category | paper: Ablation 1 |" in table and "Data: mini-DEMON (procedural), 1 sample per task" in table
    assert record["scores"]["parity"]["categories"]["tiny"] == {
        c: r["score_x100"] for c, r in whole["scores"]["parity"]["categories"].items()
    }


# ------------------------------------------------------------------------------------------ CLI and specs


def test_cli_evaluates_an_experiment_config_and_reports_mistakes(data, tmp_path, capsys):
    experiment = tiny_experiment(tmp_path)
    args = ["evaluate", "--model", str(experiment), "--data", str(data), "--tasks", "TQA,AESOP", "--out"]
    cache = ["--cache", str(tmp_path / "c.sqlite")]
    assert main([*args, str(tmp_path / "one"), *cache]) == 0
    assert "2 samples: 2 generated" in capsys.readouterr().out
    # The random parts of the tiny config come from the eval seed: a second process-level load is the same model.
    assert main([*args, str(tmp_path / "two"), *cache, "--vpgc", "on"]) == 0
    assert "2 samples: 0 generated, 2 cached" in capsys.readouterr().out
    results = json.loads((tmp_path / "one" / "results.json").read_text())
    assert results["generation"]["batch_size"] == 4 and results["generation"]["max_new_tokens"] == 6  # eval: section
    assert main([*args, str(tmp_path / "off"), *cache, "--vpgc", "off"]) == 0
    assert "2 samples: 2 generated" in capsys.readouterr().out  # VPG-C off is another model

    assert main(["evaluate", "--model", str(experiment), "--data", str(data)]) == 2
    assert "needs --out" in capsys.readouterr().err
    assert main(["evaluate", "--model", "nothing/here", "--data", str(data), "--out", str(tmp_path / "x")]) == 2
    assert "model 'nothing/here' not found" in capsys.readouterr().err
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"model": {}, "eval": {"batchsize": 2}}))
    assert main(["evaluate", "--model", str(bad), "--data", str(data), "--out", str(tmp_path / "x")]) == 2
    assert "eval.batchsize: unknown key (did you mean batch_size?), got 2" in capsys.readouterr().err

    assert main(["evaluate", "merge", "--bundle", str(tmp_path / "one"), "--out", str(tmp_path / "m")]) == 0
    assert main(["evaluate", "compare", "--bundle", f"on={tmp_path / 'one'}", "--bundle", f"off={tmp_path / 'off'}",
                 "--out", str(tmp_path / "cmp")]) == 0  # fmt: skip
    assert main(["evaluate", "compare", "--bundle", str(tmp_path / "one"), "--out", str(tmp_path / "cmp")]) == 2


def test_checkpoint_folders_load_with_vpgc_switched(tmp_path):
    torch.manual_seed(0)
    model = tiny_model(trained_vpgc=True)
    save_checkpoint(model, tmp_path / "ckpt")
    on = load_adapter(str(tmp_path / "ckpt"))
    off = load_adapter(str(tmp_path / "ckpt"), vpgc=False)
    assert on.model.vpgc_enabled and not off.model.vpgc_enabled
    assert torch.equal(on.model.vpgc.output_proj.weight, model.vpgc.output_proj.weight)
    assert on.fingerprint != off.fingerprint
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "config.json").write_text("{}")
    with pytest.raises(UserError, match="pass it as hf:"):
        load_adapter(str(tmp_path / "hf"))
    with pytest.raises(UserError, match="--vpgc applies to VPG-C models only"):
        load_adapter("hf:whatever", vpgc=True)


def test_mlflow_model_references_resolve_to_checkpoints(tmp_path, monkeypatch):
    from components.tracking.models import log_checkpoint_model
    from components.tracking.runs import stage_run

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setenv("DEMONLAB_WORKSPACE", str(tmp_path))
    model = tiny_model(trained_vpgc=True)
    save_checkpoint(model, tmp_path / "ckpt")
    with stage_run("train", {}):
        uri = log_checkpoint_model(tmp_path / "ckpt", "tiny-vpgc", register_as="tiny-vpgc", alias="candidate")
    loaded = load_adapter(uri, vpgc=False)
    assert uri == "models:/tiny-vpgc@candidate" and not loaded.model.vpgc_enabled
    assert torch.equal(loaded.model.vpgc.guidance_proj.weight, model.vpgc.guidance_proj.weight)
