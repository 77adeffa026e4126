"""What `demonlab run` shows a user without running a pipeline: the stage output it reads (DVC's verdict, tqdm bars,
warnings), one console line per stage with an ETA from the last run's durations, runs named for what they are, and
the closing comparison URL opening the evaluated runs in the MLflow UI (headless Chromium). The pipeline itself:
tests/test_pipeline.py."""

from __future__ import annotations

import io
import json
import re
import shutil
from pathlib import Path

import mlflow
import pytest
import yaml
from rich.console import Console
from workspace import ROOT

from components.runtime.console import Events, PipelineConsole, StageOutput
from components.runtime.pipeline_cli import MLFLOW_PORT, look_further
from components.tracking.compare import share_comparison
from components.tracking.runs import pipeline_run_name, run_name, stage_run, write_metrics

BAR = "train vpgc:  {pct:>3}%|#####     | {n}/20 [00:01<00:01, 9.1step/s]"


def test_stage_output_forwards_bars_and_warnings() -> None:
    sink = io.StringIO()
    output = StageOutput("train@synthetic", Events(sink))
    text = "Running stage 'train@synthetic':\n> python -m flows.train vpgc\n"
    text += "\r".join(BAR.format(pct=p, n=n) for p, n in ((0, 0), (50, 10), (100, 20))) + "\n"
    text += "WARNING: a warning for the user\n"
    raw = text.encode()
    for start in range(0, len(raw), 7):  # chunks split lines and bars anywhere
        output.feed(raw[start : start + 7])
    events = [json.loads(line) for line in sink.getvalue().splitlines()]
    bars = [e for e in events if e["event"] == "progress"]
    assert bars[0] == {"event": "progress", "stage": "train@synthetic", "desc": "train vpgc", "n": 0, "total": 20}
    assert bars[-1]["n"] == 20  # the last update always gets through the rate limit
    assert {"event": "warning", "text": "WARNING: a warning for the user"} in events


def test_one_line_per_stage_and_an_eta_from_the_last_durations(tmp_path: Path) -> None:
    stages = ["acquire", "normalize", "train@synthetic"]
    events = [{"event": "plan", "stages": stages}]
    lost = {"event": "end", "stage": "normalize", "outcome": "retrying", "seconds": 1.0, "why": "worker w-1 is gone"}
    for stage, outcome in zip(stages, ("unchanged", "ran", "ran"), strict=True):
        events += [{"event": "start", "stage": stage}, {"event": "warning", "text": "WARNING: once"}]
        events += [{"event": "progress", "stage": stage, "desc": "bar", "n": 1, "total": 2}]
        events += [lost, {"event": "start", "stage": stage}] if stage == "normalize" else []
        events += [{"event": "end", "stage": stage, "outcome": outcome, "seconds": 2.5}]
    durations = tmp_path / "stage-seconds.json"
    screen = io.StringIO()
    view = PipelineConsole(durations, console=Console(file=screen, width=100))
    assert view.follow(json.dumps(e) + "\n" for e in events) == {"unchanged": 1, "retrying": 1, "ran": 2}
    assert screen.getvalue().splitlines() == [
        "WARNING: once",  # a repeated warning is shown once
        "1/3 acquire          unchanged    2.5s",
        "2/3 normalize        retrying     1.0s  (worker w-1 is gone)",  # why it runs again
        "2/3 normalize        ran          2.5s",
        "3/3 train@synthetic  ran          2.5s",
    ]
    assert json.loads(durations.read_text()) == dict.fromkeys(stages, 2.5)

    terminal = io.StringIO()  # a terminal gets the live line too: the running stage and the ETA of all three
    again = PipelineConsole(durations, console=Console(file=terminal, width=100, force_terminal=True))
    again.follow(json.dumps(e) + "\n" for e in events[:4])
    assert "1/3 acquire" in terminal.getvalue() and "ETA 0m 07s" in terminal.getvalue()


@pytest.fixture
def named_workspace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """dvc.yaml with two models, both views and one task group, as a stage under DVC sees it."""
    shutil.copy(ROOT / "dvc.yaml", tmp_path / "dvc.yaml")
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["evaluate"].update(models={"backbone": "b", "vpgc-synthetic": "s"}, views=["images", "blind"])
    params["evaluate"]["groups"] = {"demon": "all"}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    monkeypatch.setenv("DEMONLAB_WORKSPACE", str(tmp_path))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.delenv("DEMONLAB_PARENT_RUN_ID", raising=False)
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.parametrize(
    ("dvc_stage", "name"),
    [
        ("evaluate@vpgc-synthetic-blind-demon", "evaluate vpgc-synthetic blind demon"),
        ("merge@backbone-images", "merge backbone images"),
        ("train@synthetic", "train vpgc-synthetic"),
        ("score@parity", "score parity"),
        ("report", "report"),
        (None, "evaluate-merge"),  # outside DVC: the stage flow's own name
    ],
)
def test_runs_are_named_for_what_they_are(
    named_workspace: Path, monkeypatch: pytest.MonkeyPatch, dvc_stage: str | None, name: str
) -> None:
    if dvc_stage:
        monkeypatch.setenv("DVC_STAGE", dvc_stage)
    else:
        monkeypatch.delenv("DVC_STAGE", raising=False)
    assert run_name("evaluate-merge") == name
    assert re.fullmatch(r"pipeline tiny( [0-9a-f]{7})?", pipeline_run_name("tiny"))


def test_the_closing_lines_link_the_comparison_the_report_and_prefect(
    named_workspace: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ids = []
    for stage in ("merge@vpgc-synthetic-images", "merge@backbone-images"):
        monkeypatch.setenv("DVC_STAGE", stage)
        with stage_run("evaluate-merge", {"out": stage}) as run:
            write_metrics(named_workspace / "m.json", {"parity": {"overall": 9.5 if "vpgc" in stage else 7.25}})
            ids.append(run.info.run_id)
    experiment = mlflow.get_run(ids[0]).info.experiment_id
    result = {"evaluated": ids, "experiment_id": experiment, "flow_run_id": "f", "mlflow_run_id": ids[0],
              "compare_view": share_comparison(experiment, ids)}  # fmt: skip
    compare, report, prefect = look_further(result, None)
    assert report.endswith(f"/#/experiments/{experiment}/runs/{ids[0]}/artifacts/report")
    assert prefect == "this run in Prefect: demonlab server, then http://127.0.0.1:4200/runs/flow-run/f"
    prefix = f"compare the models: demonlab ui, then http://127.0.0.1:{MLFLOW_PORT}/"
    assert compare.startswith(prefix) and " " not in compare.removeprefix(prefix)  # one word to copy

    # the saved view of the evaluated runs; what it shows in a browser: tests/test_pipeline.py
    assert f"#/experiments/{experiment}/runs?viewStateShareKey=demonlab-" in compare
