"""Served models over real HTTP on 127.0.0.1: `tests/served_server.py` serves a tiny Hugging Face model (`hf_tiny`)
through the chat-completions protocol, with switchable faults. Served answers equal in-process answers, every fault
ends as the rules say with no sample lost and nothing sent twice, and the API key reaches no file the run wrote."""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from evaluate_helpers import mini_normalized
from hf_tiny import save_tiny
from vpgc_tiny import tiny_config

from components.cli import main
from components.errors import UserError
from components.evaluation.adapters import ServeOptions, load_adapter
from components.evaluation.bundle import read_bundle
from components.evaluation.evaluate import evaluate
from components.evaluation.settings import EvalSettings
from components.vpgc.backbones import load_tokenizer

SERVER = Path(__file__).with_name("served_server.py")
TASKS = ["AESOP", "NLVR2", "TQA", "VIST", "DocVQA"]  # 2 to 8 images per prompt
KEY = "sk-demonlab-test-4f9c2a7e1b"  # the server's key: must appear in no file and no message
SETTINGS = EvalSettings(max_new_tokens=5)
FAST = ServeOptions(concurrency=2, timeout_s=2.0, max_retries=3, backoff_s=0.02, backoff_max_s=0.1)

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]


@contextlib.contextmanager
def served(*options: str) -> Iterator[str]:
    """The test server in a subprocess (stopped by its process id); yields its base URL."""
    env = {**os.environ, "DEMONLAB_TEST_SERVER_KEY": KEY}
    process = subprocess.Popen([sys.executable, str(SERVER), "--api-key-env", "DEMONLAB_TEST_SERVER_KEY", *options],
                               stdout=subprocess.PIPE, text=True, env=env)  # fmt: skip
    try:
        line = process.stdout.readline()
        assert line.startswith("PORT "), f"the test server did not start: {line!r}"
        yield f"http://127.0.0.1:{int(line.split()[1])}/v1"
    finally:
        os.kill(process.pid, signal.SIGTERM)
        process.wait(timeout=20)
        process.stdout.close()


def control(url: str, path: str, body: dict | None = None) -> list | dict:
    root = url.removesuffix("/v1")
    data = None if body is None else json.dumps(body).encode()
    with urllib.request.urlopen(urllib.request.Request(root + path, data=data), timeout=10) as response:
        return json.loads(response.read())


@pytest.fixture(autouse=True)
def api_key(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("served-model")
    load_tokenizer(tiny_config().llm).save_pretrained(root / "tokenizer")
    return save_tiny("qwen2_vl", root / "tokenizer", root / "qwen2_vl")


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return mini_normalized(tmp_path_factory.mktemp("mini"), per_task=2)


@pytest.fixture(scope="module")
def server(model) -> Iterator[str]:
    with served("--model", str(model)) as url:
        yield url


@pytest.fixture
def clean(server) -> str:
    control(server, "/_reset", {})
    return server


def run(spec, data: Path, out: Path, cache: Path | None = None, options: ServeOptions = FAST) -> tuple[dict, dict]:
    """Evaluate a served `spec` (or any spec) on TASKS: results.json and {uid: samples.jsonl row}."""
    model = load_adapter(spec, served=options) if spec.startswith("openai:") else spec
    settings = SETTINGS.replace(cache=cache is not None)
    results = evaluate(model, data, out, settings, tasks=TASKS, cache_path=cache, progress=False)
    return results, {row["uid"]: row for row in read_bundle(out)[1]}


def test_served_answers_equal_in_process_answers_and_agree_reports_it(model, data, clean, tmp_path, capsys):
    spec = f"openai:{clean}#tiny"
    argv = ["agree", "--model", f"hf:{model}", "--model", spec, "--label", "hf", "--label", "served", "--data",
            str(data), "--out", str(tmp_path / "same"), "--tasks", ",".join(TASKS), "--max-new-tokens", "5",
            "--no-cache"]  # fmt: skip
    assert main(argv) == 0
    record = json.loads((tmp_path / "same" / "agreement.json").read_text())
    assert record["exact_match"] == {"count": 10, "n": 10, "rate": 1.0} and record["differing"] == []
    assert all(r["diff"] == 0 for r in record["paired"])
    served_results = json.loads((tmp_path / "same" / "served" / "results.json").read_text())
    usage = served_results["model"]["usage"]
    assert usage["samples"] == 10 and usage["prompt_tokens"] == sum(p for p, _ in usage["per_sample"].values())
    assert "exact match 100.0% (10 of 10)" in capsys.readouterr().out

    # A deliberately different prompt on the served side: the report lists exactly the samples whose answers differ.
    control(clean, "/_prefix", {"prefix": "Answer in French. "})
    argv[argv.index(str(tmp_path / "same"))] = str(tmp_path / "different")
    assert main(argv) == 0
    record = json.loads((tmp_path / "different" / "agreement.json").read_text())
    hf = {r["uid"]: r["output"] for r in read_bundle(tmp_path / "different" / "hf")[1]}
    other = {r["uid"]: r["output"] for r in read_bundle(tmp_path / "different" / "served")[1]}
    differ = sorted(uid for uid in hf if hf[uid] != other[uid])
    assert differ and [row["uid"] for row in record["differing"]] == differ
    assert all(row["hf"] == hf[row["uid"]] and row["served"] == other[row["uid"]] for row in record["differing"])
    assert record["exact_match"]["count"] == 10 - len(differ)
    assert "## Samples that differ" in (tmp_path / "different" / "agreement.md").read_text()


@pytest.mark.parametrize("mode", ["429", "500", "slow", "drop"])
def test_transient_faults_are_retried_and_cost_one_resend(mode, data, clean, tmp_path):
    control(clean, "/_faults", {"mode": mode, "count": 1, "retry_after": 1, "delay": 3})
    options = ServeOptions(**{**vars(FAST), "concurrency": 1})
    results, rows = run(f"openai:{clean}#tiny", data, tmp_path / "out", options=options)
    assert results["counts"]["errors"] == 0 and len(rows) == 10
    log = control(clean, "/_log")
    assert len(log) == 11 and log[0]["fault"] == mode and log[1]["prompt"] == log[0]["prompt"]  # one resend
    gap = log[1]["t"] - log[0]["t"]
    if mode == "429":
        assert gap >= 0.95  # Retry-After: 1 honoured (the backoff alone would wait under 0.1 s)
    elif mode == "500":
        assert gap < 0.5  # the test's short backoff, not a Retry-After


@pytest.mark.parametrize(("mode", "reason"), [("malformed", "malformed response"), ("empty", "empty response"),
                                              ("400", "refused the request (HTTP 400")])  # fmt: skip
def test_bad_responses_fail_their_sample_and_a_resume_sends_only_them(mode, reason, data, clean, tmp_path):
    control(clean, "/_faults", {"mode": mode, "count": 1})
    cache = tmp_path / "cache.sqlite"
    results, rows = run(f"openai:{clean}#tiny", data, tmp_path / "first", cache)
    failed = [row for row in rows.values() if row["error"]]
    assert len(failed) == 1 and reason in failed[0]["error"] and len(rows) == 10  # the bundle is still written
    assert len(control(clean, "/_log")) == 10  # never retried
    control(clean, "/_reset", {})
    results, rows = run(f"openai:{clean}#tiny", data, tmp_path / "second", cache)
    assert results["counts"]["errors"] == 0 and results["run"]["cached"] == 9
    assert len(control(clean, "/_log")) == 1  # only the failed sample is sent again
    assert results["model"]["usage"]["samples"] == 10  # cached answers keep their usage


def test_a_killed_run_resends_nothing_it_had(data, tmp_path):
    with served("--echo", "--latency", "0.3") as url:
        cache, out = tmp_path / "cache.sqlite", tmp_path / "out"
        argv = [
            sys.executable,
            "-m",
            "components.cli",
            "evaluate",
            "--model",
            f"openai:{url}#tiny",
            "--data",
            str(data),
            "--out",
            str(out),
            "--tasks",
            ",".join(TASKS),
            "--cache",
            str(cache),
            "--concurrency",
            "1",
            "--max-new-tokens",
            "5",
        ]
        process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                   env={**os.environ, "OPENAI_API_KEY": KEY})  # fmt: skip
        deadline = time.monotonic() + 120
        while len(control(url, "/_log")) < 4 and time.monotonic() < deadline:
            time.sleep(0.1)
        os.kill(process.pid, signal.SIGKILL)  # mid-batch: all 10 requests are one batch of the runner
        process.wait()
        with sqlite3.connect(cache) as db:
            kept = db.execute("SELECT COUNT(*) FROM responses").fetchone()[0]
        assert 3 <= kept < 10
        sent = len(control(url, "/_log"))
        results, rows = run(f"openai:{url}#tiny", data, out, cache)
        assert results["counts"]["errors"] == 0 and results["run"]["cached"] == kept
        assert len(control(url, "/_log")) - sent == 10 - kept  # exactly the answers it did not have


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_server_mistakes_stop_with_one_line(clean, monkeypatch):
    def refusal(spec: str) -> str:
        with pytest.raises(UserError) as caught:
            run(spec, Path("unused"), Path("unused"))
        message = str(caught.value)
        assert "\n" not in message and KEY not in message
        return message

    assert "cannot reach the server" in refusal(f"openai:http://127.0.0.1:{_free_port()}/v1#tiny")
    assert "serves no model 'llava'" in refusal(f"openai:{clean}#llava") and "tiny" in refusal(f"openai:{clean}#llava")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-wrong-key-the-server-echoes")
    message = refusal(f"openai:{clean}#tiny")
    assert "rejected the credentials (HTTP 401)" in message and "sk-wrong-key" not in message
    assert "not openai:" not in refusal("openai:127.0.0.1:8000#tiny")


@pytest.mark.parametrize(("option", "expected"), [("--no-images", "refused a prompt with an image"),
                                                  ("--max-images=1", "--limit-mm-per-prompt")])  # fmt: skip
def test_servers_that_take_too_few_images_stop_the_run_before_any_sample(option, expected, data, tmp_path):
    with served("--echo", option) as url:
        with pytest.raises(UserError, match=expected) as caught:
            run(f"openai:{url}#tiny", data, tmp_path / "out")
        assert "\n" not in str(caught.value) and control(url, "/_log") == []


def test_the_key_reaches_no_file_and_no_output(data, clean, tmp_path):
    cache, out = tmp_path / "cache.sqlite", tmp_path / "out"
    printed = io.StringIO()
    argv = ["evaluate", "--model", f"openai:{clean}#tiny", "--data", str(data), "--out", str(out), "--tasks",
            ",".join(TASKS), "--max-new-tokens", "5", "--cache", str(cache), "--price-input", "0.5",
            "--price-output", "1.5"]  # fmt: skip
    control(clean, "/_faults", {"mode": "500", "count": 2})
    with contextlib.redirect_stdout(printed), contextlib.redirect_stderr(printed):
        assert main(argv) == 0
    usage = json.loads((out / "results.json").read_text())["model"]["usage"]
    expected = (usage["prompt_tokens"] * 0.5 + usage["completion_tokens"] * 1.5) / 1e6
    assert usage["cost_usd"] == pytest.approx(expected) and "tokens:" in printed.getvalue()
    written = [path for path in tmp_path.rglob("*") if path.is_file()]
    assert len(written) > 5
    assert not [path for path in written if KEY.encode() in path.read_bytes()]
    assert KEY not in printed.getvalue()
