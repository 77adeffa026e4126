"""The blind control: the same model with its images withheld (blank grey images of the same sizes), so the
prompt and its tokens are unchanged and only the pixels differ; its answers never come from the seeing model's
cache."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from evaluate_helpers import mini_normalized, tiny_experiment
from PIL import Image

from components.demon.normalize import load_samples
from components.evaluation.adapters import BLANK_GREY, load_adapter
from components.evaluation.evaluate import evaluate
from components.evaluation.inference import build_requests, select_samples
from components.evaluation.settings import EvalSettings


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return mini_normalized(tmp_path_factory.mktemp("mini"), per_task=1)


def test_blind_adapter_keeps_the_prompt_and_blanks_the_pixels(data, tmp_path):
    experiment = tiny_experiment(tmp_path)
    torch.manual_seed(0)
    seeing = load_adapter(str(experiment))
    torch.manual_seed(0)
    blind = load_adapter(str(experiment), blind=True)
    samples, root = load_samples(data)
    for _, request in build_requests(select_samples(samples, ["Spot-the-Diff", "ALFRED"], None, None), root):
        a, b = seeing.encode(request), blind.encode(request)
        assert b.length == a.length and b.payload.prompt_ids == a.payload.prompt_ids  # same prompt tokens
        originals = [Image.open(path) for path in request.image_paths()]
        blanks = blind.images(request)
        assert [i.size for i in blanks] == [i.size for i in originals]
        assert all((np.asarray(i) == BLANK_GREY).all() for i in blanks)
        assert not all((np.asarray(i.convert("RGB")) == BLANK_GREY).all() for i in originals)
        pixels, blank_pixels = seeing.load(a).pixels, blind.load(b).pixels
        assert pixels.shape == blank_pixels.shape and not torch.equal(pixels, blank_pixels)
    assert blind.fingerprint != seeing.fingerprint and blind.describe()["blind"] is True


def test_a_blind_evaluation_is_not_served_from_the_seeing_models_cache(data, tmp_path):
    experiment = tiny_experiment(tmp_path)
    settings = EvalSettings(batch_size=4, max_new_tokens=4)
    cache = tmp_path / "responses.sqlite"
    kwargs = {"tasks": ["Spot-the-Diff", "NLVR2"], "cache_path": cache, "progress": False}
    seeing = evaluate(str(experiment), data, tmp_path / "seeing", settings, **kwargs)
    blind = evaluate(str(experiment), data, tmp_path / "blind", settings, blind=True, **kwargs)
    assert seeing["run"]["generated"] == 2 and blind["run"]["cached"] == 0 and blind["run"]["generated"] == 2
    assert blind["model"]["blind"] is True and seeing["model"]["blind"] is False
