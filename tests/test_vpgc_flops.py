"""The analytic FLOP formulas agree with torch's FLOP counter, on the real 7B shapes (meta device)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from components.vpgc.config import load_config
from components.vpgc.flops import llm_prefill_flops, vpgc_flops
from components.vpgc.model import VPGCModel
from components.vpgc.vpgc import VPGCInputs

ROOT = Path(__file__).resolve().parents[1]


def counted(function) -> int:
    with FlopCounterMode(display=False) as counter:
        function()
    return counter.get_total_flops()


def test_vpgc_and_prefill_flops_for_vicuna7b():
    config = load_config(ROOT / "experiments" / "vicuna7b.yaml")
    model = VPGCModel.from_config(config, device="meta")
    model.vpg.qformer.set_attn_implementation("eager")  # plain matmuls, which the counter sees
    model.llm.set_attn_implementation("eager")
    sequences, per_sequence, tokens = 2, 3, 300
    images = sequences * per_sequence
    with torch.device("meta"):
        hidden = torch.zeros(sequences, tokens, 4096, dtype=torch.float16)
        inputs = VPGCInputs(
            features=torch.zeros(images, 257, 1408),
            image_batch_index=torch.arange(sequences).repeat_interleave(per_sequence),
            image_starts=torch.tensor([1, 40, 80] * sequences),
            guidance_index=torch.full((sequences,), tokens - 1),
        )
        embeds = torch.zeros(sequences, tokens, 4096, dtype=torch.float16)
    assert counted(lambda: model.vpgc(hidden, inputs, model.vpg)) == vpgc_flops(config, sequences, images, 257)
    prefill = counted(lambda: model.llm(inputs_embeds=embeds, logits_to_keep=1))
    assert prefill == llm_prefill_flops(config, sequences, tokens)
