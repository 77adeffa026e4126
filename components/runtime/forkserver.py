"""A fork server: one process imports the heavy libraries once, then forks a fresh child for each command.

A stage started as `python -m flows.train` spends ~6 s importing torch, transformers, Prefect, MLflow and DVC before
its first line of work; forked from a process that has them, it starts in milliseconds with the same modules (and the
frozen backbones the server was asked to hold). The server imports and loads only (no threads, no clients, no CUDA,
no OpenMP pool) so a fork is safe, and each child then runs its module as
`python -m` would: as `__main__`, with the request's argv, environment and folder, its stdout and stderr on the
descriptor sent with the request, and an interpreter's exit (threads joined, `atexit` handlers run: Prefect and
MLflow flush there; `leave`).

Protocol, over a SOCK_SEQPACKET socket pair (one message a datagram, the output descriptor passed with SCM_RIGHTS):

    request  {"id": I, "argv": ["-m", MODULE, ...], "env": {...}, "cwd": DIR}  + one fd
    reply    {"id": I, "exit": STATUS, "maxrss_mb": M}       once its child is reaped (STATUS < 0: killed by -STATUS)

The server ends when its client closes the socket, or on SIGINT once its children have ended (a `stop` of its
process group: the children get the same SIGINT, record themselves as stopped and exit). Children die with it.
"""

from __future__ import annotations

import atexit
import importlib
import json
import os
import random
import runpy
import select
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
from concurrent.futures import Future
from contextlib import suppress
from itertools import count
from typing import Any, NoReturn

from components.runtime.lifetime import GRACE, die_with_parent, dies_with_us

MAX_MESSAGE = 1 << 20  # a request carries its environment: a few KiB


class ForkServer:
    """The client: start the server (its own process group, dying with this process), run commands through it.

    Thread-safe: each `run` waits for its own child only."""

    def __init__(self, preload: list[str], cwd: str | None = None) -> None:
        """`preload`: modules to import, in order; `module:function` also calls `function()` once imported (work
        its children then share, e.g. `flows.params:hold_experiment_backbones`)."""
        self._socket, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        command = [sys.executable, "-m", "components.runtime.forkserver", str(theirs.fileno()), *preload]
        # in this process's group, as a stage started directly would be: a Ctrl-C reaches the stages too
        self.process = subprocess.Popen(command, cwd=cwd, pass_fds=(theirs.fileno(),), preexec_fn=dies_with_us())
        theirs.close()
        self._ids = count()
        self._send_lock = threading.Lock()
        self._ended: dict[int, Future[dict[str, Any]]] = {}
        threading.Thread(target=self._read_replies, daemon=True, name="forkserver-replies").start()

    def __enter__(self) -> ForkServer:
        return self

    def __exit__(self, *exc: object) -> None:
        """End the server; children still running are stopped as Ctrl-C stops them (`serve`)."""
        self._socket.shutdown(socket.SHUT_RDWR)  # wakes the reply reader too, which a plain close would not
        self._socket.close()
        self.process.wait()

    def start(self, argv: list[str], env: dict[str, str], cwd: str, output: int) -> Future[dict[str, Any]]:
        """Start `python *argv` in a fresh child writing to the descriptor `output` (the caller may close its copy
        once this returns). The future's result: `exit` (its exit status, negative for a signal) and `maxrss_mb`
        (its peak resident memory)."""
        request_id = next(self._ids)
        ended = self._ended[request_id] = Future()
        message = json.dumps({"id": request_id, "argv": argv, "env": env, "cwd": cwd}).encode()
        with self._send_lock:
            socket.send_fds(self._socket, [message], [output])
        return ended

    def _read_replies(self) -> None:
        with suppress(OSError):  # reset: the server died
            while reply := self._socket.recv(MAX_MESSAGE):
                message = json.loads(reply)
                self._ended.pop(message.pop("id")).set_result(message)
        lost = RuntimeError(f"the fork server ended (exit status {self.process.wait()})")
        for future in list(self._ended.values()):
            if not future.done():
                future.set_exception(lost)


def serve(server: socket.socket) -> tuple[dict[str, Any], int] | None:
    """Fork a child per request until the client leaves or a SIGINT arrives, then wait for the children (None).
    In a child it returns that child's request and output descriptor."""
    stop_at: float | None = None  # when what is still running gets SIGKILL

    def stop(signum: int = signal.SIGINT, frame: object = None) -> None:
        nonlocal stop_at
        stop_at = stop_at or time.monotonic() + GRACE

    signal.signal(signal.SIGINT, stop)
    children: dict[int, int] = {}  # pid -> request id
    while stop_at is None or children:
        readable = select.select([] if stop_at else [server], [], [], 0.05)[0]
        while children and (ended := os.wait4(-1, os.WNOHANG))[0]:
            pid, status, usage = ended
            reply = {"id": children.pop(pid), "exit": os.waitstatus_to_exitcode(status)}
            with suppress(OSError):  # a client gone has nobody to tell
                server.send(json.dumps({**reply, "maxrss_mb": round(usage.ru_maxrss / 1024)}).encode())
        if stop_at is not None and time.monotonic() > stop_at:
            for pid in children:
                os.kill(pid, signal.SIGKILL)
        if not readable:
            continue
        message, fds, _, _ = socket.recv_fds(server, MAX_MESSAGE, 1)
        if not message:  # the client closed its end: what still runs is stopped as Ctrl-C would
            stop()
            for pid in children:
                os.kill(pid, signal.SIGINT)
            continue
        request = json.loads(message)
        pid = os.fork()
        if pid == 0:
            server.close()
            return request, fds[0]
        os.close(fds[0])
        children[pid] = request["id"]
    return None


def become(request: dict[str, Any], output: int) -> None:
    """Turn this forked child into `python *argv` as `request` describes (what `python -m` sets up, then runs)."""
    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(output, 1)
    os.dup2(output, 2)
    os.close(output)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # a stop reaches the stage as Ctrl-C
    die_with_parent()
    os.chdir(request["cwd"])
    sys.path[0] = os.getcwd()  # what `python -m` puts first: the folder it starts in
    os.environ.clear()
    os.environ.update(request["env"])
    random.seed()  # a fresh interpreter's entropy, not the server's state shared by every child
    match request["argv"]:
        case ["-m", module, *args]:
            sys.argv = [module, *args]
            sys.modules.pop(module, None)  # run fresh as `__main__`, as `python -m` does
            runpy.run_module(module, run_name="__main__", alter_sys=True)
        case argv:
            raise SystemExit(f"the fork server runs `-m MODULE ...` commands, not {argv}")


def exit_status(error: BaseException | None) -> int:
    """What the interpreter would exit with after `error` escaped the program (printing what it would print)."""
    match error:
        case None:
            return 0
        case SystemExit(code=None):
            return 0
        case SystemExit(code=int(code)):
            return code
        case SystemExit(code=message):
            print(message, file=sys.stderr)
            return 1
        case KeyboardInterrupt():
            traceback.print_exception(error)
            return 128 + signal.SIGINT
    traceback.print_exception(error)
    return 1


def leave(status: int) -> NoReturn:
    """Exit as the interpreter does (non-daemon threads joined, `atexit` handlers run, output flushed) but without
    tearing down every module: with torch and transformers loaded that teardown alone takes 1-3 s, for nothing.

    The threads are joined by the interpreter's own shutdown step, which first runs `threading`'s exit hooks: those
    tell thread pools (`concurrent.futures`, as MLflow's artifact stores keep one) to stop their idle workers. Joining
    the threads without them waited for ever on such a worker."""
    threading._shutdown()  # what Python runs at exit, before the atexit handlers
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


def main() -> None:
    server = socket.socket(fileno=int(sys.argv[1]))
    die_with_parent()
    for entry in sys.argv[2:]:
        module, _, function = entry.partition(":")
        try:
            loaded = importlib.import_module(module)
            if function:
                getattr(loaded, function)()
        except Exception as error:  # a child does it again and fails as `python -m` would, where it can be read
            print(f"warning: the fork server could not preload {entry}: {error!r}", file=sys.stderr)
    if (child := serve(server)) is None:
        return
    try:
        become(*child)
    except BaseException as error:  # reported as the interpreter reports it
        leave(exit_status(error))
    leave(0)


if __name__ == "__main__":
    main()
