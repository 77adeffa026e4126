"""`demonlab check`: every shipped experiment is whole once its files are in place, and fails clearly without one;
the caption stream a mix entry reads from its own folder."""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
import pytest
import yaml
from train_helpers import write_synth_folder

from components import cli
from components.check import check_experiment
from components.errors import UserError
from components.experiment import load_experiment
from components.training.config import mix_folders
from components.training.data import TrainData

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENTS = sorted((ROOT / "experiments").glob("*.yaml"))
# (dotted key, what the experiment expects there): the placeholders a researcher replaces by downloads
PLACES = (
    ("model.llm.source", "folder"),
    ("model.vision.weights", "file"),
    ("model.vpg.weights", "file"),
    ("model.checkpoint", "file"),
    ("synth.segmenter.model", "folder"),
    ("synth.editor.model", "folder"),
    ("synth.filter.model", "folder"),
)


def lookup(document: dict, dotted: str) -> object:
    value: object = document
    for key in dotted.split("."):
        value = value.get(key) if isinstance(value, dict) else None
    return value


def task_folder(folder: Path, counts: dict[str, int]) -> Path:
    """A folder whose samples.parquet holds `counts` rows per task (all `check` reads is the task column)."""
    folder.mkdir(parents=True, exist_ok=True)
    pd.DataFrame({"task": [t for t, n in counts.items() for _ in range(n)]}).to_parquet(folder / "samples.parquet")
    return folder


def materialise(experiment: Path, root: Path) -> None:
    """Every file and folder the experiment names, as placeholders under `root` (the working directory)."""
    document = load_experiment(experiment)
    for dotted, kind in PLACES:
        value = lookup(document, dotted)
        if not isinstance(value, str) or value.startswith("package:"):
            continue
        path = root / value
        if kind == "folder":
            path.mkdir(parents=True, exist_ok=True)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.touch()
    shards = lookup(document, "synth.source.shards")
    if isinstance(shards, str):
        (root / shards.replace("*", "000000")).parent.mkdir(parents=True, exist_ok=True)
        (root / shards.replace("*", "000000")).touch()
    for stage in ("align", "vpgc"):
        for task, folder in mix_folders(lookup(document, f"train.{stage}.mix") or {}).items():
            task_folder(root / folder, {task: 500_000})


@pytest.mark.parametrize("experiment", EXPERIMENTS, ids=[p.stem for p in EXPERIMENTS])
def test_every_shipped_experiment_is_whole(experiment: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # nothing from this machine's cache counts
    materialise(experiment, tmp_path)
    plan, problems = check_experiment(experiment)
    assert problems == []
    assert any(line.startswith("train total: ~") and "GPU-hours" in line for line in plan)
    assert any(line.startswith("evaluate: 29 DEMON-Core tasks in 7 categories") for line in plan)


def test_the_paper_recipe_plan(tmp_path: Path, monkeypatch, capsys) -> None:
    experiment = ROOT / "experiments/vicuna7b.yaml"
    monkeypatch.chdir(tmp_path)
    materialise(experiment, tmp_path)
    data = task_folder(tmp_path / "synth", {"SynthDifference": 64_064})
    assert cli.main(["check", "--config", str(experiment), "--data", str(data)]) == 0
    out = capsys.readouterr().out
    assert "train vpgc: 18,000 steps x 88 samples" in out
    assert "SynthDifference: 24/step, 432,000 drawn" in out and "(64,000 after 64 held out: 6.75 epochs)" in out
    assert "SynthCaption: 64/step, 1,152,000 drawn from data/cc3m-captions" in out
    hours = float(re.search(r"train total: ~([\d.]+) GPU-hours", out).group(1))
    assert 3 < hours < 20  # the paper: ~7 h on one A100
    assert "synth: webdataset source, 32,000 items, 3 edit(s) each: at most 96,000 pairs" in out


def test_missing_paths_fail_with_every_problem_listed(tmp_path: Path, monkeypatch, capsys) -> None:
    experiment = ROOT / "experiments/vicuna7b.yaml"
    monkeypatch.chdir(tmp_path)
    materialise(experiment, tmp_path)
    (tmp_path / "checkpoints/eva_vit_g.pth").unlink()
    (tmp_path / "data/cc3m-captions/samples.parquet").unlink()
    data = task_folder(tmp_path / "synth", {"SynthDifference": 10})
    assert cli.main(["check", "--config", str(experiment), "--data", str(data)]) == 2
    err = capsys.readouterr().err
    assert "3 problem(s)" in err
    assert "model.vision.weights: checkpoints/eva_vit_g.pth does not exist" in err
    assert "train.vpgc.mix.SynthCaption.data: data/cc3m-captions has no samples.parquet" in err
    assert "has 10 SynthDifference samples, not more than train.heldout = 64" in err


def test_a_hub_id_must_already_be_in_the_cache(tmp_path: Path, monkeypatch) -> None:
    experiment = ROOT / "experiments/llama2-7b.yaml"
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    materialise(experiment, tmp_path)
    (tmp_path / "meta-llama/Llama-2-7b-chat-hf").rmdir()
    problems = check_experiment(experiment)[1]
    assert problems == [
        "model.llm.source: meta-llama/Llama-2-7b-chat-hf is neither a local path nor a hub model in the Hugging "
        "Face cache; fix the path, or download the model first (docs/model.md, docs/synth.md)"
    ]
    (tmp_path / "hf/hub/models--meta-llama--Llama-2-7b-chat-hf/snapshots/0123").mkdir(parents=True)
    assert check_experiment(experiment)[1] == []


def test_every_section_is_validated_at_once(tmp_path: Path) -> None:
    document = yaml.safe_load((ROOT / "experiments/tiny.yaml").read_text())
    document["train"]["vpgc"]["log_every"] = 1000
    document["synth"]["segmenter"]["sizee"] = 1
    document["eval"]["prompt"] = "release"  # tiny's ChatML template has no release form
    document["extra"] = {}
    path = tmp_path / "broken.yaml"
    path.write_text(yaml.safe_dump(document))
    problems = check_experiment(path)[1]
    expected = (
        "extra: unknown key",
        "synth.segmenter.sizee: unknown key",
        "train.vpgc.log_every: 1000 is more than the 16 steps",
        "eval.prompt: the release prompt exists",
    )
    assert len(problems) == len(expected)
    assert all(any(text in problem for problem in problems) for text in expected)
    document["model"]["vpgc_layr"] = 3  # without a valid model the budget is still checked, the estimate is not
    path.write_text(yaml.safe_dump(document))
    plan, problems = check_experiment(path)
    assert len(problems) == len(expected) and any(
        p.startswith("model.vpgc_layr: unknown key (did you mean vpgc_layer?)") for p in problems
    )
    assert "train total: ~n/a GPU-hours (no valid model)" in plan


def test_a_mix_task_reads_its_own_folder(tmp_path: Path) -> None:
    pairs = write_synth_folder(tmp_path / "pairs", differences=12, captions=12, seed=0)
    captions = write_synth_folder(tmp_path / "captions", differences=0, captions=12, seed=1)
    mix = {"SynthDifference": 2, "SynthCaption": {"samples": 3, "data": str(captions)}}
    data = TrainData(pairs, mix, heldout=2, seed=0)
    assert data.global_batch_size == 5 and data.sizes() == {"SynthDifference": 10, "SynthCaption": 10, "heldout": 4}
    examples = [e for step in range(4) for e in data.global_batch(step)] + data.heldout_examples()
    for example in examples:
        folder = captions if example.task == "SynthCaption" else pairs
        assert all(Path(image).is_relative_to(folder.resolve()) and Path(image).is_file() for image in example.images)
    # the caption task keeps its own seeded walk and held-out rows: what the folder alone gives it
    alone = TrainData(captions, {"SynthCaption": 3}, heldout=2, seed=0)
    for step in range(4):
        walked = sorted(e.uid for e in data.global_batch(step) if e.task == "SynthCaption")
        assert sorted(e.uid for e in alone.global_batch(step)) == walked
    assert {e.uid for e in data.heldout_examples() if e.task == "SynthCaption"} == {
        e.uid for e in alone.heldout_examples()
    }
    # resuming: a fresh loader's step 3 is the step 3 of the uninterrupted walk (the data position is the step);
    # rank counts: every rank builds the same global batch and takes its slice (the recipe's split), so the
    # slices of 1 and of 5 ranks hold the same samples
    fresh = TrainData(pairs, mix, heldout=2, seed=0)
    batches = [[(e.uid, e.crop_seed) for e in data.global_batch(step)] for step in range(4)]
    assert [(e.uid, e.crop_seed) for e in fresh.global_batch(3)] == batches[3]
    ranks = [TrainData(pairs, mix, heldout=2, seed=0).global_batch(2)[rank : rank + 1] for rank in range(5)]
    assert [(e.uid, e.crop_seed) for part in ranks for e in part] == batches[2]
    with pytest.raises(UserError, match=r"captions: the mix names task\(s\) \['SynthDifference'\]"):
        TrainData(pairs, {"SynthDifference": {"samples": 2, "data": str(captions)}}, heldout=2, seed=0)
