"""The synthetic training world and mini-DEMON share only the object vocabulary (colours, shapes), as CC3M and DEMON
share the world's objects: no near-duplicate images, no DEMON instruction template among the synthetic instructions,
no synthetic answer sentence that is a mini-DEMON answer sentence, not even with other colours and shapes filled in.
Training on one and testing on the other stays zero-shot. The measured figures are recorded in docs/synth.md."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import imagehash
import numpy as np
import pandas as pd
import pytest
from PIL import Image
from synth_helpers import synth_config, tiny_model_doc

from components.demon.mini import build_mini_demon
from components.demon.registry import all_tasks
from components.demon.vocabulary import COLORS, SHAPES
from components.synth.pipeline import generate

# 256-bit pHashes (hash_size 16) this close are near-duplicates: a picture and its JPEG copy (as mini-DEMON writes
# its images) measure 0-16 apart; synthetic scenes drawn with mini-DEMON's own layouts had copies at 0-24 bits, while
# unrelated pictures measure 70 and more. (The 64-bit hash is too coarse for sparse pictures: unrelated ones came
# within 6 bits of each other.)
HASH_SIZE, NEAR = 16, 24


def normalized(text: str) -> str:
    return " ".join(re.sub(r"[^a-z0-9 ]", " ", text.lower()).split())


def sentences(text: str) -> set[str]:
    """The normalised sentences of an answer (mini-DEMON joins several with ". ")."""
    return {normalized(s) for s in re.split(r"[.!?;]\s*", text) if normalized(s)}


def skeleton(sentence: str) -> str:
    """The phrasing without the sampled values: "the <color> <shape> at the top left is gone"."""
    words = ("<color>" if w in COLORS else "<shape>" if w.rstrip("s") in SHAPES else w for w in sentence.split())
    return re.sub(r"\b\d+\b", "<n>", " ".join(words))


def hashes(paths: list[Path]) -> np.ndarray:
    """(N, HASH_SIZE**2) bool pHashes."""
    out = []
    for path in paths:
        with Image.open(path) as image:
            out.append(imagehash.phash(image.convert("RGB"), hash_size=HASH_SIZE).hash.flatten())
    return np.stack(out)


@pytest.fixture(scope="module")
def worlds(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Both worlds, checked whole: a glob below that stopped matching would compare nothing and pass."""
    mini = tmp_path_factory.mktemp("mini")
    built = build_mini_demon(mini, per_task=8, seed=0, progress=False)
    assert len(built["tasks"]) == 29 and len(list(mini.glob("*/core/core.json"))) == 29  # every Core task
    assert len([p for p in mini.glob("*/core/images/*") if p.is_file()]) == built["images"] > 29 * 8
    synth = tmp_path_factory.mktemp("synth")
    generate(synth_config(count=64), tiny_model_doc(), synth, progress=False)
    samples = pd.read_parquet(synth / "samples.parquet")
    assert (samples.task == "SynthDifference").sum() >= 32 and (samples.task == "SynthCaption").sum() >= 32
    assert len(list((synth / "images").glob("*.png"))) >= 64  # a source image per scene, plus the edited ones
    return mini, synth


def test_no_synthetic_image_is_a_near_duplicate_of_a_mini_demon_image(worlds: tuple[Path, Path]) -> None:
    mini, synth = worlds
    ours_paths = sorted((synth / "images").glob("*.png"))
    theirs, ours = hashes(sorted(p for p in mini.glob("*/core/images/*") if p.is_file())), hashes(ours_paths)
    distance = (ours[:, None, :] != theirs[None, :, :]).sum(-1)  # (synth, mini) Hamming distances
    close = int((distance.min(1) <= NEAR).sum())
    print(f"\nimages: {len(ours)} synthetic x {len(theirs)} mini-DEMON; min pHash distance {distance.min()}, "
          f"median {int(np.median(distance))}; synthetic images within {NEAR} bits: {close}")  # fmt: skip
    assert distance.min() > NEAR
    # the threshold does catch a copy: our images written as mini-DEMON writes its own (JPEG, quality 90)
    copies = []
    for path in ours_paths:
        buffer = io.BytesIO()
        with Image.open(path) as image:
            image.save(buffer, format="JPEG", quality=90)
        copies.append(imagehash.phash(Image.open(buffer), hash_size=HASH_SIZE).hash.flatten())
    assert ((np.stack(copies) != ours).sum(-1) <= NEAR).all()


def test_no_demon_template_or_answer_sentence_in_the_synthetic_data(worlds: tuple[Path, Path]) -> None:
    mini, synth = worlds
    samples = pd.read_parquet(synth / "samples.parquet")
    templates = {normalized(t) for task in all_tasks() for split in task.templates.values() for t in split}
    answers: set[str] = set()
    for path in mini.glob("*/core/core.json"):
        document = json.loads(path.read_text(encoding="utf-8"))
        templates |= {normalized(t) for t in document["metadata"]["task_instruction"]}
        for sample in document["data"]:
            answers |= sentences(str(sample["response"]))
    instructions = {normalized(t) for t in samples.instruction}
    ours = set().union(*(sentences(r) for r in samples.response))
    shared_templates, shared_sentences = instructions & templates, ours & answers
    shared_skeletons = {skeleton(s) for s in ours} & {skeleton(s) for s in answers}
    print(f"\ntext: {len(instructions)} synthetic instructions vs {len(templates)} DEMON templates, "
          f"{len(shared_templates)} shared; {len(ours)} synthetic answer sentences vs {len(answers)} mini-DEMON "
          f"answer sentences, {len(shared_sentences)} shared, {len(shared_skeletons)} shared with the colours and "
          f"shapes blanked: {sorted(shared_skeletons)[:5]}")  # fmt: skip
    assert len(answers) > 100 and len(ours) > 20 and len(instructions) >= 3  # measured something
    assert not shared_templates and not shared_sentences and not shared_skeletons
