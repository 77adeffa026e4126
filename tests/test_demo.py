"""`demonlab demo` (components/demo): the VPG's attention maps of both passes, the checks on uploads and instructions,
the results browser's table and its confinement to the dataset root, and the page itself, served by a real
`demonlab demo` process on 127.0.0.1 and driven by Playwright in Debian's Chromium (no browser download)."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import sys
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import psutil
import pytest
import torch
import yaml
from evaluate_helpers import ScriptedAdapter, mini_normalized
from PIL import Image
from test_signals import session_left
from vpgc_tiny import tiny_dict, tiny_model, write_images

from components.demo.chat import Limits, answer, check_images, user_turn, with_model_stops
from components.demo.maps import image_maps, overlays
from components.demo.results import inside, mlflow_markdown, open_bundle, table
from components.demon.normalize import load_samples
from components.demon.schema import to_parts
from components.errors import UserError
from components.evaluation.adapters import load_adapter
from components.evaluation.evaluate import evaluate
from components.evaluation.settings import EvalSettings
from components.runtime.servers import free_port, server
from components.vpgc.checkpoints import save_checkpoint
from components.vpgc.generation import GenerationSettings
from components.vpgc.prompts import Turn

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
TASKS = ["Spot-the-Diff", "NLVR2", "COMICS_Panel"]  # three categories, open-ended, multi-choice and image-choice
RUN_ID = "0123456789abcdef0123456789abcdef"
MAX_IMAGE_MB = 0.05  # the server's limit in the browser test: a 70 KB image is "oversized"


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("demo")


@pytest.fixture(scope="module")
def checkpoint(work: Path) -> Path:
    """A tiny random VPG-C model with trained-looking VPG-C weights, saved as training saves one. Its frozen parts
    are random too: `demonlab demo` draws them from seed 0, as this does."""
    torch.manual_seed(0)
    model = tiny_model(seed=0, trained_vpgc=True)
    return save_checkpoint(model, work / "checkpoints" / "vpgc-tiny" / "final")


@pytest.fixture(scope="module")
def bundles(work: Path) -> dict[str, Path]:
    """Two bundles of one small mini-DEMON (A right on odd sample ids, B on even ones), A recording its MLflow run;
    and a copy of A whose data sends one image path out of the dataset root."""
    data = mini_normalized(work / "mini", per_task=2)
    frame, _ = load_samples(data)
    truth = dict(zip(frame["uid"], frame["response"], strict=True))
    # a wrong answer names another option where there are options, so both scorers mark it wrong
    wrong = {row.uid: next((c for c in (row.choice_list if row.choice_list is not None else []) if c != row.response),
                           "no idea") for row in frame.itertuples()}  # fmt: skip

    def right_when(parity: int) -> Callable[[str], str]:
        return lambda uid: truth[uid] if int(uid.rsplit("/", 1)[1]) % 2 == parity else wrong[uid]

    settings = EvalSettings(batch_size=8, cache=False)
    found = {}
    for name, parity in (("a", 1), ("b", 0)):
        found[name] = work / "bundles" / name
        evaluate(ScriptedAdapter(right_when(parity)), data, found[name], settings, tasks=TASKS, progress=False)
    results = json.loads((found["a"] / "results.json").read_text())
    results["provenance"]["mlflow_run_id"] = RUN_ID
    (found["a"] / "results.json").write_text(json.dumps(results))

    crafted = work / "crafted-data"
    shutil.copytree(data, crafted)
    samples = pd.read_parquet(crafted / "samples.parquet")
    target = samples.index[samples["task"] == TASKS[0]][0]
    samples.at[target, "images"] = ["../" * 12 + str(work / "secret.png").lstrip("/")]
    samples.to_parquet(crafted / "samples.parquet")
    Image.new("RGB", (8, 8), (255, 0, 0)).save(work / "secret.png")
    found["crafted"] = work / "bundles" / "crafted"
    shutil.copytree(found["a"], found["crafted"])
    results = json.loads((found["crafted"] / "results.json").read_text())
    results["data"]["path"] = str(crafted)
    (found["crafted"] / "results.json").write_text(json.dumps(results))
    found["crafted-uid"] = samples.at[target, "uid"]
    return found


# --------------------------------------------------------------------------------------------- attention maps


def test_vpg_attention_of_both_passes() -> None:
    """The first pass is the VPG's own; the re-extraction moves only once VPG-C's Linear_1 is non-zero."""
    conversation = [Turn(user=to_parts("How do {image#1} and {image#2} differ?", ["1", "2"]))]
    # the tiny random ViT's features are nearly constant; distinct ones make the attention say something
    features = 10 * torch.randn(2, 5, 32, generator=torch.Generator().manual_seed(0))
    maps = {}
    for trained in (False, True):
        model = tiny_model(seed=0, trained_vpgc=trained)
        layouts = model.layouts([conversation])
        batch, _ = model.prepare(layouts, torch.zeros(2, 3, 28, 28))
        before = model.vpg.qformer.config._attn_implementation
        maps[trained] = model.vpg_attention(batch, features)
        assert model.vpg.qformer.config._attn_implementation == before  # eager only for that call
        for m in maps[trained]:
            assert m.shape == (2, 5)
            torch.testing.assert_close(m.sum(-1), torch.ones(2))
    (first, guided), (trained_first, trained_guided) = maps[False], maps[True]
    torch.testing.assert_close(guided, first)  # zero Linear_1: VPG-C's queries are the VPG's
    torch.testing.assert_close(trained_first, first)
    assert (trained_guided - trained_first).abs().sum() > 1e-3


def test_attention_maps_on_the_images(tmp_path: Path) -> None:
    paths = write_images(tmp_path, 2)
    model = tiny_model(seed=0, trained_vpgc=True)
    first = [Turn(user=user_turn("What differs between {image#1} and {image#2}?", paths, first_turn=True))]
    maps = image_maps(model, first)
    assert [m.label for m in maps] == ["{image#1}", "{image#2}"]
    for m in maps:
        assert m.first.shape == m.guided.shape == (2, 2)  # 28 px / patch 14; the ViT's CLS token is dropped
        assert 0 < m.first.sum() <= 1 + 1e-5 and 0 < m.guided.sum() <= 1 + 1e-5
    first[0].assistant = "a reply"
    follow_up = [*first, Turn(user=user_turn("And {image#2}?", paths, first_turn=False))]
    assert [m.label for m in image_maps(model, follow_up)] == ["turn 1, {image#1}", "turn 1, {image#2}",
                                                               "turn 2, {image#2}"]  # fmt: skip
    shown, guided = overlays(maps[0])
    assert shown.size == guided.size == (30, 20) and shown.mode == "RGB"  # write_images' first is 30x20


# ------------------------------------------------------------------------------------------------ chat checks


def test_instruction_checks(tmp_path: Path) -> None:
    images = write_images(tmp_path, 2)
    with pytest.raises(UserError, match="write an instruction"):
        user_turn("  ", images, first_turn=True)
    with pytest.raises(UserError, match=r"refers to \{image#3\} but 2 image"):
        user_turn("Compare {image#1} and {image#3}", images, first_turn=True)
    with pytest.raises(UserError, match="image 2 is uploaded but the instruction does not place it"):
        user_turn("Describe {image#1}", images, first_turn=True)
    by_position = user_turn("What differs?", images, first_turn=True)
    assert [p["type"] for p in by_position] == ["image", "image", "text"]
    follow_up = user_turn("And {image#2}?", images, first_turn=False)
    assert [p.get("index") for p in follow_up if p["type"] == "image"] == [2]


def test_upload_checks(tmp_path: Path) -> None:
    images = write_images(tmp_path, 9)
    (tmp_path / "notes.png").write_text("not an image")
    limits = Limits(max_bytes=20_000)
    assert check_images(images[:2], limits) == images[:2]
    with pytest.raises(UserError, match="upload at least one image"):
        check_images([], limits)
    with pytest.raises(UserError, match="9 images uploaded; the model takes at most 8"):
        check_images(images, limits)
    with pytest.raises(UserError, match=r"image 2 \(notes.png\) is not an image"):
        check_images([images[0], str(tmp_path / "notes.png")], limits)
    big = tmp_path / "big.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (100, 100, 3), dtype=np.uint8)).save(big)
    with pytest.raises(UserError, match=r"image 1 \(big.png\) is 0\.02\d+ MB; the limit is 0\.0191 MB"):
        check_images([str(big)], limits)


# ---------------------------------------------------------------------------------------------------- results


def test_results_table_filters_and_sorts(
    bundles: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'absent.db'}")
    a, b = (open_bundle(bundles[k], "http://mlflow") for k in ("a", "b"))
    assert a.samples and a.image_root is not None and not a.note
    both = table(a, b, "parity")
    assert len(both) == 6 and set(both["task"]) == set(TASKS)
    one = table(a, b, "parity", task="NLVR2", sort="B - A, largest first")
    assert set(one["task"]) == {"NLVR2"} and one["B - A"].tolist() == sorted(one["B - A"], reverse=True)
    assert one["B - A"].iloc[0] > 0 > one["B - A"].iloc[-1]
    low = table(a, None, "strict", score_range=(0, 0))
    assert len(low) == 3 and (low["A"] == 0).all() and "B" not in low.columns
    assert a.mlflow == f"MLflow: [run {RUN_ID[:8]}](http://mlflow/#/runs/{RUN_ID})"


def test_results_refuse_paths_out_of_the_dataset_root(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "images").mkdir(parents=True)
    (root / "images" / "link").symlink_to(tmp_path)
    assert inside(root, "images/a.png") == (root / "images" / "a.png").resolve()
    for bad in ("../secret.png", "/etc/passwd", "images/../../secret.png", "images/link/secret.png"):
        with pytest.raises(UserError, match="leaves the bundle's dataset root"):
            inside(root, bad)


def test_mlflow_links_by_model_fingerprint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import mlflow

    results = {"model": {"fingerprint": "f00"}, "provenance": {}}
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'absent.db'}")
    assert "search the MLflow UI for `tags.`demonlab.model_fingerprint` = 'f00'`" in mlflow_markdown(
        results, "http://ui"
    )
    assert not (tmp_path / "absent.db").exists()  # opening a bundle never creates a tracking store

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    client = mlflow.MlflowClient(uri)
    experiment = client.create_experiment("demonlab")
    runs = [client.create_run(experiment, tags={"demonlab.model_fingerprint": "f00"}).info.run_id for _ in range(2)]
    client.create_run(experiment, tags={"demonlab.model_fingerprint": "other"})
    text = mlflow_markdown(results, "http://ui")
    assert f"[run {runs[1][:8]}](http://ui/#/runs/{runs[1]})" in text  # the newest
    assert f"[2 with this model](http://ui/#/experiments/{experiment}/runs?searchFilter=tags.%60demonlab" in text


# ------------------------------------------------------------------------------------------------ the browser


def expected_replies(checkpoint: Path, conversation: list[Turn], max_new_tokens: int) -> dict[bool, str]:
    """What the server's model answers, computed here the same way (seed 0, then the checkpoint)."""
    torch.manual_seed(0)
    model = load_adapter(str(checkpoint)).model
    settings = with_model_stops(GenerationSettings(max_new_tokens=max_new_tokens), model)
    return {vpgc: answer(model, conversation, settings, vpgc).text for vpgc in (True, False)}


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (apt-get install chromium)")
def test_demo_in_a_browser(work: Path, checkpoint: Path, bundles: dict[str, Path]) -> None:
    from playwright.sync_api import Locator, expect, sync_playwright

    images = write_images(work, 2)
    (work / "many").mkdir()
    many = write_images(work / "many", 9)
    (work / "notes.png").write_text("not an image")
    big = work / "big.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (150, 150, 3), dtype=np.uint8)).save(big)
    broken = work / "checkpoints" / "broken"
    broken.mkdir()
    (broken / "config.yaml").write_text(yaml.safe_dump({"model": tiny_dict()}))
    (broken / "weights.safetensors").write_bytes(b"not safetensors")

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{work / 'no-store.db'}"}
    command = [str(Path(sys.executable).with_name("demonlab")), "demo", "--port", str(port), "--model",
               str(checkpoint), "--checkpoints", str(work / "checkpoints"), "--bundles", str(work / "bundles"),
               "--experiments", str(work), "--max-image-mb", str(MAX_IMAGE_MB), "--max-new-tokens", "8"]  # fmt: skip
    with (
        server(command, url, work / "demo.log", env=env, timeout=120) as process,
        sync_playwright() as playwright,
    ):
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page(viewport={"width": 1500, "height": 1300})
        page.goto(url)
        status = page.locator("#chat-status")
        listening = psutil.Process(process.pid).net_connections("inet")
        assert {c.laddr.ip for c in listening if c.status == psutil.CONN_LISTEN} == {"127.0.0.1"}  # no --host

        def upload(*files: str | Path) -> None:
            clear = page.locator('#images button[aria-label="Clear"]')
            if clear.count():  # a new upload adds to the files there; start from none, as a user replacing them
                clear.click()
                expect(page.locator("#images td.filename")).to_have_count(0)
            page.locator("#images input[type=file]").set_input_files([str(f) for f in files])

        def ask(text: str) -> None:
            page.locator("#instruction textarea").fill(text)
            page.locator("#ask").click()

        # bad uploads: each says why in the status line
        upload(images[0], work / "notes.png")
        expect(status).to_contain_text("image 2 (notes.png) is not an image")
        upload(big)
        expect(status).to_contain_text(re.compile(r"image 1 \(big.png\) is 0\.0\d+ MB; the limit is 0.05 MB"))
        upload(*many)
        expect(status).to_contain_text("9 images uploaded; the model takes at most 8")

        upload(*images)
        expect(status).to_contain_text("2 image(s)")
        expect(page.locator("#preview")).to_contain_text("{image#2}")
        # bad instructions
        ask("")
        expect(status).to_contain_text("write an instruction")
        ask("Compare {image#1} with {image#3}.")
        expect(status).to_contain_text("refers to {image#3} but 2 image(s) are uploaded")
        ask("Describe {image#1}.")
        expect(status).to_contain_text("image 2 is uploaded but the instruction does not place it")

        # a question, then a follow-up: both sides answer, the prompt is shown, the maps are laid on the images
        question = "What differs between {image#1} and {image#2}?"
        ask(question)
        details = page.locator("#chat-details")
        expect(details).to_contain_text("new tokens", timeout=60_000)
        expect(page.locator("#model-info")).to_contain_text("VPG-C before block 2 of 4, trained")
        parts = user_turn(question, images, first_turn=True)
        first = [Turn(user=parts)]
        for vpgc, reply in expected_replies(checkpoint, first, 8).items():
            panel = page.locator("#chat-on" if vpgc else "#chat-off")
            expect(panel).to_contain_text(question)
            expect(panel).to_contain_text(reply)  # verbatim: a reply is text, never markup
        gallery = page.locator("#attention")
        for caption in ("{image#1}: VPG first pass", "{image#2}: VPG-C re-extraction"):
            expect(gallery).to_contain_text(caption)
        expect(gallery.locator("img")).to_have_count(4)
        page.get_by_text("The prompt exactly as each side's model saw it").click()
        image = re.escape("<Img><HereForImage></Img>")
        expect(page.locator("#prompt-on textarea")).to_have_value(
            re.compile(f"###Human: What differs between {image} and {image} \\?")
        )
        page.screenshot(path=str(work / "chat.png"), full_page=True)

        ask("And what is in {image#2}?")
        expect(page.locator("#chat-on")).to_contain_text("And what is in {image#2}?", timeout=60_000)
        expect(page.locator("#prompt-off textarea")).to_have_value(re.compile(r"differs.*And what is in", re.S))
        expect(gallery).to_contain_text("turn 2, {image#2}: VPG first pass")

        # a checkpoint that does not load: a message, and the server keeps serving
        model = page.locator("#model input")
        model.fill(str(broken))
        model.press("Enter")
        page.locator("#load-model").click()
        expect(status).to_contain_text(f"{broken} does not load: SafetensorError", timeout=60_000)
        model.fill(str(checkpoint))
        model.press("Enter")
        page.locator("#load-model").click()
        expect(page.locator("#model-info")).to_contain_text("trained", timeout=60_000)

        # results: two bundles, one task, sorted by B - A; a sample with its images, answers and MLflow link
        page.get_by_role("tab", name="Results").click()
        results_status = page.locator("#results-status")

        def open_bundles(a: Path, b: Path | None = None) -> None:
            for box, folder in (("#bundle-a", a), ("#bundle-b", b)):
                field = page.locator(f"{box} input")
                field.fill(str(folder) if folder else "")
                field.press("Enter")
            page.locator("#open-bundles").click()

        def choose(box: str, option: str) -> None:
            page.locator(f"{box} input").click()
            page.get_by_role("option", name=option, exact=True).click()

        open_bundles(work / "mini")
        expect(results_status).to_contain_text("is not an evaluation bundle")
        open_bundles(bundles["a"], bundles["b"])
        expect(results_status).to_contain_text("6 sample(s)")
        expect(page.locator("#results-summary")).to_contain_text("B: scripted")
        choose("#task-filter", "NLVR2")
        expect(results_status).to_contain_text("2 sample(s)")
        choose("#sort", "B - A, largest first")
        expect(page.locator('#results-table [role="row"][data-index]')).to_have_count(2)

        def cell(row: int, column: int) -> Locator:  # Gradio's data grid (its <tbody> only measures column widths)
            return page.locator(f'#results-table [data-testid="cell-{row}-{column}"]')

        expect(cell(0, 0)).to_contain_text("NLVR2/core/")
        expect(cell(0, 5)).to_have_text("100")  # B - A: B right where A is wrong first
        expect(cell(1, 5)).to_have_text("-100")
        cell(1, 0).click()
        expect(page.locator("#sample input")).to_have_value(cell(1, 0).inner_text().strip())
        cell(0, 0).click()
        expect(page.locator("#sample input")).to_have_value(cell(0, 0).inner_text().strip())
        sample = page.locator("#sample-details")
        for text in ("Ground truth", "A: scripted", "B: scripted", "parity 100.0", "parity 0.0"):
            expect(sample).to_contain_text(text)
        expect(page.locator("#sample-images img").first).to_be_visible()
        link = sample.locator(f'a[href="http://127.0.0.1:5000/#/runs/{RUN_ID}"]')
        expect(link).to_have_count(1)
        expect(sample).to_contain_text("search the MLflow UI for")
        page.screenshot(path=str(work / "results.png"), full_page=True)

        # a data file that points out of its dataset root: refused, said so; Gradio serves none of those files
        open_bundles(bundles["crafted"])
        expect(results_status).to_contain_text("6 sample(s)")
        choose("#sample", bundles["crafted-uid"])
        expect(results_status).to_contain_text("leaves the bundle's dataset root")
        for leaked in (work / "secret.png", Path("/etc/passwd")):
            with pytest.raises(urllib.error.HTTPError):
                urllib.request.urlopen(f"{url}/gradio_api/file={leaked}", timeout=10)
        browser.close()
        assert process.poll() is None, "the server stopped"
        # a stop signal ends the demo and everything it started (docs/orchestration.md, "Stopping")
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 128 + signal.SIGTERM
        assert session_left(process.pid) == []
    for shot in ("chat.png", "results.png"):
        assert (work / shot).stat().st_size > 50_000  # rendered pages, not blank ones
    log = (work / "demo.log").read_text()
    assert f"demonlab demo on http://127.0.0.1:{port}" in log


VERBATIM = ["The <Img> and </Img> differ", "*not bold* __nor__ `code` [link](x) # 1. - > |a|", "a\\b"]


@pytest.mark.parametrize("text", VERBATIM)
def test_model_text_is_shown_verbatim(text: str) -> None:
    """What a model wrote survives markdown rendering unchanged (the demo's results panel renders markdown)."""
    import html

    from markdown_it import MarkdownIt

    from components.demo.results import verbatim

    rendered = MarkdownIt("commonmark").render(verbatim(text))
    assert html.unescape(re.sub(r"<[^>]+>", "", rendered)).strip() == text
