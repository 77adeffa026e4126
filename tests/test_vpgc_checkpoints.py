"""Checkpoints: our safetensors round trip, and LAVIS-named release files through the key map."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file
from vpgc_tiny import tiny_model, write_images

from components.demon.schema import to_parts
from components.errors import UserError
from components.vpgc.checkpoints import WEIGHTS_FILE, load_checkpoint, load_lavis_weights, save_checkpoint
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


def lavis_state_dict(model) -> dict[str, torch.Tensor]:
    """A random state dict spelled the way the release's Cheetah/BLIP-2 `.pth` files spell it."""
    g = torch.Generator().manual_seed(0)

    def like(tensor):
        return torch.randn(tensor.shape, generator=g)

    vit = model.vision.model
    sd = {
        "visual_encoder.cls_token": like(vit.embeddings.class_embedding),
        "visual_encoder.pos_embed": like(vit.embeddings.position_embedding),
        "visual_encoder.patch_embed.proj.weight": like(vit.embeddings.patch_embedding.weight),
        "visual_encoder.patch_embed.proj.bias": like(vit.embeddings.patch_embedding.bias),
        "ln_vision.weight": like(vit.post_layernorm.weight),
        "ln_vision.bias": like(vit.post_layernorm.bias),
    }
    width = vit.config.hidden_size
    for i, block in enumerate(vit.encoder.layers):
        p = f"visual_encoder.blocks.{i}."
        for ours, theirs in (("layer_norm1", "norm1"), ("layer_norm2", "norm2")):
            sd[p + theirs + ".weight"] = like(getattr(block, ours).weight)
            sd[p + theirs + ".bias"] = like(getattr(block, ours).bias)
        sd[p + "attn.qkv.weight"] = like(block.self_attn.qkv.weight)
        sd[p + "attn.q_bias"] = torch.randn(width, generator=g)
        sd[p + "attn.v_bias"] = torch.randn(width, generator=g)
        sd[p + "attn.proj.weight"] = like(block.self_attn.projection.weight)
        sd[p + "attn.proj.bias"] = like(block.self_attn.projection.bias)
        for fc in ("fc1", "fc2"):
            sd[p + f"mlp.{fc}.weight"] = like(getattr(block.mlp, fc).weight)
            sd[p + f"mlp.{fc}.bias"] = like(getattr(block.mlp, fc).bias)
    qf = model.vpg.qformer
    sd["query_tokens"] = like(model.vpg.query_tokens)
    sd["Qformer.bert.embeddings.LayerNorm.weight"] = like(qf.layernorm.weight)
    sd["Qformer.bert.embeddings.LayerNorm.bias"] = like(qf.layernorm.bias)
    for i, layer in enumerate(qf.encoder.layer):
        p = f"Qformer.bert.encoder.layer.{i}."
        blocks = ["attention"] + (["crossattention"] if layer.has_cross_attention else [])
        for name in blocks:
            attention = getattr(layer, name)
            for proj in ("query", "key", "value"):
                sd[p + f"{name}.self.{proj}.weight"] = like(getattr(attention.attention, proj).weight)
                sd[p + f"{name}.self.{proj}.bias"] = like(getattr(attention.attention, proj).bias)
            sd[p + f"{name}.output.dense.weight"] = like(attention.output.dense.weight)
            sd[p + f"{name}.output.dense.bias"] = like(attention.output.dense.bias)
            sd[p + f"{name}.output.LayerNorm.weight"] = like(attention.output.LayerNorm.weight)
            sd[p + f"{name}.output.LayerNorm.bias"] = like(attention.output.LayerNorm.bias)
        sd[p + "intermediate_query.dense.weight"] = like(layer.intermediate_query.dense.weight)
        sd[p + "intermediate_query.dense.bias"] = like(layer.intermediate_query.dense.bias)
        for name in ("dense", "LayerNorm"):
            sd[p + f"output_query.{name}.weight"] = like(getattr(layer.output_query, name).weight)
            sd[p + f"output_query.{name}.bias"] = like(getattr(layer.output_query, name).bias)
        # the text branch, which the query-only Q-Former drops
        sd[p + "intermediate.dense.weight"] = torch.randn(64, 32, generator=g)
        sd[p + "output.dense.weight"] = torch.randn(32, 64, generator=g)
    sd["Qformer.bert.embeddings.word_embeddings.weight"] = torch.randn(30, 32, generator=g)
    sd["Qformer.bert.embeddings.position_ids"] = torch.arange(512)[None]
    sd["Qformer.cls.predictions.bias"] = torch.randn(30, generator=g)
    sd["llama_proj.weight"] = like(model.vpg.llm_proj.weight)
    sd["llama_proj.bias"] = like(model.vpg.llm_proj.bias)
    sd["llama_model.model.query_tokens"] = like(model.vpgc.query_tokens)
    sd["llama_model.model.qformer_proj.weight"] = like(model.vpgc.guidance_proj.weight)
    sd["llama_model.model.qformer_proj.bias"] = like(model.vpgc.guidance_proj.bias)
    sd["llama_model.model.llm_proj.weight"] = like(model.vpgc.output_proj.weight)
    sd["llama_model.model.llm_proj.bias"] = like(model.vpgc.output_proj.bias)
    # the release registers its Q-Former a second time under the LLM: the same tensors again
    for key in [k for k in sd if k.startswith("Qformer.bert.")]:
        sd["llama_model.model." + key] = sd[key]
    return sd


def test_release_checkpoint_loads_through_the_key_map(tmp_path):
    model = tiny_model()
    sd = lavis_state_dict(model)
    path = tmp_path / "cheetah.pth"
    torch.save({"model": sd, "config": {"arch": "cheetah_vicuna"}, "epoch": 3}, path)  # LAVIS's layout
    report = load_lavis_weights(model, path)

    loaded = set(report["loaded"])
    every = {n for n, _ in model.named_parameters() if not n.startswith("llm.")}
    assert loaded == every  # every vision, VPG and VPG-C parameter came from the file
    assert any("word_embeddings" in k for k in report["ignored"])
    state = model.state_dict()
    torch.testing.assert_close(state["vpgc.guidance_proj.weight"], sd["llama_model.model.qformer_proj.weight"])
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
