"""The training recipe for VPG-C (paper section 2): `recipe.train` runs stage `align` or `vpgc`.

Modules: `config` (the `train:` section), `data` (the deterministic mixed stream), `state` (resumable step
checkpoints), `distributed` (torchrun: DDP / FSDP), `recipe` (the loop, read it top to bottom), `cli`.
"""
