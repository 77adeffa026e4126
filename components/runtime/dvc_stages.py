"""DVC's own bookkeeping for stages whose commands the caller runs (`flows.pipeline`, through a fork server).

`dvc repro --single-item S` does, under DVC's repository lock: judge S stale (`Stage.changed`), remove its outputs,
restore them from the run cache if this exact run was cached, else save its dependencies' hashes; then, with the lock
released, run its command; then, locked again, hash and cache its outputs (and the run) and write its `dvc.lock`
entry. `DvcStages` takes the same steps through the same DVC calls, so `dvc.lock` is what `dvc repro` writes, and
leaves the command between them to the caller: several stages' commands can run at once while their bookkeeping
takes turns (a `Repo` is not thread-safe; DVC's lock keeps other DVC processes out while it works).

DVC's per-path read/write locks (`.dvc/tmp/rwlock`, keyed by process) are not taken: one process runs every stage
here, and the graph already keeps a stage from running beside the stages it reads from.
"""

from __future__ import annotations

import shlex
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from components.errors import UserError
from components.tracking.provenance import lock_stages

if TYPE_CHECKING:
    from dvc.stage import Stage

Begun = Literal["unchanged", "restored", "run"]


class DvcStages:
    """The stages of the DVC project at `root`, addressed as `dvc stage list` names them (`score@parity`)."""

    def __init__(self, root: Path) -> None:
        from dvc.repo import Repo

        self.repo = Repo(str(root))
        self._turn = threading.Lock()
        self._plan: dict[str, int] = {}  # stage name -> its place in `dvc repro`'s order (`upstream`)
        self._locked: set[str] = set()  # stages `dvc.lock` had an entry for then
        self._appended: list[str] = []  # the others, as their entries were written since

    def close(self) -> None:
        self.repo.close()

    @contextmanager
    def turn(self) -> Iterator[None]:
        """This thread's turn with DVC, under its repository lock."""
        from dvc.repo import lock_repo

        with self._turn, lock_repo(self.repo):
            yield

    def _by_address(self) -> dict[str, Stage]:
        """Every stage by address, as `dvc.yaml` and `params.yaml` say now (DVC rebuilds its index each turn)."""
        return {stage.addressing: stage for stage in self.repo.index.stages}

    def upstream(self) -> dict[str, list[str]]:
        """Each stage -> the stages whose outputs it reads, in the order `dvc repro` takes them (every stage after
        those). From here on, stages new to `dvc.lock` are written there in that order, whichever finishes first."""
        from dvc.repo.reproduce import plan_repro

        with self.turn():
            graph = self.repo.index.graph  # an edge from a stage to each stage it depends on
            ordered = plan_repro(graph, list(self.repo.index.stages))
            self._plan = {stage.name: i for i, stage in enumerate(ordered)}
            lockfiles = {Path(stage.dvcfile._lockfile.path) for stage in ordered}  # one per dvc.yaml
            self._locked = {name for lockfile in lockfiles for name in lock_stages(lockfile)}
            return {stage.addressing: [dep.addressing for dep in graph.successors(stage)] for stage in ordered}

    def command_lines(self, names: list[str] | None = None) -> list[str]:
        """The command lines of the stages `names` (default: every stage)."""
        from dvc.stage.run import _enforce_cmd_list

        with self.turn():
            stages = [stage for stage in self.repo.index.stages if names is None or stage.addressing in names]
            return [line for stage in stages for line in _enforce_cmd_list(stage.cmd)]

    def stale(self, names: list[str]) -> list[str]:
        """Those of `names` that `dvc repro` would run now (their upstream as it is on disk)."""
        with self.turn():
            stages = self._by_address()
            return [name for name in names if stages[name].changed()]

    def begin(self, name: str) -> tuple[Begun, Stage | None]:
        """Take the steps before a stage's command: ("unchanged", None) when it is up to date, ("restored", None)
        when the run cache had its outputs (recorded already), else ("run", stage) for `commands` then `finish`."""
        from dvc.stage.cache import RunCacheNotFoundError

        with self.turn():
            stage = self._by_address()[name]
            if not stage.changed():
                return "unchanged", None
            stage.remove_outs(ignore_remove=False, force=False)
            try:
                self.repo.stage_cache.restore(stage)
            except RunCacheNotFoundError:
                stage.save_deps()
                return "run", stage
            self._record(stage)
            return "restored", None

    def finish(self, stage: Stage, expected: dict[str, Any] | None = None) -> None:
        """After its commands succeeded: hash and cache the stage's outputs, cache the run, write `dvc.lock`.
        `expected`: the entry another workspace recorded for this run (`components.runtime.remote_stages`); a different
        one here is refused before anything is written."""
        with self.turn():
            self._record(stage, expected)

    @staticmethod
    def commands(stage: Stage, env: dict[str, str]) -> tuple[list[str], dict[str, str], str]:
        """The stage's command lines, and the environment and folder DVC runs them with."""
        from dvc.stage.run import _enforce_cmd_list, prepare_kwargs

        setting = prepare_kwargs(stage, run_env=env)  # adds DVC_ROOT and DVC_STAGE, as for any stage command
        return _enforce_cmd_list(stage.cmd), setting["env"], setting["cwd"]

    def _record(self, stage: Stage, expected: dict[str, Any] | None = None) -> None:
        from dvc.stage.serialize import to_single_stage_lockfile

        uncached = any(not out.use_cache for out in stage.outs if not (out.is_metric or out.is_plot))
        stage.save(allow_missing=False, run_cache=not uncached)
        if expected is not None and (here := to_single_stage_lockfile(stage)) != expected:
            differ = sorted({item["path"] for key in ("deps", "outs") for item in _differ(here, expected, key)})
            raise DifferentRun(
                f"stage {stage.addressing!r}: the worker's run differs from this workspace in "
                f"{', '.join(differ) or 'its command or parameters'}: commit (and push) what the stage reads, "
                "the workers check out the commit"
            )
        stage.commit(allow_missing=False)
        stage.dump(update_pipeline=False)
        if stage.name not in self._locked:  # DVC appended its entry
            self._appended.append(stage.name)
            if self._appended != sorted(self._appended, key=self._place):
                self._in_plan_order(stage.dvcfile._lockfile.path)

    def _place(self, name: str) -> int:
        return self._plan.get(name, len(self._plan))

    def _in_plan_order(self, lockfile: str) -> None:
        """DVC appends a stage new to `dvc.lock`; `dvc repro` appends them in its plan's order, stages running side
        by side here finish in any order: move this run's new entries into the plan's order, as `dvc repro` has them."""
        from dvc.utils.serialize import modify_yaml

        self._appended.sort(key=self._place)
        with modify_yaml(lockfile, fs=self.repo.fs) as data:
            for name in self._appended:
                data["stages"].move_to_end(name)


class DifferentRun(UserError):
    """A stage's `dvc.lock` entry from another workspace that this one would not write."""


def _differ(here: dict[str, Any], there: dict[str, Any], key: str) -> list[dict[str, Any]]:
    theirs = {item["path"]: item for item in there.get(key, [])}
    return [item for item in here.get(key, []) if theirs.get(item["path"]) != item]


def python_module(command: str) -> list[str] | None:
    """`python -m MODULE ARGS` (every project stage) -> ["-m", MODULE, *ARGS], what a fork server runs; else None."""
    argv = shlex.split(command)
    if len(argv) >= 3 and Path(argv[0]).name in ("python", "python3", Path(sys.executable).name) and argv[1] == "-m":
        return argv[1:]
    return None


def shell(command: str) -> list[str]:
    """Any other command line, run as DVC runs it: `$SHELL -c` (with its no-config flags), else `/bin/sh -c`."""
    from dvc.stage.run import _make_cmd, get_executable

    return _make_cmd(get_executable(), command)
