"""A DVC stage run on another machine, its data moving through the DVC remote (`flows.pool` runs it on a worker).

The worker's side, in its own clone of the repository: a git worktree at the pipeline's commit, with the pipeline's
`dvc.lock` and `params.yaml` written over it (`checkout`), sharing the clone's DVC cache; the outputs the stage reads
pulled from the remote (`pull_inputs`); the stage judged, run and recorded there as `DvcStages` does it; its outputs
pushed (`push_outputs`). Only a finished stage pushes, so a worker killed mid-stage leaves nothing in the remote. What
it hands back (`Handback`) is the stage's `dvc.lock` entry as DVC wrote it there, and the bytes of the outputs DVC
does not cache (metrics files, which live in git).

The pipeline's side (`receive`): the outputs fetched from the remote by those hashes and checked out, then recorded
as a stage run here would be (`DvcStages.finish`: hashed, cached, `dvc.lock` written), and refused if the entry this
workspace computes differs from the worker's (a dependency the commit does not hold). So the pipeline stays the one
writer of its `dvc.lock`, through DVC's own calls, and its workspace holds every output, as after `dvc repro`.

Remote errors (no credentials, refused ones, an unreachable endpoint) are `UserError`s naming the remote and the
setting: the same worker would fail the same way on a retry. Credentials come from the environment DVC reads.
"""

from __future__ import annotations

import base64
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, NotRequired, TypedDict

from components.errors import UserError
from components.runtime.dvc_stages import DvcStages
from components.security import redact

if TYPE_CHECKING:
    from dvc.repo import Repo
    from dvc.stage import Stage

WORKTREES = ".demonlab-stages"  # beside the clone: DVC ignores anything under a `.dvc` folder, git anything outside
# what each kind of remote reads its credentials from, for the one line a refusal prints
CREDENTIALS = {
    "s3": "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE)",
    "gs": "GOOGLE_APPLICATION_CREDENTIALS",
    "azure": "AZURE_STORAGE_CONNECTION_STRING (or AZURE_STORAGE_ACCOUNT and its key)",
}
_NO_CREDENTIALS = ("Unable to locate credentials", "NoCredentialsError", "DefaultCredentialsError", "no credentials")
_REFUSED = ("InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "403", "401", "Forbidden")


class Handback(TypedDict):
    entry: dict[str, Any]  # the stage's dvc.lock entry, as DVC serialises it
    files: dict[str, str]  # outputs DVC does not cache (metrics): path -> base64 of the bytes
    seconds: NotRequired[dict[str, float]]  # what each step on the worker took (checkout and pull, run, push)


def git(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=False)


@contextmanager
def checkout(clone: Path, commit: str, files: dict[str, str | None]) -> Iterator[Path]:
    """A worktree of `clone` at `commit` (fetched from its origin when the clone lacks it) with `files` written over
    it (None: removed), using the clone's DVC cache and local DVC config; removed when the block ends. One per stage
    run, so the stages a worker runs at once do not share a folder."""
    if git(["cat-file", "-e", f"{commit}^{{commit}}"], clone).returncode != 0:
        fetched = git(["fetch", "--quiet", "origin", commit], clone)
        if fetched.returncode != 0:
            origin = git(["remote", "get-url", "origin"], clone).stdout.strip() or "(no origin)"
            said = (fetched.stderr.strip().splitlines() or [""])[-1]
            raise UserError(
                f"worker clone {clone}: commit {commit[:12]} is neither in it nor on its origin {redact(origin)} "
                f"({redact(said)}): push the commit the pipeline runs"
            )
    path = clone.parent / WORKTREES / f"{clone.name}-{uuid.uuid4().hex[:12]}"
    added = git(["worktree", "add", "--quiet", "--detach", str(path), commit], clone)
    if added.returncode != 0:
        raise RuntimeError(f"git worktree add {path} {commit}: {added.stderr.strip()}")
    try:
        if (clone / ".dvc/config.local").is_file():  # the remote's local settings (endpoint, profile) of this machine
            shutil.copy(clone / ".dvc/config.local", path / ".dvc/config.local")
        for name, text in files.items():
            if text is None:
                (path / name).unlink(missing_ok=True)
            else:
                (path / name).write_text(text, encoding="utf-8")
        from dvc.repo import Repo

        with Repo(str(path)) as repo, repo.config.edit("local") as config:
            config["cache"]["dir"] = str((clone / ".dvc/cache").resolve())
        yield path
    finally:
        git(["worktree", "remove", "--force", str(path)], clone)
        git(["worktree", "prune"], clone)


def remote_error(repo: Repo, error: BaseException) -> UserError:
    """A remote failure as one line: which remote, what went wrong, which setting fixes it."""
    name, url = remote_name(repo)
    text = f"{type(error).__name__}: {error}"
    scheme = url.split("://", 1)[0] if "://" in url else "local"
    setting = CREDENTIALS.get(scheme, f"the credentials of remote {name!r} (`dvc remote modify --local {name} ...`)")
    where = f"DVC remote {name!r} ({redact(url)})"
    if any(marker in text for marker in _NO_CREDENTIALS):
        return UserError(f"{where}: no credentials on this worker: set {setting} in the worker's environment")
    if any(marker in text for marker in _REFUSED):
        return UserError(f"{where} refused the credentials: check {setting} in the worker's environment")
    return UserError(
        f"{where} cannot be reached from this worker ({redact(' '.join(text.split()))[:300]}): check its url and "
        f"endpointurl (`dvc remote modify --local {name} endpointurl ...`) and the network"
    )


def remote_name(repo: Repo) -> tuple[str, str]:
    """The default remote's name and url (`core.remote`)."""
    name = repo.config["core"].get("remote")
    if not name:
        raise UserError("no default DVC remote: stages on a pool move their data through one (`dvc remote add -d`)")
    return name, str(repo.config["remote"][name].get("url", ""))


def check_remote(repo: Repo) -> None:
    """Reach the default remote once, so a missing credential is one clear line before any work."""
    odb = repo.cloud.get_remote_odb(None, "pull")
    try:
        odb.fs.exists(odb.path)
    except Exception as error:  # the filesystem libraries raise their own types; `remote_error` reads them
        raise remote_error(repo, error) from None


def pull_inputs(stages: DvcStages, name: str) -> list[str]:
    """Pull from the remote exactly the DVC-tracked data `name` reads (the outputs of other stages, `.dvc` files),
    as `dvc.lock` has them; what git holds came with the commit. The paths pulled."""
    with stages.turn():
        stage = stages._by_address()[name]
        tracked = [out for out in stages.repo.index.outs if out.stage.addressing != name]
        paths = sorted(
            {
                str(out)
                for dep in stage.deps
                for out in tracked
                if out.fs_path == dep.fs_path
                or out.fs.isin(dep.fs_path, out.fs_path)
                or out.fs.isin(out.fs_path, dep.fs_path)
            }
        )
    if paths:
        _transfer(stages, "pull", paths)
    return paths


def push_outputs(stages: DvcStages, name: str) -> Handback:
    """Push the recorded stage's cached outputs to the remote; its `dvc.lock` entry and its uncached outputs."""
    from dvc.stage.serialize import to_single_stage_lockfile

    with stages.turn():
        stage = stages._by_address()[name]  # as dvc.lock records it now
        entry = to_single_stage_lockfile(stage)
        root = Path(stages.repo.root_dir)
        files = {
            path.relative_to(root).as_posix(): base64.b64encode(path.read_bytes()).decode()
            for out in stage.outs
            if not out.use_cache
            for path in _files(Path(out.fs_path))
        }
        cached = [str(out) for out in stage.outs if out.use_cache]
    if cached:
        _transfer(stages, "push", cached)
    return {"entry": entry, "files": files}


def _files(path: Path) -> list[Path]:
    return [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())


def _transfer(stages: DvcStages, direction: str, paths: list[str]) -> None:
    try:
        with stages.turn():
            getattr(stages.repo, direction)(targets=paths)
    except Exception as error:  # DVC wraps the filesystem's error; its text names the cause
        raise remote_error(stages.repo, error.__cause__ or error) from None


def receive(stages: DvcStages, stage: Stage, handback: Handback) -> None:
    """Record `stage`, begun here (`DvcStages.begin`) and run on a worker: fetch its outputs from the remote by the
    worker's hashes, check them out, write its uncached outputs, then record it as if it had run here."""
    from dvc.stage.loader import StageLoader

    root = Path(stages.repo.root_dir)
    with stages.turn():
        StageLoader.fill_from_lock(stage, {"outs": handback["entry"].get("outs", [])})
        wanted = {hash_info for out in stage.outs for used in out.get_used_objs().values() for hash_info in used}
        try:
            failed = stages.repo.cloud.pull(wanted).failed
        except Exception as error:
            raise remote_error(stages.repo, error) from None
        if failed:
            name, url = remote_name(stages.repo)
            raise RuntimeError(f"DVC remote {name!r} ({redact(url)}) lacks {len(failed)} object(s) of stage {stage}")
        for relative, data in handback["files"].items():
            path = root / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(base64.b64decode(data))
        stage.checkout()
    stages.finish(stage, expected=handback["entry"])
