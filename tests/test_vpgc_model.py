"""VPG-C behaviour on tiny random configs of the real classes: zero-init, locality, prefill-only, batching."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from vpgc_tiny import tiny_model, write_images

from components.demon.schema import to_parts
from components.vpgc.generation import GenerationSettings
from components.vpgc.prompts import Turn
from components.vpgc.vpgc import VPGCInputs, decoder_layers


def conversations(paths: list[str]) -> list[list[Turn]]:
    """Three samples with 2, 0 and 1 images and different lengths."""
    return [
        [Turn(to_parts("Compare {image#1} with {image#2}: what changed?", paths[:2]))],
        [Turn(to_parts("Name three colours.", []))],
        [Turn(to_parts("Here is a long description before the picture {image#1} so what is it?", paths[2:3]))],
    ]


def prefill(model, convs, padding_side="left"):
    layouts = model.layouts(convs)
    pixels = model.load_pixels([p for item in layouts for p in item.images])
    return model.prepare(layouts, pixels, padding_side=padding_side)


def capture_block_input(model):
    """Record the hidden states entering the VPG-C block (registered after VPG-C, so it sees its result)."""
    seen = []
    handle = decoder_layers(model.llm)[model.config.layer].register_forward_pre_hook(
        lambda module, args: seen.append(args[0].detach().clone())
    )
    return seen, handle


@pytest.fixture
def images(tmp_path):
    return write_images(tmp_path, 3)


def test_zero_initialised_vpgc_is_the_base_model(images):
    model = tiny_model()
    assert torch.count_nonzero(model.vpgc.output_proj.weight) == 0
    assert torch.equal(model.vpgc.query_tokens, model.vpg.query_tokens)  # Q_new starts as the VPG's queries
    batch, features = prefill(model, conversations(images))
    calls = model.hook.calls
    with torch.no_grad():
        on = model(batch, features).logits
        model.vpgc_enabled = False
        off = model(batch, features).logits
    assert model.hook.calls == calls + 1  # VPG-C really ran when on, and only then
    torch.testing.assert_close(on, off, rtol=0, atol=1e-6)


def test_residual_lands_only_on_that_images_positions(images):
    model = tiny_model(trained_vpgc=True)
    batch, features = prefill(model, conversations(images))
    seen, handle = capture_block_input(model)
    with torch.no_grad():
        model(batch, features)
        model.vpgc_enabled = False
        model(batch, features)
    handle.remove()
    with_vpgc, without = seen
    image_mask = torch.zeros(batch.attention_mask.shape, dtype=torch.bool)
    q = model.vpg.num_query_tokens
    for row, start in zip(batch.image_batch_index.tolist(), batch.image_starts.tolist(), strict=True):
        image_mask[row, start : start + q] = True
    changed = (with_vpgc - without).abs().amax(-1) > 0
    assert torch.equal(changed, image_mask)  # every image position moved, no text or pad position did

    # Changing image j's features changes the residual at image j's positions only.
    hidden = torch.randn(*batch.attention_mask.shape, model.llm.config.hidden_size)
    inputs = VPGCInputs(features, batch.image_batch_index, batch.image_starts, batch.guidance_index)
    before = model.vpgc(hidden, inputs, model.vpg)
    for j in range(features.shape[0]):
        other = features.clone()
        other[j] = torch.randn_like(other[j])
        after = model.vpgc(hidden, dataclasses.replace(inputs, features=other), model.vpg)
        moved = (after - before).abs().amax(-1) > 0
        expected = torch.zeros_like(moved)
        start = batch.image_starts[j]
        expected[batch.image_batch_index[j], start : start + q] = True
        assert torch.equal(moved, expected), f"image {j}"


def test_guidance_comes_from_the_last_prompt_token(images):
    model = tiny_model(trained_vpgc=True)
    batch, features = prefill(model, conversations(images))
    hidden = torch.randn(*batch.attention_mask.shape, model.llm.config.hidden_size)
    inputs = VPGCInputs(features, batch.image_batch_index, batch.image_starts, batch.guidance_index)
    base = model.vpgc(hidden, inputs, model.vpg)
    assert batch.guidance_index.tolist() == [batch.attention_mask.shape[1] - 1] * 3  # left padding: last position
    poked = hidden.clone()
    poked[0, -2] += 1.0  # not the last token: no effect
    assert torch.equal(model.vpgc(poked, inputs, model.vpg), poked + (base - hidden))
    poked = hidden.clone()
    poked[0, -1] += 1.0  # the last token of sample 0: its images' residuals change, sample 2's do not
    delta = (model.vpgc(poked, inputs, model.vpg) - poked) - (base - hidden)
    assert delta[0].abs().sum() > 0 and delta[2].abs().sum() == 0


def test_vpgc_runs_in_the_prefill_only(images):
    model = tiny_model(trained_vpgc=True)
    qformer_calls = []
    model.vpg.qformer.register_forward_hook(lambda *args: qformer_calls.append(1))
    settings = GenerationSettings(max_new_tokens=6)
    model.generate(conversations(images), settings=settings)
    assert len(qformer_calls) == 2  # the VPG once, VPG-C once, however many tokens were decoded
    model.vpgc_enabled = False
    qformer_calls.clear()
    model.generate(conversations(images), settings=settings)
    assert len(qformer_calls) == 1


def test_batched_generation_mixing_image_counts_equals_one_by_one(images):
    model = tiny_model(seed=1, trained_vpgc=True)
    settings = GenerationSettings(max_new_tokens=10)
    convs = conversations(images)
    batched = model.generate(convs, settings=settings)
    singles = [model.generate([c], settings=settings)[0] for c in convs]
    assert batched == singles
    assert all(batched)  # the random model does say something


def test_seeded_sampling_is_reproducible(images):
    model = tiny_model(seed=2, trained_vpgc=True)
    sample = GenerationSettings(max_new_tokens=8, do_sample=True, top_p=0.9, temperature=1.5, seed=7)
    convs = conversations(images)
    first = model.generate(convs, settings=sample)
    assert model.generate(convs, settings=sample) == first
    greedy = model.generate(convs, settings=GenerationSettings(max_new_tokens=8))
    tiny_top_p = model.generate(convs, settings=GenerationSettings(max_new_tokens=8, do_sample=True, top_p=1e-6))
    assert tiny_top_p == greedy  # top_p -> 0 keeps only the most likely token


def test_stop_string_ends_the_reply(images):
    model = tiny_model(seed=3, trained_vpgc=True)
    convs = conversations(images)[:1]
    free = model.generate(convs, settings=GenerationSettings(max_new_tokens=8))[0]
    word = free.split()[1] if len(free.split()) > 1 else free[-1]
    stopped = model.generate(convs, settings=GenerationSettings(max_new_tokens=8, stop=(word,)))[0]
    assert word not in stopped and free.startswith(stopped)


def test_only_vpgc_learns(images):
    model = tiny_model(trained_vpgc=False)
    model.train()
    assert not model.llm.training and not model.vision.training and model.vpgc.training
    convs = conversations(images)
    layouts = model.layouts(convs, targets=["It moved.", "Red, green, blue.", "A cat."])
    pixels = model.load_pixels([p for item in layouts for p in item.images])
    batch, features = model.prepare(layouts, pixels, padding_side="right")
    loss = model(batch, features).loss
    loss.backward()
    with_grad = {n for n, p in model.named_parameters() if p.grad is not None}
    assert with_grad and all(n.startswith("vpgc.") for n in with_grad)
    assert model.vpgc.output_proj.weight.grad.abs().sum() > 0  # the zero projection starts learning at once
