"""The synth steps one by one, on real pixels: config validation, exact scene masks, VPG attention and object
significance, selection, each editor's four edit types (changed inside the mask, nothing outside), planners, filters.
Real backends (SAM, diffusers inpainting, CLIP, a transformers LLM) run as tiny random models loaded from folders."""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import random
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from skimage.color import rgb2hsv
from synth_helpers import (
    PHOTOS,
    chat_server,
    photo_folder,
    synth_config,
    tiny_clip,
    tiny_inpainting,
    tiny_llm,
    tiny_model_doc,
    tiny_sam,
)

from components.demon.vocabulary import PALETTE
from components.errors import UserError
from components.experiment import load_experiment
from components.synth.attention import VisionSide, to_grid
from components.synth.config import EDIT_TYPES, PlannerConfig, SelectionConfig, synth_config_from_dict
from components.synth.editors import DiffusersEditor, EditError, PixelEditor, RenderEditor, fill
from components.synth.filters import Candidate, ClipFilter, EncoderFilter
from components.synth.planner import OpenAIPlanner, Options, PlanError, TemplatePlanner, TransformersPlanner
from components.synth.regions import ExactSegmenter, SamSegmenter, SkimageSegmenter, candidates, select, significance
from components.synth.scenes import render, zone_of
from components.synth.sources import FolderSource, ProceduralSource, Skip, build_source
from components.vpgc.checkpoints import save_checkpoint
from components.vpgc.config import model_config_from_dict
from components.vpgc.model import VPGCModel

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> FolderSource:
    captions = photo_folder(tmp_path_factory.mktemp("photos"))
    return FolderSource(
        synth_config_from_dict(
            {
                "source": {"kind": "folder", "captions": str(captions), "max_side": 160},
                "segmenter": {"kind": "felzenszwalb"},
                "editor": {"kind": "pixel"},
            }
        ).source
    )


@pytest.fixture(scope="module")
def vision() -> VisionSide:
    return VisionSide.load(tiny_model_doc())


def photo_regions(photos: FolderSource, index: int):
    item = photos.load(index)
    config = synth_config_from_dict(
        {
            "source": {"kind": "folder", "captions": "x.tsv"},
            "count": None,
            "segmenter": {"kind": "felzenszwalb", "scale": 200},
            "editor": {"kind": "pixel"},
        }
    )
    return item, candidates(SkimageSegmenter(config.segmenter)(item), config.selection, item)


def assert_local(original: Image.Image, edited: Image.Image, changed: np.ndarray, min_inside: float = 0.05) -> None:
    """Nothing outside `changed` moved; inside, pixels changed by at least `min_inside` on average (0..1)."""
    diff = np.abs(np.asarray(edited, dtype=np.float32) - np.asarray(original, dtype=np.float32)).max(-1) / 255
    assert changed.any() and (~changed).any()
    assert diff[~changed].max() == 0.0
    assert diff[changed].mean() >= min_inside


# ---------------------------------------------------------------------------------------------- config


def test_the_embedded_config_validates_and_unknown_keys_are_named() -> None:
    config = synth_config_from_dict(load_experiment(ROOT / "experiments/tiny.yaml")["synth"])
    assert (config.source.kind, config.segmenter.kind, config.planner.kind, config.editor.kind, config.filter.kind) == (
        "procedural",
        "exact",
        "template",
        "render",
        "encoder",
    )
    with pytest.raises(UserError, match=r"synth.editor.stpes: unknown key \(did you mean steps\?\)"):
        synth_config_from_dict({"count": 4, "editor": {"stpes": 3}})
    with pytest.raises(UserError, match="synth.colour: unknown key"):
        synth_config_from_dict({"count": 4, "colour": 1})
    with pytest.raises(UserError, match="synth.segmenter.kind: exact needs the procedural source"):
        synth_config_from_dict({"source": {"kind": "folder", "captions": "c.tsv"}})
    with pytest.raises(UserError, match="synth.edit_types.move: unknown key"):
        synth_config_from_dict({"count": 4, "edit_types": {"move": 1}})
    with pytest.raises(UserError, match="synth.planner.model: the transformers planner needs a model"):
        synth_config_from_dict({"count": 4, "planner": {"kind": "transformers"}})


# ---------------------------------------------------------------------------------------------- scenes + sources


def test_procedural_masks_are_exactly_the_painted_pixels_and_scenes_are_deterministic() -> None:
    source = ProceduralSource(synth_config().source, 6, seed=3)
    for index in range(6):
        item = source.load(index)
        pixels = np.asarray(item.image)
        painted = np.any(pixels != item.scene.backdrop.paint(item.scene.size), axis=-1)
        regions = ExactSegmenter()(item)
        union = np.zeros_like(painted)
        for region in regions:
            assert (pixels[region.mask] == PALETTE[region.color]).all()  # the mask holds only its object's colour
            union |= region.mask
        assert np.array_equal(union, painted)
        for region in regions:
            assert region.color in item.caption and region.kind in item.caption
        again = ProceduralSource(synth_config().source, 6, seed=3).load(index)
        assert again.caption == item.caption and again.sha256 == item.sha256
    assert ProceduralSource(synth_config().source, 6, seed=4).load(0).sha256 != source.load(0).sha256


def test_folder_source_skips_bad_rows_with_reasons(tmp_path: Path) -> None:
    (tmp_path / "bad.jpg").write_bytes(b"not an image")
    Image.new("RGB", (40, 30), (9, 9, 9)).save(tmp_path / "ok.png")
    (tmp_path / "captions.tsv").write_text(
        "image\tcaption\nbad.jpg\tx\nok.png\t \nnone.jpg\ty\nok.png\tA dark square\n"
    )
    source = FolderSource(
        synth_config_from_dict(
            {
                "source": {"kind": "folder", "captions": str(tmp_path / "captions.tsv")},
                "segmenter": {"kind": "slic"},
                "editor": {"kind": "pixel"},
            }
        ).source
    )
    codes = []
    for index in range(3):
        with pytest.raises(Skip) as skip:
            source.load(index)
        codes.append(skip.value.code)
        assert f"row {index}" in str(skip.value)
    assert codes == ["unreadable_image", "empty_caption", "unreadable_image"]
    assert source.load(3).caption == "A dark square"


def test_webdataset_shards_pair_images_with_captions(tmp_path: Path) -> None:
    captions = photo_folder(tmp_path / "photos")
    shard = tmp_path / "shard-000.tar"
    with tarfile.open(shard, "w") as tar:
        for line in captions.read_text().splitlines()[1:3]:
            name, caption = line.split("\t")
            key = name.removesuffix(".jpg")
            tar.add(tmp_path / "photos" / name, arcname=f"{key}.jpg")
            (tmp_path / f"{key}.txt").write_text(caption)
            tar.add(tmp_path / f"{key}.txt", arcname=f"{key}.txt")
        tar.add(tmp_path / "photos" / "rocket.jpg", arcname="nocaption.jpg")
    config = synth_config_from_dict(
        {"source": {"kind": "webdataset", "shards": str(tmp_path / "shard-*.tar"), "max_side": 64},
         "segmenter": {"kind": "slic"}, "editor": {"kind": "pixel"}, "count": None}
    )  # fmt: skip
    source = build_source(config.source, None, 0)
    assert len(source) == 3
    first = source.load(0)
    assert first.key == "shard-000.tar:astronaut" and first.caption == PHOTOS["astronaut"]
    assert max(first.image.size) == 64
    assert first.sha256 == hashlib.sha256((tmp_path / "photos" / "astronaut.jpg").read_bytes()).hexdigest()
    with pytest.raises(Skip, match="empty caption"):
        source.load(2)


# ---------------------------------------------------------------------------------------------- attention


def test_to_grid_handles_cnn_maps_and_vit_cls_tokens() -> None:
    assert to_grid(torch.zeros(2, 49)).shape == (2, 7, 7)
    vit = torch.arange(2 * 257, dtype=torch.float32).reshape(2, 257)
    assert torch.equal(to_grid(vit)[0].flatten(), vit[0, 1:])  # the CLS token is dropped
    with pytest.raises(ValueError, match="no square grid"):
        to_grid(torch.zeros(1, 51))


def test_attention_comes_from_the_configured_vpg_and_a_checkpoint_replaces_it(tmp_path: Path, vision) -> None:
    images = [Image.fromarray(np.random.default_rng(i).integers(0, 255, (30, 40, 3), dtype=np.uint8)) for i in range(3)]
    assert vision.encode(images).shape == (3, 5, 32)  # a random tiny ViT's features are near zero: use varied ones
    features = torch.randn(3, 5, 32, generator=torch.Generator().manual_seed(0))
    grid = vision.attention(features)
    assert grid.shape == (3, 2, 2) and torch.all(grid > 0)
    # the Q-Former's softmax rows sum to 1 over the 5 tokens: the 4 patch cells hold that minus the CLS share
    assert torch.all(grid.sum((1, 2)) < 1) and torch.all(grid.sum((1, 2)) > 0.5)
    # a trained VPG (saved by save_checkpoint) changes where the queries look
    doc = {**tiny_model_doc(), "freeze": {"vpg": "trainable"}}
    torch.manual_seed(5)
    model = VPGCModel.from_config(model_config_from_dict(doc))
    with torch.no_grad():
        for parameter in model.vpg.qformer.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.5)
    save_checkpoint(model, tmp_path / "ckpt")
    trained = VisionSide.load(tiny_model_doc(), tmp_path / "ckpt")
    for key, value in model.vpg.state_dict().items():
        assert torch.equal(trained.vpg.state_dict()[key], value)
    assert not torch.allclose(trained.attention(features), grid, atol=1e-4)
    # a VPG without weights is seeded: the same in every process, whatever the global RNG did before
    torch.manual_seed(123)
    assert torch.equal(VisionSide.load(tiny_model_doc()).attention(features), grid)


def test_significance_is_mean_interpolated_attention_inside_the_mask() -> None:
    source = ProceduralSource(synth_config().source, 1, seed=0)
    regions = ExactSegmenter()(source.load(0))
    significance(torch.full((7, 7), 0.3), regions)
    assert all(r.significance == pytest.approx(1.0) for r in regions)  # uniform attention: every object average
    grid = torch.zeros(2, 2)
    grid[0, 0] = 1.0  # all attention on the top-left quarter: image mean 1/4, bilinear between cell centres
    significance(grid, regions)
    side = regions[0].mask.shape[0]  # grid cell centres at side/4 and 3 side/4: 1 before the first, 0 after the second
    weight = np.clip((3 * side / 4 - (np.arange(side) + 0.5)) / (side / 2), 0, 1)
    dense = np.outer(weight, weight)
    for region in regions:
        assert region.significance == pytest.approx(dense[region.mask].mean() / dense.mean(), abs=1e-3)
    ranked = select(regions, SelectionConfig(k=2), source.load(0))
    assert [r.significance for r in ranked] == sorted(r.significance for r in regions)[:2]
    below = select(regions, SelectionConfig(rule="below_mean", k=9, ratio=0.5), source.load(0))
    assert all(r.significance < 0.5 for r in below)
    with pytest.raises(Skip, match="no object gets less"):
        select(regions, SelectionConfig(rule="below_mean", ratio=-1.0), source.load(0))


# ---------------------------------------------------------------------------------------------- editors


def plan_and_apply(editor, item, regions, edit_type: str, seed: int = 0):
    rng = random.Random(seed)
    target = None if edit_type == "add" else regions[0]
    plan = TemplatePlanner().plan(item, edit_type, target, editor.options(item, regions, edit_type, target), rng)
    return plan, editor.apply(item, regions, plan, rng)


@pytest.mark.parametrize("edit_type", EDIT_TYPES)
def test_render_editor_changes_exactly_what_the_sentence_says(edit_type: str) -> None:
    source = ProceduralSource(synth_config().source, 8, seed=1)
    for index in range(8):
        item = source.load(index)
        regions = ExactSegmenter()(item)
        plan, edited = plan_and_apply(RenderEditor(), item, regions, edit_type, seed=index)
        assert_local(item.image, edited.image, edited.changed)
        after = np.asarray(edited.image)
        if edit_type == "delete":
            assert (after[plan.target.mask] == item.scene.backdrop.paint(item.scene.size)[plan.target.mask]).all()
            assert plan.target.color in plan.sentence
        elif edit_type == "modify":
            assert (after[plan.target.mask] == PALETTE[plan.color]).all() and plan.color in plan.sentence
        else:
            color = plan.new_object.split()[0]
            assert (after[edited.changed] == PALETTE[color]).any() and plan.new_object in plan.sentence
        if edit_type == "add":  # in the planned zone, touching nothing that was there
            x, y = plan.details["center_xy"]
            assert zone_of(y, x, item.scene.size, item.scene.size) == plan.place and plan.place in plan.sentence
            assert not any(region.mask[edited.changed].any() for region in regions)


@pytest.mark.parametrize("index", range(len(PHOTOS)))
def test_pixel_editor_on_real_photos_changes_inside_the_mask_only(photos, index: int) -> None:
    item, regions = photo_regions(photos, index)
    editor = PixelEditor()
    done = set()
    for edit_type in EDIT_TYPES:
        try:
            plan, edited = plan_and_apply(editor, item, regions, edit_type, seed=index)
        except (PlanError, EditError) as error:  # e.g. no background room on a busy photo: allowed, but named
            assert error.code in ("no_option", "no_background_space")
            continue
        done.add(edit_type)
        assert_local(item.image, edited.image, edited.changed, min_inside=0.02)
        before, after = np.asarray(item.image) / 255, np.asarray(edited.image) / 255
        if edit_type == "modify":  # the hue inside is now the target colour's (where there is colour at all)
            hue = rgb2hsv(after[plan.target.mask][None])[0, :, 0]
            target = rgb2hsv(np.asarray(PALETTE[plan.color], dtype=np.float64)[None, None] / 255)[0, 0, 0]
            assert np.median(np.minimum(abs(hue - target), 1 - abs(hue - target))) < 0.02
        if edit_type == "delete":  # the object is gone: the hole is smoother than it was
            hole = edited.changed
            assert after[hole].std(0).mean() <= before[hole].std(0).mean() + 1e-6
        if edit_type in ("swap", "add"):  # what appears are pixels copied from another object of the photo
            donor = plan.details["copied_from"]
            assert donor["name"] == plan.new_object
    assert {"modify", "delete", "swap"} <= done


def test_fill_reconstructs_a_smooth_hole() -> None:
    yy, xx = np.mgrid[0:64, 0:80].astype(np.float32)
    image = np.stack([yy / 63, xx / 79, (yy + xx) / 142], axis=-1)
    hole = np.zeros((64, 80), dtype=bool)
    hole[20:40, 30:55] = True
    broken = image.copy()
    broken[hole] = 0
    filled = fill(broken, hole)
    assert np.array_equal(filled[~hole], image[~hole])
    assert np.abs(filled[hole] - image[hole]).mean() < 0.06


@pytest.mark.slow  # a diffusion pipeline per edit type: the fast tier's slowest test by far (3-5 min each, loaded)
@pytest.mark.parametrize("edit_type", EDIT_TYPES)
def test_diffusers_inpainting_is_local_and_seeded(tmp_path_factory, photos, edit_type: str) -> None:
    folder = tmp_path_factory.getbasetemp() / "inpainting"
    if not (folder / "model_index.json").is_file():
        tiny_inpainting(folder)
    editor = DiffusersEditor(
        synth_config_from_dict(
            {
                "source": {"kind": "folder", "captions": "c.tsv"},
                "segmenter": {"kind": "felzenszwalb"},
                "editor": {"kind": "diffusers", "model": str(folder), "steps": 2, "size": 64},
            }
        ).editor
    )
    item, regions = photo_regions(photos, 3)  # the rocket: night sky leaves room to add onto
    plan, edited = plan_and_apply(editor, item, regions, edit_type)
    assert plan.details["inpaint_prompt"]
    diff = np.abs(np.asarray(edited.image, dtype=np.int16) - np.asarray(item.image, dtype=np.int16)).max(-1)
    assert diff[~edited.changed].max() == 0 and diff[edited.changed].mean() > 5
    _, again = plan_and_apply(editor, item, regions, edit_type)
    assert np.array_equal(np.asarray(again.image), np.asarray(edited.image))


# ---------------------------------------------------------------------------------------------- segmenters


def pinned_sam(folder: Path) -> Path:
    """The tiny SAM with its IoU head pinned: every point's three masks score 0.2, 0.9 and 0.5 (the first of the
    four mask tokens is the single-mask output, unused with multimask_output), so the best mask is the second."""
    from transformers import SamModel

    tiny_sam(folder)
    model = SamModel.from_pretrained(folder)
    head = model.mask_decoder.iou_prediction_head.proj_out
    with torch.no_grad():
        head.weight.zero_()
        head.bias.copy_(torch.tensor([0.0, 0.2, 0.9, 0.5]))
    model.save_pretrained(folder)
    return folder


def test_sam_keeps_its_best_masks_above_min_score_once_and_felzenszwalb_partitions(tmp_path: Path, photos) -> None:
    item = photos.load(1)
    sam_model = str(pinned_sam(tmp_path / "sam"))

    def sam(**options: float) -> list:
        segmenter = {"kind": "sam", "model": sam_model, "points_per_side": 3, **options}
        config = synth_config_from_dict(
            {"source": {"kind": "folder", "captions": "c.tsv"}, "editor": {"kind": "pixel"}, "segmenter": segmenter}
        )
        return SamSegmenter(config.segmenter)(item)

    assert sam(min_score=0.91) == []  # every point's best mask predicts IoU 0.9: all below the threshold
    every = sam(min_score=0.89, dedupe_iou=1.0)  # all kept (an IoU above 1 is impossible: no duplicate)
    distinct = sam(min_score=0.89, dedupe_iou=0.5)
    assert 0 < len(distinct) < len(every) <= 9  # one mask per point prompt at most; duplicates dropped
    assert all(any(np.array_equal(d.mask, e.mask) for e in every) for d in distinct)
    for a, b in itertools.combinations(distinct, 2):
        assert (a.mask & b.mask).sum() / (a.mask | b.mask).sum() <= 0.5
    felz = SkimageSegmenter(synth_config_from_dict({"segmenter": {"kind": "felzenszwalb"}, "source": {
        "kind": "folder", "captions": "c.tsv"}, "editor": {"kind": "pixel"}}).segmenter)(item)  # fmt: skip
    for regions in (every, felz):
        assert regions and all(r.mask.shape == (item.image.height, item.image.width) for r in regions)
    assert np.array_equal(np.sum([r.mask for r in felz], axis=0), np.ones(felz[0].mask.shape))  # a partition
    assert all(r.where and r.color for r in every)


# ---------------------------------------------------------------------------------------------- planners


def procedural_case():
    item = ProceduralSource(synth_config().source, 1, seed=2).load(0)
    regions = ExactSegmenter()(item)
    return item, regions, RenderEditor().options(item, regions, "modify", regions[0])


def test_openai_planner_posts_chat_completions_with_the_key_from_the_environment(monkeypatch) -> None:
    item, regions, options = procedural_case()
    monkeypatch.setenv("SYNTH_TEST_KEY", "sk-secret-123")
    with chat_server() as server:
        url = f"http://127.0.0.1:{server.server_port}"
        planner = OpenAIPlanner(
            PlannerConfig(kind="openai", model="gpt-test", base_url=url, api_key_env="SYNTH_TEST_KEY")
        )
        plan = planner.plan(item, "modify", regions[0], options, random.Random(0))
        assert plan.color == options.colors[0] and plan.sentence == "The picture changed in one place."
        assert plan.reply.startswith("Sure!") and "Edit type: modify" in plan.prompt
        request = server.requests[-1]
        assert request["path"] == "/v1/chat/completions" and request["body"]["model"] == "gpt-test"
        assert request["headers"]["Authorization"] == "Bearer sk-secret-123"
        assert "sk-secret" not in str(plan.record())
        server.fail = True
        with pytest.raises(PlanError, match="HTTP 500") as failed:
            planner.plan(item, "modify", regions[0], options, random.Random(0))
        assert failed.value.code == "planner_error" and len(server.requests) == 4  # one call, then 3 tries
    monkeypatch.delenv("SYNTH_TEST_KEY")
    with pytest.raises(UserError, match="SYNTH_TEST_KEY is not set"):
        OpenAIPlanner(PlannerConfig(kind="openai", model="m", base_url=url, api_key_env="SYNTH_TEST_KEY"))


def test_llm_replies_are_checked_against_what_the_editor_can_do() -> None:
    item, regions, options = procedural_case()
    from components.synth.planner import parse_reply

    plan = parse_reply(
        'ok {"color": "%s", "sentence": "It is now %s"}' % ((options.colors[0],) * 2), "modify", regions[0], options
    )
    assert plan.color == options.colors[0] and plan.sentence.endswith(".")
    for reply, problem in (
        ("no json here", "no JSON"),
        ('{"color": "plaid", "sentence": "x"}', "not one of"),
        (json.dumps({"color": options.colors[0]}), "sentence"),
    ):
        with pytest.raises(PlanError, match=problem):
            parse_reply(reply, "modify", regions[0], options)
    with pytest.raises(PlanError, match="no background"):
        TemplatePlanner().plan(item, "add", None, Options(["red"], ["red star"], []), random.Random(0))


def test_transformers_planner_runs_a_local_model_and_keeps_its_reply(tmp_path: Path) -> None:
    item, regions, options = procedural_case()
    planner = TransformersPlanner(
        PlannerConfig(kind="transformers", model=str(tiny_llm(tmp_path / "llm")), max_new_tokens=12)
    )
    reply = planner.complete("system", "user", seed=0)
    assert isinstance(reply, str) and reply == planner.complete("system", "user", seed=0)
    with pytest.raises(PlanError) as unusable:  # random weights write no JSON: rejected, prompt and reply kept
        planner.plan(item, "delete", regions[0], options, random.Random(0))
    assert unusable.value.code == "planner_unusable" and "Edit type: delete" in unusable.value.prompt


# ---------------------------------------------------------------------------------------------- filters


def procedural_candidates(vision: VisionSide) -> list[Candidate]:
    source = ProceduralSource(synth_config().source, 4, seed=0)
    out = []
    for index in range(4):
        item = source.load(index)
        regions = ExactSegmenter()(item)
        plan, edited = plan_and_apply(RenderEditor(), item, regions, EDIT_TYPES[index], seed=index)
        out.append(Candidate(item.image, edited.image, edited.changed, plan, vision.encode([item.image])[0]))
    return out


def test_filters_reject_edits_that_leak_or_do_nothing(tmp_path: Path, vision) -> None:
    config = synth_config()
    good = procedural_candidates(vision)
    leaky = Candidate(
        good[0].original,
        render(good[1].plan and ProceduralSource(config.source, 1, seed=9).load(0).scene),
        good[0].changed,
        good[0].plan,
        good[0].features,
    )
    idle = Candidate(good[0].original, good[0].original.copy(), good[0].changed, good[0].plan, good[0].features)
    verdicts = EncoderFilter(config.filter, vision)([*good, leaky, idle])
    assert [v.kept for v in verdicts[:4]] == [True] * 4
    assert all(v.scores["encoder_ratio"] > 0 for v in verdicts[:4])
    assert (verdicts[4].code, verdicts[5].code) == ("changed_outside", "unchanged_inside")
    strict = synth_config(filter={"min_encoder_ratio": 1e9}).filter
    assert {v.code for v in EncoderFilter(strict, vision)(good)} == {"encoder_not_local"}
    clip = synth_config(
        filter={
            "kind": "clip",
            "model": str(tiny_clip(tmp_path / "clip")),
            "clip_min": -1.0,
            "clip_max": 1.0,
            "clip_min_direction": -2.0,
        }
    ).filter
    verdicts = ClipFilter(clip)([*good, idle])
    assert [v.kept for v in verdicts] == [True] * 4 + [False]
    assert all(-1 <= v.scores["clip_image"] <= 1 for v in verdicts[:4])
    # a band no pair of an image and its edit falls in (cosines near -1)
    narrow = synth_config(filter={"kind": "clip", "model": clip.model, "clip_min": -1.0, "clip_max": -0.999}).filter
    assert {v.code for v in ClipFilter(narrow)(good)} == {"clip_similarity"}
    # The direction rule alone: the same pair played backwards has the same image similarity and the opposite
    # direction, so at clip_min_direction 0 exactly one of the two passes, and the other fails on direction only.
    pair = good[max(range(4), key=lambda i: abs(verdicts[i].scores["clip_direction"]))]
    backwards = Candidate(pair.edited, pair.original, pair.changed, pair.plan, pair.features)
    directed = dataclasses.replace(clip, clip_min_direction=0.0)
    forward, reverse = ClipFilter(directed)([pair, backwards])
    direction = forward.scores["clip_direction"]
    assert abs(direction) > 1e-4 and reverse.scores["clip_direction"] == pytest.approx(-direction, abs=1e-5)
    assert forward.scores["clip_image"] == pytest.approx(reverse.scores["clip_image"], abs=1e-5)
    kept, rejected = (forward, reverse) if direction > 0 else (reverse, forward)
    assert kept.kept and (rejected.kept, rejected.code) == (False, "clip_direction")
