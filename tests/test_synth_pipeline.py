"""The whole generator: outputs in the unified schema and the training contract, exact accounting, determinism,
workers == serial, resuming after a kill, bad inputs, the real backends together, the CLI and the Prefect flow."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml
from synth_helpers import (
    chat_server,
    photo_folder,
    synth_config,
    tiny_clip,
    tiny_inpainting,
    tiny_model_doc,
    tiny_sam,
    write_experiment,
)

from components.demon.normalize import load_samples
from components.demon.schema import COLUMNS
from components.synth.config import EDIT_TYPES, synth_config_from_dict
from components.synth.pipeline import generate

ROOT = Path(__file__).resolve().parents[1]
DEMONLAB = str(Path(sys.executable).parent / "demonlab")


def same_outputs(a: Path, b: Path) -> None:
    """Two output folders hold the same data: samples, edits, images and the report, byte for byte (how each run
    went, its seconds and resumed chunks, is in the returned report only)."""
    pd.testing.assert_frame_equal(pd.read_parquet(a / "samples.parquet"), pd.read_parquet(b / "samples.parquet"))
    assert (a / "edits.jsonl").read_text() == (b / "edits.jsonl").read_text()
    names = sorted(p.name for p in (a / "images").iterdir())
    assert names == sorted(p.name for p in (b / "images").iterdir())
    assert all((a / "images" / n).read_bytes() == (b / "images" / n).read_bytes() for n in names)
    assert (a / "report.json").read_bytes() == (b / "report.json").read_bytes()
    assert (a / "samples.parquet").read_bytes() == (b / "samples.parquet").read_bytes()


def check_accounting(report: dict) -> None:
    inputs = report["inputs"]
    assert inputs["used"] + inputs["skipped"] == inputs["total"]
    assert sum(inputs["skipped_by_code"].values()) == inputs["skipped"] == len(report["skipped"])
    for counts in report["edits"].values():
        assert counts["kept"] + counts["rejected"] == counts["tried"]
        assert sum(counts["rejected_by_code"].values()) == counts["rejected"]
    totals = report["totals"]
    assert totals["tried"] == sum(c["tried"] for c in report["edits"].values())
    assert totals["samples"] == totals["pairs"] + totals["captions"]


def test_procedural_generation_writes_the_training_contract_and_is_deterministic(tmp_path: Path) -> None:
    config = synth_config(count=24, edits_per_image=2)
    report = generate(config, tiny_model_doc(), tmp_path / "a", progress=False)
    check_accounting(report)
    assert report["inputs"] == {"total": 24, "used": 24, "skipped": 0, "skipped_by_code": {}}
    assert report["seconds"]["wall"] > 0 and report["chunks_resumed"] == 0  # returned, not in report.json
    assert report["totals"]["tried"] == 48 and report["totals"]["pairs"] > 40
    assert all(report["edits"][t]["tried"] > 0 for t in EDIT_TYPES)

    samples, root = load_samples(tmp_path / "a")
    assert root == (tmp_path / "a").resolve() and list(samples.columns) == list(COLUMNS)
    diff = samples[samples.task == "SynthDifference"]
    caps = samples[samples.task == "SynthCaption"]
    assert len(diff) == report["totals"]["pairs"] and len(caps) == 24
    for frame, context, n_images in ((diff, "{image#1}{image#2}", 2), (caps, "{image#1}", 1)):
        assert set(frame.category) == {"Synthetic"} and set(frame.split) == {"synth"}
        assert set(frame.question_type) == {"open-ended"} and set(frame.context) == {context}
        assert all(len(images) == n_images and all((root / p).is_file() for p in images) for images in frame.images)
        assert all(uid == f"{t}/synth/{s}" for uid, t, s in zip(frame.uid, frame.task, frame.sample_id, strict=True))
    assert set(diff.instruction) <= set(config.difference_instructions) and diff.instruction.nunique() > 1
    assert set(caps.instruction) <= set(config.caption_instructions) and caps.response.str.len().min() > 20
    assert samples.uid.is_unique

    edits = [json.loads(line) for line in (tmp_path / "a" / "edits.jsonl").read_text().splitlines()]
    kept = {e["uid"]: e for e in edits if e["kept"]}
    for row in diff.itertuples():
        edit = kept[row.uid]
        assert edit["sentence"] == row.response and edit["planner_prompt"] == "template"
        assert edit["least_attended"]["significance"] > 0 and "encoder_ratio" in edit["scores"]
    assert (tmp_path / "a" / "contact_sheet.png").stat().st_size > 1000

    generate(config, tiny_model_doc(), tmp_path / "b", progress=False)
    same_outputs(tmp_path / "a", tmp_path / "b")
    other = generate(config, tiny_model_doc(), tmp_path / "c", seed=1, progress=False)
    assert other["fingerprint"] != report["fingerprint"]
    assert pd.read_parquet(tmp_path / "c" / "samples.parquet").response.tolist() != samples.response.tolist()


@pytest.mark.slow
def test_workers_give_the_same_files_as_serial(tmp_path: Path) -> None:
    config = synth_config(count=20)
    generate(config, tiny_model_doc(), tmp_path / "serial", progress=False)
    generate(config, tiny_model_doc(), tmp_path / "pool", workers=2, progress=False)
    same_outputs(tmp_path / "serial", tmp_path / "pool")


@pytest.mark.slow
def test_a_killed_run_resumes_without_redoing_or_duplicating(tmp_path: Path) -> None:
    experiment = write_experiment(
        tmp_path / "exp.yaml", {"count": 200, "chunk_size": 1, "filter": {"min_encoder_ratio": 0}}
    )
    command = [DEMONLAB, "synth", "generate", "--config", str(experiment), "--quiet"]
    run = subprocess.Popen(
        [*command, "--out", str(tmp_path / "killed")],
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    shards = tmp_path / "killed" / ".shards"
    deadline = time.time() + 120
    while len(list(shards.glob("chunk-*.json"))) < 2 and run.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    os.killpg(run.pid, signal.SIGKILL)
    run.wait()
    finished = sorted(shards.glob("chunk-*.json"))
    assert 2 <= len(finished) < 200, "the run should have been killed part-way"
    assert not (tmp_path / "killed" / "report.json").exists()

    resumed = subprocess.run([*command, "--out", str(tmp_path / "killed")], capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    report = json.loads((tmp_path / "killed" / "report.json").read_text())
    printed = json.loads(resumed.stdout.rsplit("\nwrote ", 1)[0])  # the command prints how the run went
    assert printed["chunks_resumed"] >= len(finished) and report["chunks"] == 200
    assert not shards.exists()
    subprocess.run([*command, "--out", str(tmp_path / "whole")], check=True, capture_output=True)
    same_outputs(tmp_path / "killed", tmp_path / "whole")


def test_bad_inputs_are_skipped_with_reasons_and_counts_add_up(tmp_path: Path) -> None:
    from PIL import Image

    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "broken.jpg").write_bytes(b"\xff\xd8 truncated jpeg")
    Image.new("RGB", (120, 90), (80, 80, 80)).save(photos / "flat.png")
    extra = [
        ("missing.jpg", "Nothing here."),
        ("broken.jpg", "A broken file."),
        ("flat.png", "A grey wall."),
        ("chelsea.jpg", ""),
    ]
    captions = photo_folder(photos, extra)
    config = synth_config_from_dict(
        {
            "count": None,
            "chunk_size": 3,
            "source": {"kind": "folder", "captions": str(captions), "max_side": 128},
            "segmenter": {"kind": "felzenszwalb"},
            "editor": {"kind": "pixel"},
            "filter": {"min_encoder_ratio": 0.0, "min_inside_change": 0.02},
        }
    )
    report = generate(config, tiny_model_doc(), tmp_path / "out", progress=False)
    check_accounting(report)
    assert report["inputs"]["total"] == 8 and report["inputs"]["used"] == 4
    assert report["inputs"]["skipped_by_code"] == {"empty_caption": 1, "mask_covers_image": 1, "unreadable_image": 2}
    reasons = {s["index"]: s["reason"] for s in report["skipped"]}
    assert "missing.jpg" in reasons[4] and "broken.jpg" in reasons[5] and "flat.png" in reasons[6]
    samples, root = load_samples(tmp_path / "out")
    used = {"astronaut.jpg", "coffee.jpg", "chelsea.jpg", "rocket.jpg"}  # the second chelsea row had no caption
    assert set(samples[samples.task == "SynthCaption"].source) == used and root == (tmp_path / "out").resolve()


def test_real_backends_run_together_and_the_api_key_stays_out_of_the_outputs(tmp_path: Path, monkeypatch) -> None:
    captions = photo_folder(tmp_path / "photos")
    monkeypatch.setenv("SYNTH_KEY", "sk-never-logged")
    with chat_server() as server:
        config = synth_config_from_dict(
            {
                "count": None,
                "chunk_size": 2,
                "edits_per_image": 2,
                "source": {"kind": "folder", "captions": str(captions), "max_side": 96},
                "segmenter": {
                    "kind": "sam",
                    "model": str(tiny_sam(tmp_path / "sam")),
                    "points_per_side": 4,
                    "min_score": -1e9,
                },
                "selection": {"min_area": 0.0, "max_area": 0.9},
                "planner": {
                    "kind": "openai",
                    "model": "test",
                    "base_url": f"http://127.0.0.1:{server.server_port}/v1",
                    "api_key_env": "SYNTH_KEY",
                },
                "editor": {"kind": "diffusers", "model": str(tiny_inpainting(tmp_path / "sd")), "steps": 2, "size": 64},
                "filter": {
                    "kind": "clip",
                    "model": str(tiny_clip(tmp_path / "clip")),
                    "clip_min": -1,
                    "clip_max": 1,
                    "clip_min_direction": -2,
                    "min_inside_change": 0.0,
                },
            }
        )
        report = generate(config, tiny_model_doc(), tmp_path / "out", progress=False)
    check_accounting(report)
    assert report["inputs"]["used"] == 4 and report["totals"]["tried"] == 8
    assert all(r["headers"]["Authorization"] == "Bearer sk-never-logged" for r in server.requests)
    edits = [json.loads(line) for line in (tmp_path / "out" / "edits.jsonl").read_text().splitlines()]
    planned = [e for e in edits if e.get("planner_reply")]
    assert planned and all("Edit type:" in e["planner_prompt"] for e in planned)
    assert any(e["kept"] and "clip_image" in e["scores"] and e["editor"]["inpaint_prompt"] for e in edits)
    for path in (tmp_path / "out").rglob("*"):
        if path.is_file() and path.suffix in (".json", ".jsonl", ".parquet"):
            assert b"sk-never-logged" not in path.read_bytes()


@pytest.mark.slow
def test_cli_generates_from_the_embedded_config(tmp_path: Path) -> None:
    out = tmp_path / "synth"
    done = subprocess.run(
        [
            DEMONLAB,
            "synth",
            "generate",
            "--config",
            str(ROOT / "experiments/tiny.yaml"),
            "--out",
            str(out),
            "--limit",
            "8",
            "--quiet",
        ],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    summary = json.loads(done.stdout[: done.stdout.rindex("}") + 1])
    assert summary["captions"] == 8 and summary["inputs"]["total"] == 8
    samples, _ = load_samples(out)
    assert len(samples) == 8 + summary["pairs"]
    bad = subprocess.run(
        [DEMONLAB, "synth", "generate", "--config", str(tmp_path / "none.yaml"), "--out", str(out)],
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 2 and "none.yaml" in bad.stderr and "Traceback" not in bad.stderr


@pytest.mark.slow
def test_the_flow_tracks_report_contact_sheet_and_metrics(tmp_path: Path, prefect_api: str) -> None:
    import mlflow

    (tmp_path / "experiments").mkdir()
    write_experiment(tmp_path / "experiments" / "small.yaml", {"count": 12, "chunk_size": 4})
    params = {"experiment": "small", "synth": {"out": "data/synth", "seed": 0, "workers": 1, "limit": 8}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    tracking = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = {
        **os.environ,
        "PREFECT_API_URL": prefect_api,
        "MLFLOW_TRACKING_URI": tracking,
        "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'tests'}",
    }
    env.pop("DEMONLAB_PARENT_RUN_ID", None)
    done = subprocess.run([sys.executable, "-m", "flows.synth"], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = json.loads((tmp_path / "metrics" / "synth.json").read_text())
    assert metrics["inputs"]["total"] == 8 and set(metrics["edits"]) == set(EDIT_TYPES)
    mlflow.set_tracking_uri(tracking)
    run = mlflow.search_runs(
        experiment_names=["demonlab"], filter_string="tags.`demonlab.stage` = 'synth'", output_format="list"
    )[0]
    assert {a.path for a in mlflow.MlflowClient().list_artifacts(run.info.run_id)} >= {
        "report.json",
        "contact_sheet.png",
    }
    assert run.data.metrics["totals.captions"] == 8
    # how the run went is the MLflow run's, not the DVC metrics' (outputs: the same for the same inputs)
    assert run.data.metrics["seconds.wall"] > 0 and run.data.metrics["chunks_resumed"] == 0 and "seconds" not in metrics
