"""The feature cache: frozen vision features computed once per image, shared by processes, bounded, never stale."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from vpgc_tiny import tiny_config, tiny_model, write_images

from components.vpgc.features import FeatureCache, pixel_key
from components.vpgc.model import VPGCModel


@pytest.fixture
def cache_home(tmp_path):
    return tmp_path / "features"


def with_cache(model: VPGCModel, root) -> VPGCModel:
    """The model with a cache of its own (the default one, `$DEMONLAB_CACHE/features`, is the machine's)."""
    model.feature_cache = FeatureCache(root, max_bytes=2**30)
    return model


def pixels_of(model, tmp_path, count=3):
    return model.load_pixels(write_images(tmp_path, count))


def test_cached_features_are_the_computed_ones_and_the_second_view_reads_them(tmp_path, cache_home):
    model = with_cache(tiny_model(), cache_home)
    pixels = pixels_of(model, tmp_path)
    computed = model.encode_images(pixels)
    cold = model.encode_images(pixels, cached=True)
    warm = model.encode_images(pixels, cached=True)
    assert (model.feature_cache.misses, model.feature_cache.hits) == (3, 3)
    assert torch.equal(cold, computed) and torch.equal(warm, computed)  # bytes, so a stage's outputs never depend on it
    assert len(list(cache_home.glob("*/*.safetensors"))) == 3

    # another process (another stage) with the same frozen encoder finds them
    again = with_cache(tiny_model(), cache_home)
    assert torch.equal(again.encode_images(pixels, cached=True), computed)
    assert (again.feature_cache.misses, again.feature_cache.hits) == (0, 3)


def test_another_encoder_precision_or_preprocessing_never_reads_an_old_entry(tmp_path, cache_home):
    model = with_cache(tiny_model(), cache_home)
    pixels = pixels_of(model, tmp_path)
    model.encode_images(pixels, cached=True)

    other_weights = with_cache(tiny_model(seed=1), cache_home)
    other_weights.encode_images(pixels, cached=True)
    assert other_weights.feature_cache.hits == 0

    model.use_precision(torch.bfloat16)
    model.feature_cache.misses = 0
    assert model.encode_images(pixels, cached=True).dtype == torch.bfloat16
    assert model.feature_cache.misses == 3

    fingerprint = "f" * 40  # the preprocessing is in the key: the pixels as the encoder receives them
    assert pixel_key(fingerprint, pixels[0]) != pixel_key(fingerprint, pixels[0] * 0.5)
    assert pixel_key(fingerprint, pixels[0]) != pixel_key(fingerprint, pixels[0].to(torch.bfloat16))


def test_a_trained_encoder_and_a_cache_turned_off_compute_every_time(tmp_path, cache_home, monkeypatch):
    freeze = {"llm": "frozen", "vision": "trainable", "vpg": "frozen", "vpgc": "trainable"}
    trained = with_cache(VPGCModel.from_config(tiny_config().replace(freeze=freeze)), cache_home)
    trained.encode_images(pixels_of(trained, tmp_path), cached=True)
    assert trained.feature_cache.hits + trained.feature_cache.misses == 0
    assert not cache_home.exists()

    monkeypatch.setenv("DEMONLAB_FEATURE_CACHE_GB", "0")
    assert tiny_model().feature_cache is None
    monkeypatch.setenv("DEMONLAB_FEATURE_CACHE_GB", "0.5")
    assert tiny_model().feature_cache.max_bytes == 2**29


def test_the_cache_keeps_to_its_bound_dropping_the_least_recently_used(tmp_path):
    entry = torch.zeros(64, 64)  # 16 KiB of float32, plus the safetensors header
    cache = FeatureCache(tmp_path, max_bytes=10 * 17_000)
    for i in range(8):
        cache.put(f"{i:040x}", entry + i)
        os.utime(cache._path(f"{i:040x}"), (1_000 + i, 1_000 + i))  # one second apart: a clear order of use
    assert cache.get(f"{0:040x}") is not None  # used now: the most recent
    for i in range(8, 12):
        cache.put(f"{i:040x}", entry + i)
    files = list(tmp_path.glob("*/*"))
    assert sum(f.stat().st_size for f in files) <= cache.max_bytes
    kept = {f.name[:40] for f in files}
    assert f"{0:040x}" in kept and f"{1:040x}" not in kept and f"{11:040x}" in kept


def test_an_unreadable_entry_is_a_miss_not_an_error(tmp_path):
    cache = FeatureCache(tmp_path, max_bytes=2**20)
    key = "ab" * 20
    cache.put(key, torch.ones(2, 3))
    cache._path(key).write_bytes(b"half a file")
    assert cache.get(key) is None and cache.misses == 1
    cache.put(key, torch.ones(2, 3))
    assert torch.equal(cache.get(key), torch.ones(2, 3))


WRITER = """
import sys, torch
from components.vpgc.features import FeatureCache
cache = FeatureCache(sys.argv[1], max_bytes=40 * 1100)  # room for ~40 of the 64 entries: trims while others read
for round in range(30):
    for i in range(64):
        key = f"{i:040x}"
        found = cache.get(key)
        assert found is None or torch.equal(found, torch.full((16, 16), float(i))), key
        if found is None:
            cache.put(key, torch.full((16, 16), float(i)))
"""


def test_two_processes_share_one_folder_while_it_is_trimmed(tmp_path):
    """Each reads what it finds, writes what it misses; the other evicts meanwhile: no error, no wrong tensor."""
    root = str(tmp_path / "features")
    writers = [subprocess.Popen([sys.executable, "-c", WRITER, root], stderr=subprocess.PIPE) for _ in range(2)]
    errors = [writer.communicate(timeout=120)[1].decode() for writer in writers]
    assert [writer.returncode for writer in writers] == [0, 0], errors
    assert sum(f.stat().st_size for f in (tmp_path / "features").glob("*/*")) <= 40 * 1100
