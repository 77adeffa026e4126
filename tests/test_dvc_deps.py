"""dvc.yaml lists every project module that can change a stage's outputs, so a change there makes the stage stale.

For every stage (foreach and matrix expanded by DVC itself), the stage's command names its flow (`python -m
flows.<name>`); the modules it imports are followed through every `import` statement, at module level and inside
functions alike (the stages import heavy libraries lazily), into `components/` and `flows/`. Each module reached
must sit under a path dependency of the stage, unless listed below with the reason it cannot change the outputs.
"""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path

import pytest
from dvc.repo import Repo

ROOT = Path(__file__).resolve().parents[1]
PROJECT = ("components", "flows")

# Modules that cannot change any stage's outputs; their own imports are not followed either.
NEVER_OUTPUTS = {
    "components/tracking": "MLflow runs, tags, provenance and the model registry; write_metrics' file is pinned by "
    "tests (test_train_tracking, test_intervals), a format change there would otherwise rerun the whole graph",
    "components/runtime/lifetime.py": "process lifetime (parent-death signal, exits)",
    "components/runtime/console.py": "what the console shows",
    "components/runtime/quiet.py": "the tools' telemetry switched off",
    "components/errors.py": "the exception types of user mistakes",
    "components/security.py": "credential checks and redaction of what is logged",
    "components/atomic.py": "how a file is written (temp file + rename), not what",
    "components/cache_root.py": "where copies made once are kept (the LLM's plain copy is named by its file's content)",
    "flows/__init__.py": "the interpreter check of a stage process",
    "flows/entry.py": "exit codes and the flush of Prefect's logs",
    "flows/tracking.py": "the stage's MLflow run and Prefect bookkeeping",
}
# Imports not followed: `load_params` validates params.yaml and every experiment it names (components.params), and
# returns the file as read, so the validators it reaches can refuse a run but never change one.
VALIDATION_ONLY = {"flows/params.py"}
# A section's schema builds the settings of the stages that read that section (and those list the package); for a
# stage that does not read it (no such DVC param), it is only validated on the way (experiment.py validates every
# section of an experiment, components/params.py every section of params.yaml).
SCHEMAS = {
    "components/vpgc/config.py": {"model"},
    "components/training/config.py": {"train"},
    "components/synth/config.py": {"synth"},
    "components/evaluation/settings.py": {"eval", "baseline", "score", "evaluate"},
    "components/demon/params.py": {"data", "normalize"},
}
# Modules a stage imports for names it does not run: (stages, modules, why).
UNUSED_BY = [
    (
        {"merge", "report"},
        {
            "components/vpgc",
            "components/evaluation/adapters",
            "components/experiment.py",
            "components/params.py",
            "components/config_schema.py",
        },
        "they share flows/evaluate.py with the evaluate stage but read bundles: they load no model, no experiment",
    ),
    (
        {"baseline"},
        {
            "components/evaluation/runner.py",
            "components/evaluation/scorers.py",
            "components/evaluation/report.py",
            "components/evaluation/normalize.py",
        },
        "it shares flows/score.py with the score stage but only writes the floors' predictions; score scores them",
    ),
    (
        {"evaluate", "merge", "report"},
        {"components/demon/mini"},
        "bundle_report reads only mini's STAMP (a file name) to label where a bundle's data came from",
    ),
    (
        {"baseline", "score", "align", "train", "evaluate", "merge", "report", "synth", "captions"},
        {"components/demon/acquire.py", "components/demon/archives.py", "components/demon/sources.py"},
        "normalize.py imports acquire's manifest reader for the normalize stage; later stages call only load_samples",
    ),
]


def _inert(path: str) -> bool:
    """A package `__init__.py` that holds nothing but its docstring runs no code."""
    body = ast.parse((ROOT / path).read_text(encoding="utf-8")).body
    return path.endswith("__init__.py") and all(
        isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) for node in body
    )


def _under(path: str, folders: object) -> bool:
    return any(path == f or path.startswith(f"{f.rstrip('/')}/") for f in folders)


def module_file(name: str) -> str | None:
    """`components.demon.registry` -> `components/demon/registry.py` (or a package's `__init__.py`)."""
    base = ROOT.joinpath(*name.split("."))
    for candidate in (base / "__init__.py", base.with_suffix(".py")):
        if candidate.is_file():
            return candidate.relative_to(ROOT).as_posix()
    return None


@cache
def imported_names(path: str) -> tuple[str, ...]:
    """Every absolute import of a project module in the file, wherever the statement is."""
    names = []
    for node in ast.walk(ast.parse((ROOT / path).read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            assert node.level == 0, f"{path}: relative import; the walk resolves absolute ones only"
            names += [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
    return tuple(n for n in names if n.split(".")[0] in PROJECT)


def reached(module: str) -> set[str]:
    """The files of `module` and every project module it imports, transitively; importing `a.b.c` runs the
    `__init__.py` of `a` and `a.b` too."""
    found: set[str] = set()
    todo = [module]
    while todo:
        parts = todo.pop().split(".")
        for k in range(1, len(parts) + 1):
            path = module_file(".".join(parts[:k]))
            if path is None or path in found or _under(path, NEVER_OUTPUTS) or _inert(path):
                continue
            found.add(path)
            if path not in VALIDATION_ONLY:
                todo += imported_names(path)
    return found


def _stages() -> list:
    with Repo(str(ROOT)) as repo:
        return list(repo.index.stages)


STAGES = {stage.addressing: stage for stage in _stages()}


@pytest.mark.parametrize("address", sorted(STAGES))
def test_every_module_that_can_change_a_stage_is_a_dependency(address):
    stage = STAGES[address]
    command = stage.cmd.split()
    assert command[:3] == ["python", "-m", command[2]] and command[2].startswith("flows."), stage.cmd
    name = address.split("@")[0]
    paths = [Path(dep.fs_path).relative_to(ROOT).as_posix() for dep in stage.deps if not hasattr(dep, "params")]
    sections = {key.split(".")[0] for dep in stage.deps if hasattr(dep, "params") for key in dep.params}
    exempt = [folder for folder, used in SCHEMAS.items() if not used & sections]
    exempt += [folder for stages, folders, _ in UNUSED_BY if name in stages for folder in folders]
    missing = sorted(m for m in reached(command[2]) if not _under(m, paths) and not _under(m, exempt))
    assert not missing, f"dvc.yaml stage {name!r} runs {command[2]} but does not depend on {missing}"


def test_the_walk_finds_what_a_stage_imports():
    """The walk is not vacuous: the training flow reaches the merge rule of experiments and the recipe, and stops
    at what cannot change outputs."""
    found = reached("flows.train")
    assert {"flows/train.py", "components/experiment.py", "components/training/recipe.py"} <= found
    assert "components/vpgc/vpgc.py" in found and not _under("components/tracking/runs.py", found)
    assert len(STAGES) >= 10 and {"align", "train@synthetic", "report"} <= set(STAGES)


def test_each_evaluation_depends_on_the_checkpoint_it_evaluates():
    """`evaluate@<model>-...` depends on `data/checkpoints/<model>`: a model key must name its checkpoint's folder, or
    the evaluation neither waits for its training nor becomes stale with it (the upper bound's first name did)."""
    import yaml

    models = yaml.safe_load((ROOT / "params.yaml").read_text())["evaluate"]["models"]
    deps = {
        stage.addressing: {Path(d.fs_path).relative_to(ROOT).as_posix() for d in stage.deps if not hasattr(d, "params")}
        for stage in _stages()
        if stage.addressing.startswith("evaluate@")
    }
    for key, spec in models.items():
        path = Path(spec["model"] if isinstance(spec, dict) else spec)
        folder = (path.parent if path.name == "final" else path).as_posix()
        cells = [name for name in deps if name.startswith(f"evaluate@{key}-")]
        assert cells and all(folder in deps[name] for name in cells), (key, folder)
