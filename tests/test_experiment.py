"""The experiment merge rule: sections merge, value mappings and switched component specs are replaced."""

from __future__ import annotations

from components.experiment import deep_merge


def test_sections_merge_key_by_key():
    base = {"train": {"vpgc": {"lr": 1e-3, "steps": 16}}, "eval": {"limit": None}}
    assert deep_merge(base, {"train": {"vpgc": {"lr": 1e-4}}}) == {
        "train": {"vpgc": {"lr": 1e-4, "steps": 16}}, "eval": {"limit": None}}  # fmt: skip


def test_a_mix_or_edit_table_is_replaced_whole():
    base = {"train": {"vpgc": {"mix": {"SynthDifference": 4, "SynthCaption": 4}, "lr": 1e-3}},
            "synth": {"edit_types": {"modify": 1, "swap": 1}}}  # fmt: skip
    merged = deep_merge(base, {"train": {"vpgc": {"mix": {"SynthCaption": 8}}}, "synth": {"edit_types": {"add": 2}}})
    assert merged["train"]["vpgc"] == {"mix": {"SynthCaption": 8}, "lr": 1e-3}
    assert merged["synth"]["edit_types"] == {"add": 2}


def test_a_component_of_another_kind_is_replaced_a_tweak_of_the_same_kind_merges():
    base = {"source": {"kind": "procedural", "objects": [2, 5], "size": 160}}
    assert deep_merge(base, {"source": {"kind": "folder", "path": "photos"}}) == {
        "source": {"kind": "folder", "path": "photos"}}  # fmt: skip
    assert deep_merge(base, {"source": {"kind": "procedural", "size": 96}})["source"] == {
        "kind": "procedural", "objects": [2, 5], "size": 96}  # fmt: skip
    assert deep_merge(base, {"source": {"size": 96}})["source"]["objects"] == [2, 5]
