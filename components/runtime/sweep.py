"""`demonlab sweep`: the pipeline once per combination of parameter values, each kept as a DVC experiment, all under
one MLflow parent run, compared in one report.

`-S train.variants.synthetic.lr=1e-3,3e-4 -S train.max_steps=20,40` makes the 4 combinations. Each runs as
`demonlab run --set ...` does (with `--pool`, its stages fan out over the pool's workers), its pipeline run a child of
the sweep's MLflow run (`SWEEP_RUN_ENV`), and is then saved as the DVC experiment `<sweep>-<i>` (`dvc exp save`:
params, `dvc.lock`, metrics; `dvc exp show`, `dvc exp apply` find it). The variants run one after another in this
workspace (one pipeline per workspace); their stages are what runs side by side. Afterwards `params.yaml`,
`dvc.lock`, the outputs and the metrics files git keeps are as before the sweep. The report (`sweeps/<sweep>.md`,
also the sweep run's MLflow artifact) has a row per variant: its values and the metrics that differ between variants.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from components.errors import UserError

SWEEP_RUN_ENV = "DEMONLAB_SWEEP_RUN_ID"  # the sweep's MLflow run: each variant's pipeline run is its child
MAX_COLUMNS = 12  # metrics shown in the report: those that differ most between variants first


def combinations(specs: list[str]) -> list[dict[str, Any]]:
    """`["a=1,2", "b=x"]` -> `[{"a": 1, "b": "x"}, {"a": 2, "b": "x"}]` (values read as YAML, as `--set` reads them)."""
    axes = []
    for spec in specs:
        key, sep, values = spec.partition("=")
        if not sep or not key or not values:
            raise UserError(f"-S {spec!r}: expected KEY=VALUE[,VALUE...], e.g. -S train.max_steps=20,40")
        axes.append([(key, _value(value)) for value in values.split(",")])
    return [dict(choice) for choice in itertools.product(*axes)]


def _value(text: str) -> Any:
    """A value as YAML reads it, but a number where it looks like one (YAML 1.1 reads `3e-4` as a string)."""
    value = yaml.safe_load(text)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
    return value


def run_sweep(args: argparse.Namespace) -> int:
    import mlflow

    from components.runtime.pipeline_cli import _require_workspace, _validate_params, run_pipeline
    from components.tracking.runs import configure, git_commit, start_run

    _require_workspace()
    variants = combinations(args.S)
    for variant in variants:  # every variant's configuration checked before the first one starts
        _validate_params([f"{key}={value}" for key, value in variant.items()])
    name = args.name or time.strftime("sweep-%Y%m%d-%H%M%S", time.gmtime())
    before = {path: path.read_text() if path.is_file() else None for path in (Path("params.yaml"), Path("dvc.lock"))}
    modified = _modified()
    configure()
    tags = {"demonlab.stage": "sweep", "git.commit": git_commit() or ""}
    rows = []
    try:
        with start_run(run_name=f"sweep {name}", tags=tags) as parent:
            mlflow.log_params({key: ",".join(map(str, {v[key] for v in variants})) for key in variants[0]})
            os.environ[SWEEP_RUN_ENV] = parent.info.run_id  # `demonlab run`'s flow inherits it
            for index, variant in enumerate(variants, 1):
                experiment = f"{name}-{index}"
                print(f"variant {index}/{len(variants)} ({experiment}): {_values(variant)}", flush=True)
                Path("params.yaml").write_text(before[Path("params.yaml")] or "")  # each variant from the base
                assignments = [f"{key}={json.dumps(value)}" for key, value in variant.items()]
                run_args = argparse.Namespace(
                    stages=None, set=assignments, parallel=args.parallel, pool=args.pool, verbose=args.verbose
                )
                run_pipeline.__wrapped__(run_args)  # a failure is the variant's one line, the sweep stops there
                _dvc(["exp", "save", "--force", "-n", experiment])
                rows.append({"experiment": experiment, **variant, **_metrics()})
            report = write_report(Path("sweeps") / f"{name}.md", name, list(variants[0]), rows)
            mlflow.log_artifact(str(report))
    finally:
        os.environ.pop(SWEEP_RUN_ENV, None)
        for path, text in before.items():  # the workspace as it was: parameters, lock, then the outputs it records
            if text is None:
                path.unlink(missing_ok=True)
            else:
                path.write_text(text)
        _dvc(["checkout", "--quiet"], check=False)
        # outputs git keeps (metrics files) the variants rewrote: back to the commit's
        if written := sorted(_modified() - modified - {str(path) for path in before}):
            subprocess.run(["git", "checkout", "--", *written], capture_output=True, check=False)
    print(report.read_text())
    print(f"{len(rows)} DVC experiments: dvc exp show; MLflow parent run {parent.info.run_id} (sweep {name})")
    return 0


def _modified() -> set[str]:
    """Tracked files that differ from the commit."""
    done = subprocess.run(["git", "diff", "--name-only", "HEAD"], capture_output=True, text=True, check=False)
    return set(done.stdout.split())


def _values(variant: dict[str, Any]) -> str:
    return " ".join(f"{key}={value}" for key, value in variant.items())


def _dvc(args: list[str], check: bool = True) -> None:
    done = subprocess.run([sys.executable, "-m", "dvc", *args], capture_output=True, text=True)
    if check and done.returncode != 0:
        raise UserError(f"`dvc {' '.join(args)}` failed: {(done.stderr or done.stdout).strip()[-500:]}")


def _metrics() -> dict[str, float]:
    """The workspace's DVC metrics, flattened to `file:key.path` -> number."""
    from dvc.repo import Repo

    from components.tracking.runs import flatten

    with Repo(".") as repo:
        shown = repo.metrics.show()
    files = next(iter(shown.values()), {}).get("data", {})
    return {
        f"{path}:{key}": value
        for path, found in files.items()
        for key, value in flatten(found.get("data", {})).items()
        if isinstance(value, int | float) and not isinstance(value, bool)
    }


def write_report(path: Path, name: str, swept: list[str], rows: list[dict[str, Any]]) -> Path:
    """A markdown table: each variant's values and the metrics that differ most between variants."""
    metrics = sorted({key for row in rows for key in row} - {"experiment", *swept})

    def spread(key: str) -> float:
        values = [row[key] for row in rows if key in row]
        return max(values) - min(values) if values else 0.0

    shown = sorted(metrics, key=spread, reverse=True)[:MAX_COLUMNS]
    columns = ["experiment", *swept, *shown]
    lines = [
        f"# Sweep {name}",
        "",
        f"{len(rows)} variants; metrics that differ most between them ({len(shown)} of {len(metrics)}).",
        "",
        "| " + " | ".join(columns) + " |",
        "|" + "---|" * len(columns),
    ]
    lines += ["| " + " | ".join(_cell(row.get(column, "")) for column in columns) + " |" for row in rows]
    path.parent.mkdir(exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


def _cell(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
