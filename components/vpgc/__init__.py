"""The VPG-C model: frozen backbones, the Q-Former VPG, VPG-C, interleaved prompts, generation, checkpoints.

Imports only torch, transformers, safetensors, accelerate, numpy, PIL and yaml (plus `components.errors` and
`components.demon.schema`), so a GPU machine with just those runs `benchmarks/gpu_vpgc.py`.
Entry points: `config.load_config`, `model.VPGCModel.from_config`, `checkpoints.save_checkpoint/load_checkpoint`,
`checkpoints.load_lavis_weights`.
"""
