"""`params.yaml`, the pipeline's parameters, validated whole before any stage starts: each section against the
schema of the package that owns it (`data`/`normalize`: demon, `baseline`/`score`/`evaluate`: evaluation, `synth`,
`train`), and every experiment the stages will use, as each stage will load it (`experiment_uses`).

A top-level key this schema does not know is a parameter of a stage of your own (`dvc.yaml` may declare any),
unless it is a near-miss of a known section's name: `evalute:` is an error, `toy:` is not.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping, MutableMapping
from pathlib import Path
from typing import Any

from components.config_schema import ConfigError, build, raise_problems, show, suggest
from components.errors import UserError
from components.experiment import read_experiment, validate_experiment

EXPERIMENTS = Path("experiments")
# The captions stage is the synth stage writing no pairs: the alignment stage's data.
CAPTIONS_OVERRIDES: dict[str, Any] = {"synth": {"edits_per_image": 0}}


def params_sections() -> dict[str, type]:
    """The schema of each known section of params.yaml, from the package that owns it."""
    from components.demon.params import DataParams, NormalizeParams
    from components.evaluation.settings import BaselineParams, EvaluateParams, ScoreParams
    from components.synth.config import SynthParams
    from components.training.config import TrainParams

    return {"data": DataParams, "normalize": NormalizeParams, "baseline": BaselineParams, "score": ScoreParams,
            "synth": SynthParams, "train": TrainParams, "evaluate": EvaluateParams}  # fmt: skip


def experiment_path(name: str) -> Path:
    return EXPERIMENTS / f"{name}.yaml"


def variant_overrides(variant: Mapping[str, Any] | None) -> dict[str, Any]:
    """A `train.variants.<name>` entry as overrides of the experiment: it changes `train.vpgc`."""
    return {"train": {"vpgc": dict(variant or {})}}


def eval_overrides(evaluate: Mapping[str, Any]) -> dict[str, Any]:
    """`evaluate.limit` and `evaluate.batch_size` of params.yaml as overrides of the experiment's `eval:`."""
    return {"eval": {key: evaluate[key] for key in ("limit", "batch_size") if evaluate.get(key) is not None}}


def experiment_uses(params: Mapping[str, Any]) -> list[tuple[str, Path, dict[str, Any]]]:
    """(what uses it, experiment file, overrides) for every way a stage loads an experiment."""
    uses = []
    if isinstance(params.get("experiment"), str) and experiment_path(params["experiment"]).is_file():
        path = experiment_path(params["experiment"])
        uses.append(("experiment", path, {}))
        if isinstance(params.get("synth"), Mapping):
            uses.append(("the captions stage", path, CAPTIONS_OVERRIDES))
        train = params.get("train")
        variants = train.get("variants") if isinstance(train, Mapping) else None
        for name, variant in (variants or {}).items() if isinstance(variants, Mapping) else ():
            if variant is None or isinstance(variant, Mapping):
                uses.append((f"train.variants.{name}", path, variant_overrides(variant)))
        evaluate = params.get("evaluate")
        if isinstance(evaluate, Mapping):
            uses.append(("evaluate.limit/batch_size", path, eval_overrides(evaluate)))
    evaluate = params.get("evaluate")
    models = evaluate.get("models") if isinstance(evaluate, Mapping) else None
    for name, entry in (models or {}).items() if isinstance(models, Mapping) else ():
        spec = entry.get("model") if isinstance(entry, Mapping) else entry
        if isinstance(spec, str) and spec.endswith((".yaml", ".yml")):
            uses.append((f"evaluate.models.{name}", Path(spec), {}))
    return uses


def params_problems(params: Any) -> list[str]:
    """Every problem of a `params.yaml` document and of the experiments its stages use, one line each."""
    if not isinstance(params, Mapping):
        return [f"expected a mapping of parameters, got {show(params)}"]
    sections = params_sections()
    problems = []
    for key, value in params.items():
        if key == "experiment":
            problems += _experiment_problems(value)
        elif key in sections:
            try:
                build(sections[key], value, key)
            except ConfigError as error:
                problems += error.problems
        elif difflib.get_close_matches(str(key), list(sections), n=1, cutoff=0.8):
            problems.append(f"{key}: unknown section{suggest(key, sections)}, got {show(value)}")
    train = params.get("train")
    if isinstance(train, Mapping) and train.get("registered_variant") is not None:
        variants = train.get("variants") or {}
        chosen = train["registered_variant"]
        if isinstance(variants, Mapping) and chosen not in variants:
            problems.append(f"train.registered_variant: not one of train.variants ({', '.join(map(str, variants))})"
                            f"{suggest(chosen, variants)}, got {show(chosen)}")  # fmt: skip
    reported: set[tuple[Path, str]] = set()
    for use, path, overrides in experiment_uses(params):
        try:
            found = validate_experiment(read_experiment(path, overrides))[1]
        except UserError as error:
            found = [str(error)]
        for problem in found:  # a problem of the file itself is listed once, under its first use
            if (path, problem) not in reported:
                reported.add((path, problem))
                problems.append(f"{path} ({use}): {problem}")
    return problems


def _experiment_problems(name: Any) -> list[str]:
    if not isinstance(name, str):
        return [f"experiment: expected the name of a file experiments/<name>.yaml, got {show(name)}"]
    path = experiment_path(name)
    if not path.is_file():
        known = sorted(p.stem for p in EXPERIMENTS.glob("*.yaml"))
        if not known:  # run outside a checkout: the stages read experiments/ relative to where they run
            return [f"experiment: no {path} (no {EXPERIMENTS}/ folder here: run from the repository root)"]
        return [f"experiment: no {path}{suggest(name, known)}; known: {', '.join(known)}, got {show(name)}"]
    return []


def validate_params(params: Any, source: str = "params.yaml") -> None:
    """`params_problems` as one `ConfigError` headed by `source`."""
    raise_problems(params_problems(params), source)


def apply_assignments(document: MutableMapping[str, Any], overrides: Mapping[str, Any], source: str) -> None:
    """Apply `{"train.max_steps": 20, ...}` in place, as `dvc exp run -S` does; only existing keys can be set, so a
    typo is an error instead of a silently ignored parameter."""
    for dotted, value in overrides.items():
        *parents, leaf = dotted.split(".")
        node: Any = document
        for key in parents:
            node = node.get(key) if isinstance(node, Mapping) else None
        if not isinstance(node, MutableMapping) or leaf not in node:
            raise UserError(f"{source}: no parameter `{dotted}`; `dvc params diff` or the file lists them")
        node[leaf] = value
