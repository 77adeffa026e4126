"""Learning checks that can tell a bug in VPG-C training from too little training (docs/results.md):

- gradient flow: after one step every trainable VPG-C tensor has a gradient and no frozen tensor moved;
- overfit: on the embedded default's real backbones, VPG-C alone learns a handful of difference pairs that share one
  instruction (only the images tell their answers apart), answers each with its own change, and its answers follow
  the images when they are swapped between pairs; the backbone (VPG-C off) does not answer them;
- the VPG carries the image: after a short alignment, the held-out caption loss with the true images is clearly
  below the loss with the images swapped between samples (`heldout_loss_swapped`, recorded by every training run).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from train_helpers import draw, stage, write_synth_folder
from vpgc_tiny import tiny_model

from components.experiment import load_experiment, section
from components.training.loss import ResponseLoss
from components.training.recipe import param_groups, train
from components.vpgc.config import model_config_from_dict
from components.vpgc.generation import GenerationSettings
from components.vpgc.model import VPGCModel
from components.vpgc.precision import resolve_precision
from components.vpgc.prompts import Conversation, Turn

ROOT = Path(__file__).resolve().parents[1]
# (shape, before, after): one instruction for all, so only the images say which answer is right.
PAIRS = [("circle", "red", "blue"), ("square", "green", "yellow"), ("triangle", "blue", "red"), ("circle", "yellow",
         "green")]  # fmt: skip


def difference_prompt(first: str, second: str) -> Conversation:
    parts = [("text", "What changed between"), ("image", first), ("text", "and"), ("image", second), ("text", "?")]
    return [Turn(user=[{"type": kind, ("path" if kind == "image" else "text"): value} for kind, value in parts])]


def test_one_step_reaches_every_trainable_tensor_and_no_frozen_one(tmp_path):
    torch.manual_seed(0)
    model = tiny_model().train(True)
    frozen = {name: p.detach().clone() for name, p in model.named_parameters() if not p.requires_grad}
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"vpgc.query_tokens", "vpgc.guidance_proj.weight", "vpgc.guidance_proj.bias",
                         "vpgc.output_proj.weight", "vpgc.output_proj.bias"}  # fmt: skip
    for i, (shape, before, after) in enumerate(PAIRS):
        draw(shape, before, "white", 28).save(tmp_path / f"{i}a.png")
        draw(shape, after, "white", 28).save(tmp_path / f"{i}b.png")
    conversations = [difference_prompt(f"{i}a.png", f"{i}b.png") for i in range(len(PAIRS))]
    layouts = model.layouts(conversations, [f"The {shape} turned {after}." for shape, _, after in PAIRS])
    pixels = model.load_pixels([p for item in layouts for p in item.images], tmp_path)
    loss_fn = ResponseLoss(model)
    optimizer = torch.optim.AdamW(param_groups(model, 0.05), lr=1e-2)
    # Zero-initialised projections: the first backward reaches output_proj only (its input is non-zero, while
    # nothing flows back through a zero matrix). After one step every trainable tensor must get a gradient.
    loss_fn(layouts, pixels).backward()
    assert model.vpgc.output_proj.weight.grad.abs().sum() > 0
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    loss_fn(layouts, pixels).backward()
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            assert parameter.grad is not None and parameter.grad.abs().sum() > 0, f"{name} got no gradient"
    optimizer.step()
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            assert parameter.grad is None, f"frozen {name} accumulated a gradient"
            assert torch.equal(parameter, frozen[name]), f"frozen {name} changed"


@pytest.mark.slow
def test_vpgc_overfits_pairs_only_the_images_tell_apart(tmp_path):
    """Real SmolLM2 + EfficientNet-Lite0, a random frozen Q-Former, VPG-C trained alone in the compute precision
    training uses (bf16 where the CPU has bf16 units)."""
    for i, (shape, before, after) in enumerate(PAIRS):
        draw(shape, before, "white", 224).save(tmp_path / f"{i}a.png")
        draw(shape, after, "white", 224).save(tmp_path / f"{i}b.png")
    conversations = [difference_prompt(f"{i}a.png", f"{i}b.png") for i in range(len(PAIRS))]
    answers = [f"The {shape} turned {after}." for shape, _, after in PAIRS]
    config = model_config_from_dict(section(load_experiment(ROOT / "experiments" / "tiny.yaml"), "model", "tiny"))
    torch.manual_seed(0)
    model = VPGCModel.from_config(config).use_precision(resolve_precision("auto", torch.device("cpu")))
    settings = GenerationSettings(max_new_tokens=12)
    model.vpgc_enabled = False
    backbone = model.generate(conversations, tmp_path, settings)
    assert sum(reply == answer for reply, answer in zip(backbone, answers, strict=True)) == 0, backbone
    model.vpgc_enabled = True

    loss_fn = ResponseLoss(model.train(True))
    optimizer = torch.optim.AdamW(param_groups(model, 0.0), lr=3e-3)
    layouts = model.layouts(conversations, answers)
    pixels = model.load_pixels([p for item in layouts for p in item.images], tmp_path).unflatten(0, (len(PAIRS), 2))
    tokens = sum(len(item.target_ids) for item in layouts)
    order = torch.Generator().manual_seed(0)
    for _ in range(50):
        # a new order every step: a bug that mixes up the samples of a batch cannot be learnt around
        shuffled = torch.randperm(len(PAIRS), generator=order).tolist()
        loss = loss_fn([layouts[i] for i in shuffled], pixels[shuffled].flatten(0, 1)) / tokens
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    assert float(loss) < 0.3
    model.train(False)
    assert model.generate(conversations, tmp_path, settings) == answers
    # Pair i's text with pair i+1's images: the answer is pair i+1's.
    swapped = [difference_prompt(f"{(i + 1) % 4}a.png", f"{(i + 1) % 4}b.png") for i in range(len(PAIRS))]
    assert model.generate(swapped, tmp_path, settings) == answers[1:] + answers[:1]


@pytest.mark.slow
def test_aligned_vpg_carries_the_image(tmp_path):
    """A short alignment of the embedded default's VPG on captions: the captions of held-out images are clearly
    likelier with their own images than with another sample's."""
    data = write_synth_folder(tmp_path / "data", differences=0, captions=48)
    document = yaml.safe_load((ROOT / "experiments" / "tiny.yaml").read_text())
    document["train"] = {"heldout": 8, "align": stage(30, {"SynthCaption": 8}, micro_batch=8, checkpoint_every=30)}
    experiment = tmp_path / "align.yaml"
    experiment.write_text(yaml.safe_dump(document, sort_keys=False))
    result = train(experiment, "align", data, tmp_path / "align")
    assert result.heldout_loss_after < result.heldout_loss_before
    assert result.heldout_loss_swapped > result.heldout_loss_after * 1.2, result
