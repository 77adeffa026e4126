"""Where a command's CPU goes, by process: run it, read every process's own CPU time (`/proc/<pid>/stat`, user +
system) every half second while it runs, and print the core-seconds summed per command line (numbers, ports and
temporary paths folded, so the same program started many times is one row). Linux only.

How docs/benchmarks.md ("Where the suite's CPU goes") found the MLflow job runner and Prefect's repeated migrations:

    .venv/bin/python benchmarks/cpu_by_process.py [--top 40] -- .venv/bin/python -m pytest -q -n 2 ...

A process that lives less than half a second may be missed; CPU spent before the command started is not counted.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

TICKS = os.sysconf("SC_CLK_TCK")


def snapshot() -> dict[tuple[str, str], tuple[str, float]]:
    """(pid, start time) -> (command line, CPU seconds so far) of every process readable now."""
    seen = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:  # ended between the listing and the read
            continue
        fields = stat[stat.rfind(")") + 2 :].split()
        seen[(entry.name, fields[19])] = (command, (int(fields[11]) + int(fields[12])) / TICKS)
    return seen


def program(command: str) -> str:
    """A command line with what changes between starts folded: temporary paths, ports, long numbers."""
    command = re.sub(r"/tmp/\S+", "<tmp>", command)
    command = re.sub(r"--port[ =]\d+", "--port <n>", command)
    return " ".join(re.sub(r"\d{4,}", "<n>", command).split()[:5])[:120]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--top", type=int, default=40, help="rows to print (default 40)")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="the command, after --")
    args = parser.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("give the command to measure after --")
    before = {key: cpu for key, (_, cpu) in snapshot().items()}
    latest: dict[tuple[str, str], tuple[str, float]] = {}
    started = time.monotonic()
    child = subprocess.Popen(command)
    while child.poll() is None:
        for key, (line, cpu) in snapshot().items():
            # a forked process shows its parent's command line until it execs: keep the longest one seen
            known = latest.get(key, ("", 0.0))[0]
            latest[key] = (line if len(line) >= len(known) else known, cpu)
        time.sleep(0.5)
    wall = time.monotonic() - started
    by_program, starts = Counter(), Counter()
    for key, (line, cpu) in latest.items():
        if key[0] != str(os.getpid()):
            by_program[program(line)] += cpu - before.get(key, 0.0)
            starts[program(line)] += 1
    print(f"{sum(by_program.values()):,.0f} core-seconds in {wall:,.0f} s (exit {child.returncode})")
    print(f"{'core-s':>8} {'starts':>6}  program")
    for name, cpu in by_program.most_common(args.top):
        print(f"{cpu:8.1f} {starts[name]:6d}  {name}")
    return child.returncode


if __name__ == "__main__":
    sys.exit(main())
