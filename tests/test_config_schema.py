"""Every config mistake is one line naming its key, found before any compute: through `demonlab check` and through
`demonlab run` (which validates params.yaml and every experiment its stages use before anything starts)."""

from __future__ import annotations

import copy
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from components import cli
from components.params import params_problems
from components.runtime import pipeline_cli

ROOT = Path(__file__).resolve().parents[1]
TINY = yaml.safe_load((ROOT / "experiments/tiny.yaml").read_text())
PARAMS = yaml.safe_load((ROOT / "params.yaml").read_text())
REMOVE = object()

# (dotted key in experiments/tiny.yaml, the broken value, the key path the one-line problem must start with)
BROKEN: list[tuple[str, Any, str]] = [
    # model, LLM, vision, VPG (Q-Former), prompt, freeze
    ("model.vpgc_layer", "x", "model.vpgc_layer: expected an integer >= 1 or null"),
    ("model.vpgc_layer", 30, "model.vpgc_layer: must be a block of the LLM"),
    ("model.vpgc_layr", 3, "model.vpgc_layr: unknown key (did you mean vpgc_layer?)"),
    ("model.vpgc_enabled", "yes", "model.vpgc_enabled: expected true or false"),
    ("model.name", REMOVE, "model.name: required"),
    ("model.llm.dtype", "fp16", "model.llm.dtype: expected one of"),
    ("model.llm.arch.num_hidden_layers", "30", "model.llm.arch.num_hidden_layers: required (an integer >= 1)"),
    ("model.vision.kind", "resnet", "model.vision.kind: expected one of"),
    ("model.vision.mean", [0.5, 0.5], "model.vision.mean: expected a list of 3"),
    ("model.vision.image_size", 224.5, "model.vision.image_size: expected an integer >= 1"),
    ("model.vpg.num_query_tokens", None, "model.vpg.num_query_tokens: expected an integer >= 1, got null"),
    ("model.vpg.qformer.encoder_hidden_size", 1408, "model.vpg.qformer.encoder_hidden_size: must match"),
    ("model.vpg.weights", "blip2.pth", "model.vpg.qformer.hidden_size: vpg.weights names BLIP-2's Q-Former"),
    ("model.prompt.template", "alpaca", "model.prompt.template: expected one of"),
    ("model.prompt.max_new_tokens", "64", "model.prompt.max_new_tokens: expected an integer >= 1 (a number in"),
    ("model.freeze.llm", "maybe", "model.freeze.llm: expected one of 'frozen', 'trainable'"),
    ("model.freeze.decoder", "frozen", "model.freeze.decoder: unknown key"),
    # synth and its steps
    ("synth.count", "320", "synth.count: expected an integer >= 1 or null"),
    ("synth.chunk_size", 0, "synth.chunk_size: expected an integer >= 1"),
    ("synth.edit_types", {"mvoe": 1}, "synth.edit_types.mvoe: unknown key"),
    ("synth.source.kind", "photos", "synth.source.kind: expected one of"),
    ("synth.source.objects", [2], "synth.source.objects: expected a list of 2"),
    ("synth.selection.max_area", 1.5, "synth.selection.max_area: expected a number >= 0 and <= 1"),
    ("synth.filter.min_inside_change", "0.05", "synth.filter.min_inside_change: expected a number"),
    ("synth.planner.kind", "transformers", "synth.planner.model: the transformers planner needs a model"),
    ("synth.segmenter.sizee", 1, "synth.segmenter.sizee: unknown key"),
    # train and each stage
    ("train.vpgc.lr", "fast", "train.vpgc.lr: expected a number > 0, got 'fast'"),
    ("train.vpgc.lr", "1e-4", "train.vpgc.lr: expected a number > 0 (YAML reads 1e-4 as text: write 1.0e-4)"),
    ("train.vpgc.lr", [1, 2], "train.vpgc.lr: expected a number > 0, got [1, 2]"),
    ("train.align.mix", {"NoSuchTask": 3}, "train.align.mix.NoSuchTask: no such task"),
    ("train.align.mix", {"SynthCaptoin": 3}, "train.align.mix.SynthCaptoin: no such task (did you mean SynthCaption?)"),
    ("train.vpgc.mix", {"SynthCaption": 0.5}, "train.vpgc.mix.SynthCaption: expected an integer >= 1"),
    ("train.vpgc.mix", {"SynthCaption": {"samples": 4}}, "train.vpgc.mix.SynthCaption.data: required"),
    ("train.vpgc.mix", {}, "train.vpgc.mix: name at least one task"),
    ("train.vpgc.steps", [16], "train.vpgc.steps: expected an integer >= 1, got [16]"),
    ("train.vpgc.steps", REMOVE, "train.vpgc.steps: required"),
    ("train.vpgc.micro_batch", 2.5, "train.vpgc.micro_batch: expected an integer >= 1, got 2.5"),
    ("train.vpgc.warmup_steps", 16, "train.vpgc.warmup_steps: the warm-up must be shorter than the run"),
    ("train.align.min_lr", 1.0, "train.align.min_lr: must be at most lr"),
    ("train.align.betas", [0.9], "train.align.betas: expected a list of 2"),
    ("train.vpgc.learning_rate", 1e-4, "train.vpgc.learning_rate: unknown key"),
    ("train.precision", "fp8", "train.precision: expected one of 'auto', 'float32', 'bfloat16'"),
    ("train.heldout", -1, "train.heldout: expected an integer >= 0, got -1"),
    ("train.strategy", "zero3", "train.strategy: expected one of"),
    # eval
    ("eval.decoding", "beam", "eval.decoding: expected one of 'greedy', 'sample'"),
    ("eval.top_p", 1.5, "eval.top_p: expected a number > 0 and <= 1, got 1.5"),
    ("eval.batch_size", "16", "eval.batch_size: expected an integer >= 1"),
    ("eval.limit", True, "eval.limit: expected an integer >= 1 or null, got true"),
    ("eval.cache", "yes", "eval.cache: expected true or false"),
    # the document
    ("evall", {}, "evall: unknown key (did you mean eval?)"),
]
IDS = [f"{key}={'(removed)' if value is REMOVE else repr(value)}"[:60] for key, value, _ in BROKEN]


def broken(key: str, value: Any) -> dict:
    document = copy.deepcopy(TINY)
    *parents, leaf = key.split(".")
    node = document
    for name in parents:
        node = node[name]
    if value is REMOVE:
        del node[leaf]
    else:
        node[leaf] = value
    return document


def test_the_shipped_configs_are_valid(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(ROOT)
    assert params_problems(PARAMS) == []


@pytest.mark.parametrize(("key", "value", "line"), BROKEN, ids=IDS)
def test_check_names_the_key(key: str, value: Any, line: str, tmp_path: Path, capsys) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text(yaml.safe_dump(broken(key, value)))
    assert cli.main(["check", "--config", str(path)]) == 2
    problems = [p.removeprefix("  - ") for p in capsys.readouterr().err.splitlines()[1:]]
    assert len(problems) == 1 and problems[0].startswith(line), problems


@pytest.fixture
def workspace(tmp_path: Path, monkeypatch) -> Path:
    """A project folder `demonlab run` accepts, in which starting anything (a server, DVC, a stage) fails the test."""
    shutil.copy(ROOT / "dvc.yaml", tmp_path / "dvc.yaml")
    shutil.copytree(ROOT / "experiments", tmp_path / "experiments")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(PARAMS, sort_keys=False))
    monkeypatch.chdir(tmp_path)

    def started(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("demonlab run started something before validating")

    for name in ("_up_to_date", "_prefect_api", "_follow", "_environment"):
        monkeypatch.setattr(pipeline_cli, name, started)
    return tmp_path


@pytest.mark.parametrize(("key", "value", "line"), BROKEN, ids=IDS)
def test_run_refuses_before_anything_starts(key: str, value: Any, line: str, workspace: Path, capsys) -> None:
    (workspace / "experiments/tiny.yaml").write_text(yaml.safe_dump(broken(key, value)))
    assert cli.main(["run"]) == 2
    err = capsys.readouterr().err
    assert f"experiments/tiny.yaml (experiment): {line}" in err and "Traceback" not in err, err
    assert not (workspace / "logs").exists() and not (workspace / ".prefect").exists()


@pytest.mark.parametrize(
    ("assignment", "line"),
    [
        (
            "train.variants.captions={mix: {SynthCaptoin: 8}}",
            "experiments/tiny.yaml (train.variants.captions): "
            "train.vpgc.mix.SynthCaptoin: no such task (did you mean SynthCaption?)",
        ),
        ("train.variants.captions={lr: fast}", "(train.variants.captions): train.vpgc.lr: expected a number > 0"),
        ("evaluate.batch_size=0", "evaluate.batch_size: expected an integer >= 1 or null, got 0"),
        ("evaluate.views=[images, blnd]", "evaluate.views[1]: expected one of 'images', 'blind' (did you mean blind?)"),
        ("train.registered_variant=synthetc", "train.registered_variant: not one of train.variants"),
        ("experiment=tny", "experiment: no experiments/tny.yaml (did you mean tiny?)"),
        ("synth.workers=two", "synth.workers: expected an integer >= 1, got 'two'"),
        ("data.split=all", "data.split: expected one of 'core', 'full'"),
        ("evaluate.models.backbone={model: x, vpgc: maybe}", "evaluate.models.backbone.vpgc: expected one of"),
    ],
)
def test_run_validates_params_and_every_experiment_use(assignment: str, line: str, workspace: Path, capsys) -> None:
    assert cli.main(["run", "--set", assignment]) == 2
    err = capsys.readouterr().err
    assert line in err and "Traceback" not in err, err


def test_outside_a_checkout_the_experiment_problem_says_where_to_run(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)  # no experiments/ here
    assert "experiment: no experiments/tiny.yaml (no experiments/ folder here: run from the repository root)" in (
        params_problems(PARAMS)
    )


def test_every_problem_is_listed_at_once(tmp_path: Path, capsys) -> None:
    document = broken("train.vpgc.lr", "fast")
    document["model"]["vpgc_layer"] = "x"
    document["eval"]["top_p"] = 2
    document["synth"]["source"]["kind"] = "photos"
    path = tmp_path / "broken.yaml"
    path.write_text(yaml.safe_dump(document))
    assert cli.main(["check", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert "4 problem(s)" in err
    assert all(key in err for key in ("train.vpgc.lr:", "model.vpgc_layer:", "eval.top_p:", "synth.source.kind:"))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("model: {name: tiny\n", "broken.yaml:2:1: not valid YAML"),
        ("", "broken.yaml: the file is empty"),
        ("- model\n- train\n", "broken.yaml: expected a mapping of sections"),
    ],
)
def test_an_unreadable_file_names_the_file(text: str, message: str, tmp_path: Path, capsys) -> None:
    (tmp_path / "broken.yaml").write_text(text)
    assert cli.main(["check", "--config", str(tmp_path / "broken.yaml")]) == 2
    assert message in capsys.readouterr().err


def test_every_command_validates_before_it_loads(tmp_path: Path, capsys) -> None:
    """`train`, `evaluate`, `synth`, `chat`, `model summary`: the same one line, before any model or data."""
    path = tmp_path / "broken.yaml"
    path.write_text(yaml.safe_dump(broken("model.vpg.num_query_tokens", None)))
    out, config = str(tmp_path / "out"), str(path)
    commands = [
        ["train", "--config", config, "--stage", "vpgc", "--data", str(tmp_path / "none"), "--out", out],
        ["evaluate", "--model", config, "--data", str(tmp_path / "none"), "--out", out],
        ["synth", "generate", "--config", config, "--out", out],
        ["chat", "hello", "--config", config],
        ["model", "summary", "--config", config],
    ]
    for command in commands:
        assert cli.main(command) == 2, command
        assert "model.vpg.num_query_tokens: expected an integer >= 1, got null" in capsys.readouterr().err, command
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_a_stage_under_dvc_refuses_a_broken_experiment(workspace: Path) -> None:
    """The stage's own process (as `dvc repro` runs it) exits 2 with the key named, before its Prefect flow."""
    (workspace / "experiments/tiny.yaml").write_text(yaml.safe_dump(broken("train.align.mix", {"NoSuchTask": 3})))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("PREFECT_API_URL", None)
    done = subprocess.run([sys.executable, "-m", "flows.train", "align"], env=env, capture_output=True, text=True)
    assert done.returncode == 2, done.stderr[-2000:]
    assert "train.align.mix.NoSuchTask: no such task" in done.stderr and "Traceback" not in done.stderr


def test_the_schema_docs_are_generated_from_the_schema() -> None:
    sys.path.insert(0, str(ROOT / "scripts"))
    from build_config_docs import OUT, render

    assert OUT.read_text(encoding="utf-8") == render(), "docs/config.md is stale: python scripts/build_config_docs.py"
