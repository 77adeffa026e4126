"""Checkpoints: our safetensors round trip, and LAVIS-named release files through the key map."""

from __future__ import annotations

import re

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from vpgc_tiny import tiny_model, write_images

from components.demon.schema import to_parts
from components.errors import UserError
from components.vpgc.checkpoints import (
    WEIGHTS_FILE,
    load_checkpoint,
    load_lavis_weights,
    map_lavis_key,
    save_checkpoint,
    save_stable,
)
from components.vpgc.prompts import Turn


def logits_of(model, paths):
    convs = [[Turn(to_parts("{image#1} and {image#2}?", paths[:2]))], [Turn(to_parts("Only {image#1}", paths[2:]))]]
    layouts = model.layouts(convs)
    batch, features = model.prepare(layouts, model.load_pixels([p for item in layouts for p in item.images]))
    with torch.no_grad():
        return model(batch, features).logits


def test_save_and_load_give_identical_logits(tmp_path):
    paths = write_images(tmp_path, 3)
    trained = tiny_model(seed=0, trained_vpgc=True)
    folder = save_checkpoint(trained, tmp_path / "ckpt")
    assert sorted(p.name for p in folder.iterdir()) == ["config.yaml", WEIGHTS_FILE]
    assert all(key.startswith("vpgc.") for key in load_file(folder / WEIGHTS_FILE))  # trainable parts only

    fresh = tiny_model(seed=0)  # same frozen backbones (same seed), untrained VPG-C
    assert not torch.equal(logits_of(fresh, paths), logits_of(trained, paths))
    assert load_checkpoint(fresh, folder) == ["vpgc"]
    torch.testing.assert_close(logits_of(fresh, paths), logits_of(trained, paths), rtol=0, atol=0)


def test_the_same_weights_make_the_same_file(tmp_path):
    """safetensors orders its metadata map by a per-map hash seed; a checkpoint's bytes must not (DVC hashes it)."""
    trained = tiny_model(seed=0, trained_vpgc=True)
    files = {save_checkpoint(trained, tmp_path / str(k)).joinpath(WEIGHTS_FILE).read_bytes() for k in range(6)}
    assert len(files) == 1
    tensors = {"b": torch.arange(6.0).reshape(2, 3), "a": torch.ones(4, dtype=torch.int64)}
    metadata = {f"key{k}": str(k) for k in range(8)}
    save_stable(tensors, tmp_path / "w.safetensors", metadata)
    with safe_open(tmp_path / "w.safetensors", "pt") as handle:  # a valid file: metadata and tensors read back
        assert handle.metadata() == metadata and torch.equal(handle.get_tensor("b"), tensors["b"])


def test_checkpoint_errors_name_the_problem(tmp_path):
    model = tiny_model()
    with pytest.raises(UserError, match="no weights.safetensors"):
        load_checkpoint(model, tmp_path)
    save_file({"vpgc.query_tokens": torch.zeros(1, 5, 32)}, tmp_path / WEIGHTS_FILE)
    with pytest.raises(UserError, match="shape mismatch"):
        load_checkpoint(model, tmp_path)
    save_file({"vpgc.gate": torch.zeros(1)}, tmp_path / WEIGHTS_FILE)
    with pytest.raises(UserError, match="unknown key"):
        load_checkpoint(model, tmp_path)
    save_file({"vpgc.query_tokens": torch.zeros(1, 4, 32)}, tmp_path / WEIGHTS_FILE)
    with pytest.raises(UserError, match="lacks"):
        load_checkpoint(model, tmp_path)


# The Cheetah model's state dict as the release builds it (DCDmllm/Cheetah, cheetah/models): names and shapes read off
# its own modules, instantiated at this file's tiny sizes (2 ViT blocks, a 2-layer Q-Former with cross-attention in
# layer 0, 4 decoder layers): eva_vit.py's VisionTransformer as create_eva_vit_g configures it; blip2.py's
# init_Qformer (Qformer.py's BertLMHeadModel) after cheetah_vicuna.py drops its text branch and LM head; and
# modeling_llama.py's LlamaForCausalLM, which set_qformer_and_proj gives VPG-C and the same Q-Former a second time.
# {b}: ViT block, {l}: Q-Former layer, {x}: Q-Former layer with cross-attention, {d}: decoder layer. A decoder shape of
# None is the test LLM's own (grouped-query, SmolLM2's vocabulary; the release's LLaMA code has neither).
RELEASE_CHEETAH: dict[str, tuple[int, ...] | None] = {
    "query_tokens": (1, 4, 32),
    "visual_encoder.cls_token": (1, 1, 32),
    "visual_encoder.pos_embed": (1, 5, 32),
    "visual_encoder.patch_embed.proj.weight": (32, 3, 14, 14),
    "visual_encoder.patch_embed.proj.bias": (32,),
    "visual_encoder.blocks.{b}.norm1.weight": (32,),
    "visual_encoder.blocks.{b}.norm1.bias": (32,),
    "visual_encoder.blocks.{b}.attn.q_bias": (32,),
    "visual_encoder.blocks.{b}.attn.v_bias": (32,),
    "visual_encoder.blocks.{b}.attn.qkv.weight": (96, 32),
    "visual_encoder.blocks.{b}.attn.proj.weight": (32, 32),
    "visual_encoder.blocks.{b}.attn.proj.bias": (32,),
    "visual_encoder.blocks.{b}.norm2.weight": (32,),
    "visual_encoder.blocks.{b}.norm2.bias": (32,),
    "visual_encoder.blocks.{b}.mlp.fc1.weight": (64, 32),
    "visual_encoder.blocks.{b}.mlp.fc1.bias": (64,),
    "visual_encoder.blocks.{b}.mlp.fc2.weight": (32, 64),
    "visual_encoder.blocks.{b}.mlp.fc2.bias": (32,),
    "ln_vision.weight": (32,),
    "ln_vision.bias": (32,),
    "Qformer.bert.embeddings.position_ids": (1, 512),
    "Qformer.bert.embeddings.LayerNorm.weight": (32,),
    "Qformer.bert.embeddings.LayerNorm.bias": (32,),
    "Qformer.bert.encoder.layer.{l}.attention.self.query.weight": (32, 32),
    "Qformer.bert.encoder.layer.{l}.attention.self.query.bias": (32,),
    "Qformer.bert.encoder.layer.{l}.attention.self.key.weight": (32, 32),
    "Qformer.bert.encoder.layer.{l}.attention.self.key.bias": (32,),
    "Qformer.bert.encoder.layer.{l}.attention.self.value.weight": (32, 32),
    "Qformer.bert.encoder.layer.{l}.attention.self.value.bias": (32,),
    "Qformer.bert.encoder.layer.{l}.attention.output.dense.weight": (32, 32),
    "Qformer.bert.encoder.layer.{l}.attention.output.dense.bias": (32,),
    "Qformer.bert.encoder.layer.{l}.attention.output.LayerNorm.weight": (32,),
    "Qformer.bert.encoder.layer.{l}.attention.output.LayerNorm.bias": (32,),
    "Qformer.bert.encoder.layer.{x}.crossattention.self.query.weight": (32, 32),
    "Qformer.bert.encoder.layer.{x}.crossattention.self.query.bias": (32,),
    "Qformer.bert.encoder.layer.{x}.crossattention.self.key.weight": (32, 32),
    "Qformer.bert.encoder.layer.{x}.crossattention.self.key.bias": (32,),
    "Qformer.bert.encoder.layer.{x}.crossattention.self.value.weight": (32, 32),
    "Qformer.bert.encoder.layer.{x}.crossattention.self.value.bias": (32,),
    "Qformer.bert.encoder.layer.{x}.crossattention.output.dense.weight": (32, 32),
    "Qformer.bert.encoder.layer.{x}.crossattention.output.dense.bias": (32,),
    "Qformer.bert.encoder.layer.{x}.crossattention.output.LayerNorm.weight": (32,),
    "Qformer.bert.encoder.layer.{x}.crossattention.output.LayerNorm.bias": (32,),
    "Qformer.bert.encoder.layer.{l}.intermediate_query.dense.weight": (64, 32),
    "Qformer.bert.encoder.layer.{l}.intermediate_query.dense.bias": (64,),
    "Qformer.bert.encoder.layer.{l}.output_query.dense.weight": (32, 64),
    "Qformer.bert.encoder.layer.{l}.output_query.dense.bias": (32,),
    "Qformer.bert.encoder.layer.{l}.output_query.LayerNorm.weight": (32,),
    "Qformer.bert.encoder.layer.{l}.output_query.LayerNorm.bias": (32,),
    "llama_model.model.query_tokens": (1, 4, 32),
    "llama_model.model.embed_tokens.weight": None,
    "llama_model.model.layers.{d}.self_attn.q_proj.weight": None,
    "llama_model.model.layers.{d}.self_attn.k_proj.weight": None,
    "llama_model.model.layers.{d}.self_attn.v_proj.weight": None,
    "llama_model.model.layers.{d}.self_attn.o_proj.weight": None,
    "llama_model.model.layers.{d}.self_attn.rotary_emb.inv_freq": (
        8,
    ),  # a persistent buffer in the release's LLaMA code
    "llama_model.model.layers.{d}.mlp.gate_proj.weight": None,
    "llama_model.model.layers.{d}.mlp.down_proj.weight": None,
    "llama_model.model.layers.{d}.mlp.up_proj.weight": None,
    "llama_model.model.layers.{d}.input_layernorm.weight": None,
    "llama_model.model.layers.{d}.post_attention_layernorm.weight": None,
    "llama_model.model.norm.weight": None,
    "llama_model.model.qformer_proj.weight": (32, 64),
    "llama_model.model.qformer_proj.bias": (32,),
    "llama_model.model.llm_proj.weight": (64, 32),
    "llama_model.model.llm_proj.bias": (64,),
    "llama_model.lm_head.weight": None,
    "llama_proj.weight": (64, 32),
    "llama_proj.bias": (64,),
}
# What BLIP-2's Q-Former still has in blip2_pretrained_flant5xxl.pth: the text branch and LM head of Qformer.py's
# BertLMHeadModel as blip2.py's init_Qformer builds it (vocabulary 30 here), which cheetah_vicuna.py drops.
RELEASE_QFORMER_TEXT: dict[str, tuple[int, ...] | None] = {
    "Qformer.bert.embeddings.word_embeddings.weight": (30, 32),
    "Qformer.bert.embeddings.position_embeddings.weight": (512, 32),
    "Qformer.bert.encoder.layer.{l}.intermediate.dense.weight": (64, 32),
    "Qformer.bert.encoder.layer.{l}.intermediate.dense.bias": (64,),
    "Qformer.bert.encoder.layer.{l}.output.dense.weight": (32, 64),
    "Qformer.bert.encoder.layer.{l}.output.dense.bias": (32,),
    "Qformer.bert.encoder.layer.{l}.output.LayerNorm.weight": (32,),
    "Qformer.bert.encoder.layer.{l}.output.LayerNorm.bias": (32,),
    "Qformer.cls.predictions.bias": (30,),
    "Qformer.cls.predictions.transform.dense.weight": (32, 32),
    "Qformer.cls.predictions.transform.dense.bias": (32,),
    "Qformer.cls.predictions.transform.LayerNorm.weight": (32,),
    "Qformer.cls.predictions.transform.LayerNorm.bias": (32,),
    "Qformer.cls.predictions.decoder.weight": (30, 32),
    "Qformer.cls.predictions.decoder.bias": (30,),
}


def release_state_dict(model, table: dict[str, tuple[int, ...] | None]) -> dict[str, torch.Tensor]:
    """Random tensors under the release's names (`table` expanded over the test model's layers)."""
    qformer = model.config.vpg.qformer
    layers = {
        "b": range(model.config.vision.arch["num_hidden_layers"]),
        "l": range(qformer["num_hidden_layers"]),
        "x": range(0, qformer["num_hidden_layers"], qformer["cross_attention_frequency"]),
        "d": range(model.config.llm.num_layers),
    }
    ours, g, sd = model.state_dict(), torch.Generator().manual_seed(0), {}
    for template, shape in table.items():
        field = next((k for k in layers if f"{{{k}}}" in template), None)
        for name in [template.format(**{field: i}) for i in layers[field]] if field else [template]:
            sd[name] = torch.randn(shape or ours[map_lavis_key(name)].shape, generator=g)
    return sd


def test_release_checkpoint_loads_through_the_key_map(tmp_path):
    model = tiny_model()
    sd = release_state_dict(model, RELEASE_CHEETAH)
    for key in [k for k in sd if k.startswith("Qformer.")]:  # set_qformer_and_proj: the same tensors again
        sd["llama_model.model." + key] = sd[key]
    path = tmp_path / "cheetah.pth"
    torch.save({"model": sd, "config": {"arch": "cheetah_vicuna"}, "epoch": 3}, path)  # LAVIS's layout
    report = load_lavis_weights(model, path)  # any name outside the map, or without a parameter here, raises

    assert set(report["loaded"]) == {name for name, _ in model.named_parameters()}  # nothing missing
    assert {re.sub(r"\.\d+\.", ".N.", k) for k in report["ignored"]} == {
        "Qformer.bert.embeddings.position_ids",
        "llama_model.model.Qformer.bert.embeddings.position_ids",
        "llama_model.model.layers.N.self_attn.rotary_emb.inv_freq",
    }
    state = model.state_dict()
    torch.testing.assert_close(state["vpgc.guidance_proj.weight"], sd["llama_model.model.qformer_proj.weight"])
    torch.testing.assert_close(state["vpgc.output_proj.bias"], sd["llama_model.model.llm_proj.bias"])
    torch.testing.assert_close(state["vpg.llm_proj.weight"], sd["llama_proj.weight"])
    torch.testing.assert_close(state["vpgc.query_tokens"], sd["llama_model.model.query_tokens"])
    torch.testing.assert_close(state["vpg.query_tokens"], sd["query_tokens"])
    torch.testing.assert_close(
        state["vpg.qformer.encoder.layer.0.crossattention.attention.key.weight"],
        sd["Qformer.bert.encoder.layer.0.crossattention.self.key.weight"],
    )
    q, v = sd["visual_encoder.blocks.1.attn.q_bias"], sd["visual_encoder.blocks.1.attn.v_bias"]
    torch.testing.assert_close(
        state["vision.model.encoder.layers.1.self_attn.qkv.bias"], torch.cat([q, torch.zeros_like(q), v])
    )
    torch.testing.assert_close(state["vision.model.post_layernorm.weight"], sd["ln_vision.weight"])
    torch.testing.assert_close(state["llm.model.layers.3.mlp.down_proj.weight"],
                               sd["llama_model.model.layers.3.mlp.down_proj.weight"])  # fmt: skip


def test_blip2_file_loads_the_vision_encoder_and_query_branch(tmp_path):
    model = tiny_model()
    blip2 = {k: v for k, v in release_state_dict(model, RELEASE_CHEETAH).items() if not k.startswith("llama")}
    text = release_state_dict(model, RELEASE_QFORMER_TEXT)
    torch.save({"model": blip2 | text}, tmp_path / "blip2.pth")
    report = load_lavis_weights(model, tmp_path / "blip2.pth")
    vision_and_query_branch = ("vision.", "vpg.qformer.", "vpg.query_tokens")
    assert set(report["loaded"]) == {n for n, _ in model.named_parameters() if n.startswith(vision_and_query_branch)}
    assert set(report["ignored"]) == set(text) | {"Qformer.bert.embeddings.position_ids"}


def test_lavis_files_with_problems_are_rejected(tmp_path):
    model = tiny_model()
    path = tmp_path / "bad.pth"
    with pytest.raises(UserError, match="not found"):
        load_lavis_weights(model, path)
    torch.save({"model": {"Qformer.bert.pooler.dense.weight": torch.zeros(2, 2)}}, path)
    with pytest.raises(UserError, match="not in the LAVIS key map"):
        load_lavis_weights(model, path)
    torch.save({"model": {"llama_proj.weight": torch.zeros(64, 768)}}, path)
    with pytest.raises(UserError, match="shape mismatch"):
        load_lavis_weights(model, path)
    torch.save({"model": {"query_tokens": torch.zeros(1, 4, 32)}, "scaler": object()}, path)
    with pytest.raises(UserError, match="weights-only"):
        load_lavis_weights(model, path)
