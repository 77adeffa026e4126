"""The machinery that runs the library (`demon`, `synth`, `vpgc`, `training`, `evaluation`, `tracking`): the pipeline's
command line and console, DVC stages in a fork server or on a work pool's workers, sweeps, the servers it starts,
quiet third-party output, and how its processes stop."""
