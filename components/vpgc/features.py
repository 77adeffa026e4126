"""Frozen vision features computed once per image: a content-addressed cache on disk that processes share.

    key   = blake2b(encoder fingerprint, the image's pixels exactly as the encoder receives them)
    entry = <root>/<key[:2]>/<key>.safetensors, one tensor `features` (N, Dv) in the encoder's dtype

The fingerprint hashes the encoder's class, weights and buffers (their dtype included) and the key hashes the
preprocessed pixels, so a changed encoder, precision or preprocessing (size, crop, normalisation) never reads an old
entry. Only views that repeat are worth caching: a training crop is new at every step, so training steps encode as
before, and the cache serves evaluation (every model and view of a run reads the same images), held-out scoring
(before, after, with swapped images, in every training stage), the demo and chat.

An image is encoded alone (a batch of one) before it is stored, so its features never depend on which other images
shared its batch or on what the cache held: a stage writes the same bytes with a cold cache and a warm one. Entries
are written atomically (a temporary file, then a rename) and read tolerantly (missing or unreadable is a miss), so
two processes can fill one folder; once it holds more than its bound, the least recently used entries go.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load, save
from torch import nn

from components import atomic
from components.cache_root import cache_root

SIZE_ENV = "DEMONLAB_FEATURE_CACHE_GB"  # the bound on disk; 0 turns the cache off
DEFAULT_GB = 4.0  # EVA ViT-g's features are 0.7 MB an image in bf16: ~5,800 images; the embedded default's 0.1 MB
SUFFIX = ".safetensors"
TRIM_TO = 0.8  # a full cache is trimmed to this share of its bound, so it is not trimmed at every write


def _digest(*parts: bytes) -> str:
    hasher = hashlib.blake2b(digest_size=20)
    for part in parts:
        hasher.update(len(part).to_bytes(8, "little"))
        hasher.update(part)
    return hasher.hexdigest()


def _bytes(tensor: torch.Tensor) -> bytes:
    return tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes()


def encoder_fingerprint(encoder: nn.Module) -> str:
    """A digest of the encoder's class, parameter and buffer names, dtypes, shapes and values."""
    parts = [type(encoder).__qualname__.encode()]
    for name, tensor in sorted(encoder.state_dict().items()):
        parts += [name.encode(), str(tensor.dtype).encode(), str(tuple(tensor.shape)).encode(), _bytes(tensor)]
    return _digest(*parts)


def pixel_key(fingerprint: str, pixels: torch.Tensor) -> str:
    """The entry of one image's pixels (3, S, S) under an encoder's fingerprint."""
    return _digest(fingerprint.encode(), str(pixels.dtype).encode(), str(tuple(pixels.shape)).encode(), _bytes(pixels))


class FeatureCache:
    """Entries under `root`, at most ~`max_bytes` of them (least recently used go first); `hits`/`misses` count
    this object's lookups."""

    def __init__(self, root: str | os.PathLike[str], max_bytes: int) -> None:
        self.root = Path(root)
        self.max_bytes = max_bytes
        self.hits = self.misses = 0
        self._size: int | None = None  # bytes in the folder as this process last counted them, plus its writes

    @classmethod
    def from_environment(cls) -> FeatureCache | None:
        """`$DEMONLAB_CACHE/features`, bounded by `$DEMONLAB_FEATURE_CACHE_GB` (default 4); None when that is 0."""
        value = os.environ.get(SIZE_ENV, str(DEFAULT_GB))
        try:
            gigabytes = float(value)
        except ValueError:
            gigabytes = DEFAULT_GB  # a typo must not stop an evaluation; the cache only saves time
        return cls(cache_root() / "features", int(gigabytes * 2**30)) if gigabytes > 0 else None

    def _path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}{SUFFIX}"

    def get(self, key: str) -> torch.Tensor | None:
        path = self._path(key)
        try:
            features = load(path.read_bytes())["features"]
        except (OSError, SafetensorError, KeyError):  # not there, evicted meanwhile, or unreadable: compute it
            self.misses += 1
            return None
        with suppress(OSError):  # a read-only cache still serves
            os.utime(path)  # recently used: the last to be evicted
        self.hits += 1
        return features

    def put(self, key: str, features: torch.Tensor) -> None:
        data = save({"features": features.detach().cpu().contiguous()})
        try:
            atomic.write_bytes(self._path(key), data)
        except OSError:  # a full or read-only disk costs the next run the encoder, nothing else
            return
        if self._size is None:
            self._size = self._scan_size()
        else:
            self._size += len(data)
        if self._size > self.max_bytes:
            self.trim()

    def _entries(self) -> list[tuple[float, int, Path]]:
        """(last use, bytes, path) of every file, a killed writer's temporary ones too; ones another process
        removed meanwhile are skipped."""
        found = []
        for path in self.root.glob("*/*"):
            try:
                stat = path.stat()
            except OSError:
                continue
            found.append((stat.st_mtime, stat.st_size, path))
        return found

    def _scan_size(self) -> int:
        return sum(size for _, size, _ in self._entries())

    def trim(self) -> None:
        """Remove the least recently used entries until the folder holds at most `TRIM_TO` of the bound."""
        entries = sorted(self._entries())
        size = sum(size for _, size, _ in entries)
        for _, entry_size, path in entries:
            if size <= self.max_bytes * TRIM_TO:
                break
            with suppress(OSError):  # removed meanwhile by another process, or not ours to remove
                path.unlink()
            size -= entry_size
        self._size = size


def encode_cached(
    encode: Callable[[torch.Tensor], torch.Tensor],
    pixels: torch.Tensor,
    fingerprint: str,
    cache: FeatureCache,
    device: torch.device,
) -> torch.Tensor:
    """(M, 3, S, S) -> (M, N, Dv) on `device` through `cache`: each image's entry, or `encode` of that image alone
    (then stored)."""
    rows = []
    for image in pixels:
        key = pixel_key(fingerprint, image)
        features = cache.get(key)
        if features is None:
            features = encode(image[None])[0]
            cache.put(key, features)
        rows.append(features.to(device))
    return torch.stack(rows)
