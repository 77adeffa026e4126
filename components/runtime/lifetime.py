"""No process that `demonlab` starts outlives it: the servers, the pipeline flow, DVC, the stages.

A command ends early in one of two ways:

- A signal it can catch (SIGTERM from `kill`, `timeout`, a CI runner or a job scheduler; SIGINT from Ctrl-C; SIGHUP
  from a closed terminal). `@stoppable` turns it into `Stopped`, raised in the main thread, so every `child` block
  being left stops its process's tree (`stop`: SIGINT to each process group, the Ctrl-C that DVC, Prefect and
  MLflow each handle by recording the run as stopped, then SIGKILL after a grace period), servers stop last, and
  the command exits 128 + the signal's number.
- One it cannot (SIGKILL, a crash). Every child is started `tied` to its parent: on Linux the kernel sends it SIGKILL
  when the parent dies (prctl PR_SET_PDEATHSIG), elsewhere a watchdog thread polls the parent's pid (only where the
  child is our own Python, `die_with_parent`). A process killed this way records nothing; the next run reconciles
  what it left (`components.tracking.reconcile`).

A child's own children are not the kernel's concern: a stage process started by DVC arms itself
(`die_with_parent`), so a chain such as demonlab -> pipeline flow -> fork server -> stage unwinds link by link. One
link is not ours: plain `dvc repro` starts a stage through `$SHELL -c`, and a shell that does not `exec` its command
(dash, CI's `/bin/sh`) neither arms itself nor ends while its command runs; so a process whose parent is a shell also
watches the shell's parent.
"""

from __future__ import annotations

import ctypes
import functools
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from typing import Any

import psutil

GRACE = 10.0  # seconds a stopped tree gets to record itself as stopped; `docker stop` allows 10 in all
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
SHELLS = {"sh", "dash", "bash", "zsh", "fish", "ksh"}
_PR_SET_PDEATHSIG = 1
_libc = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None


class Stopped(BaseException):
    """A stop signal arrived. Like KeyboardInterrupt, no `except Exception` swallows it."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        super().__init__(signal.Signals(signum).name)

    @property
    def exit_status(self) -> int:
        return 128 + self.signum


def stoppable(handler: Callable[..., int]) -> Callable[..., int]:
    """Decorate a command handler: a stop signal raises `Stopped` in it, and the command exits 128 + signal.

    Only the first signal raises; later ones are ignored so they cannot cut the clean-up short (`stop` bounds it).
    A signal the command was started ignoring stays ignored (`nohup`, background jobs of a script)."""

    @functools.wraps(handler)
    def wrapped(*args: Any, **kwargs: Any) -> int:
        def raise_stopped(signum: int, frame: object) -> None:
            for sig in installed:
                signal.signal(sig, signal.SIG_IGN)
            raise Stopped(signum)

        installed = [sig for sig in STOP_SIGNALS if signal.getsignal(sig) is not signal.SIG_IGN]
        previous = {sig: signal.signal(sig, raise_stopped) for sig in installed}
        try:
            return handler(*args, **kwargs)
        except Stopped as stop:
            print(f"demonlab: stopped by {stop}; everything it started is stopped", file=sys.stderr)
            return stop.exit_status
        finally:
            for sig, action in previous.items():
                signal.signal(sig, action)

    return wrapped


def die_with_parent(parent: int | None = None) -> None:
    """End this process (SIGKILL) when `parent`, by default its parent now, ends: on Linux through the kernel,
    elsewhere by a watchdog thread. When `parent` is a shell, also when the shell's parent ends."""
    parent = os.getppid() if parent is None else parent
    if _libc is not None:
        _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    else:
        _watch(lambda: os.getppid() == parent)
    if os.getppid() != parent:  # the parent died before the signal was armed
        os.kill(os.getpid(), signal.SIGKILL)
    with suppress(psutil.Error):  # the shell gone already: the kernel's signal has fired
        shell = psutil.Process(parent)
        if shell.name() in SHELLS and shell.ppid() > 1:  # 1: an orphan already, nothing to watch
            _watch(psutil.Process(shell.ppid()).is_running)  # False once it ended, or its pid was reused


def _watch(alive: Callable[[], bool]) -> None:
    """SIGKILL this process, from a daemon thread, once `alive()` turns False (checked twice a second)."""

    def watch() -> None:
        while alive():
            time.sleep(0.5)
        os.kill(os.getpid(), signal.SIGKILL)

    threading.Thread(target=watch, daemon=True, name="die-with-owner").start()


def dies_with_us() -> Callable[[], None]:
    """A Popen `preexec_fn` for a child that ends when this process does (Linux; elsewhere see `die_with_parent`).

    Start the child from the thread that waits for it: the kernel's parent is the thread, not the process. Its SIGINT
    is reset to the default, so `stop` reaches it even when this command was started ignoring Ctrl-C."""
    parent = os.getpid()

    def arm() -> None:
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        if _libc is not None:
            die_with_parent(parent)

    return arm


def tied(session: bool = False) -> dict[str, Any]:
    """Popen arguments for a child that `dies_with_us`, in its own process group (`session`: its own session, so
    not even the terminal's hang-up reaches it but through us)."""
    separate = {"start_new_session": True} if session else {"process_group": 0}
    return {**separate, "preexec_fn": dies_with_us()}


def stop(process: subprocess.Popen, grace: float = GRACE) -> None:
    """Stop `process` (a process group leader, as `tied` and `start_new_session` make it) and everything it started:
    SIGINT to every process group of its tree (its own, and those its descendants made, e.g. a Prefect worker's flow
    runs), SIGKILL to what is left after `grace` seconds."""
    groups = {process.pid}
    if process.poll() is None:  # once reaped, its pid may be another process's: only its group id stays reserved
        with suppress(psutil.NoSuchProcess):
            for descendant in psutil.Process(process.pid).children(recursive=True):
                with suppress(ProcessLookupError):
                    groups.add(os.getpgid(descendant.pid))
    groups.discard(os.getpgrp())  # never this command's own group
    for sig, wait in ((signal.SIGINT, grace), (signal.SIGKILL, 5.0)):
        groups = {group for group in groups if _signal_group(group, sig)}
        deadline = time.monotonic() + wait
        while groups and time.monotonic() < deadline:
            process.poll()  # reaps our child, whose zombie would keep its group alive
            time.sleep(0.1)
            groups = {group for group in groups if _signal_group(group, 0)}
        if not groups:
            break
    process.poll()


def _signal_group(group: int, sig: int) -> bool:
    """Send `sig` to a process group; False once the group has no process left."""
    try:
        os.killpg(group, sig)
    except ProcessLookupError:
        return False
    return True


@contextmanager
def child(command: list[str], grace: float = GRACE, session: bool = False, **popen: Any) -> Iterator[subprocess.Popen]:
    """`command` started `tied`; whatever of its tree still runs when the block ends (a stop signal, an error) is
    stopped (`stop`)."""
    process = subprocess.Popen(command, **tied(session), **popen)
    try:
        yield process
    finally:
        stop(process, grace)


def exited(pid: int, started: float) -> bool:
    """Whether the process that was `pid` on this host at `started` (epoch seconds) has exited.

    A process with that pid created after `started` reused the number; a minute of slack keeps a clock stepped
    forward from making a live process look new (the error then is to leave a record alone, never to end a live one).
    """
    try:
        process = psutil.Process(pid)
        return process.status() == psutil.STATUS_ZOMBIE or process.create_time() > started + 60
    except psutil.NoSuchProcess:
        return True
