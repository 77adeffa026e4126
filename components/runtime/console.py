"""What `demonlab run` shows: one line per stage under a live progress display, everything else in the run's log.

The pipeline flow (`flows.pipeline`) writes progress events, one JSON object a line, to a pipe `demonlab run` reads
(`Events`); all output of DVC, Prefect, MLflow and the stages goes to the log file instead. Events:

    {"event": "plan", "stages": [...]}                      the stages to check, in order
    {"event": "start", "stage": S}                          S is being checked (and run if stale)
    {"event": "progress", "stage": S, "desc": D, "n": N, "total": T}   the stage's own tqdm bar
    {"event": "end", "stage": S, "outcome": O, "seconds": X}  O: ran | restored | unchanged | retrying | failed
                                                             | skipped (a stage it depends on failed)
    {"event": "end", ..., "outcome": "retrying", "why": W}   why the stage runs again (a crash, a lost worker)
    {"event": "warning", "text": W}                         something a user can act on

Stages may run side by side (`demonlab run --parallel`): each running stage has its own live line. The ETA adds up
the duration, in the last run that checked it (`stage-seconds.json`), of each stage not yet ended.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import IO, Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    Progress,
    ProgressColumn,
    SpinnerColumn,
    Task,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from rich.text import Text

from components.atomic import write_json

# tqdm's default bar: `train vpgc:  45%|████▌     | 9/20 [00:05<00:06, 1.8step/s]`
TQDM = re.compile(r"^(?P<desc>.*?):?\s*\d+%\|[^|]*\|\s*(?P<n>\d+)/(?P<total>\d+)")
PROGRESS_INTERVAL = 0.25  # seconds between progress events of one stage: enough for a bar, little for the pipe


class Events:
    """The writing end: progress events to `demonlab run`, or nowhere when nobody listens (a worker's run)."""

    def __init__(self, stream: IO[str] | None = None) -> None:
        self.stream = stream
        self._lock = threading.Lock()  # stages running side by side report from their own threads

    def emit(self, event: str, **fields: Any) -> None:
        if self.stream is None:
            return
        try:
            with self._lock:
                self.stream.write(json.dumps({"event": event, **fields}) + "\n")
                self.stream.flush()
        except OSError:  # the reader stopped (a stop signal): progress is no reason to fail a clean shutdown
            self.stream = None


class StageOutput:
    """Reads a stage's output as it streams by: its tqdm bar, the warnings addressed to a user (DVC's `WARNING:`,
    the project's `warning:`)."""

    def __init__(self, stage: str, events: Events) -> None:
        self.stage, self.events = stage, events
        self.partial = ""
        self.last_progress = 0.0

    def feed(self, chunk: bytes) -> None:
        # tqdm redraws with `\r`, so a bar's updates are segments of one line
        *segments, self.partial = re.split(r"[\r\n]", self.partial + chunk.decode(errors="replace"))
        for segment in segments:
            if segment.startswith(("WARNING: ", "warning: ")):
                self.events.emit("warning", text=segment)
            elif (bar := TQDM.match(segment)) and self._due(int(bar["n"]) == int(bar["total"])):
                self.events.emit("progress", stage=self.stage, desc=bar["desc"], n=int(bar["n"]),
                                 total=int(bar["total"]))  # fmt: skip

    def _due(self, last: bool) -> bool:
        now = time.monotonic()
        if last or now - self.last_progress >= PROGRESS_INTERVAL:
            self.last_progress = now
            return True
        return False


class EtaColumn(ProgressColumn):
    """Time left for the whole pipeline, counting down between events; blank while no duration is known."""

    def render(self, task: Task) -> Text:
        end = task.fields.get("eta_end")
        if end is None:
            return Text("")
        left = max(0, round(end - time.monotonic()))
        return Text(f"ETA {left // 60}m {left % 60:02d}s{'+' if task.fields['eta_partial'] else ''}", style="cyan")


class PipelineConsole:
    """The reading end: a stage's line once it ends, above a live line for each running stage (its bar, elapsed
    time, the ETA); `live=False` prints only the lines (`-v`, where the stages' own output fills the console)."""

    def __init__(self, durations: Path, live: bool = True, console: Console | None = None) -> None:
        self.durations = durations
        self.last = json.loads(durations.read_text()) if durations.is_file() else {}
        self.console = console or Console(highlight=False)
        self.progress = Progress(
            SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[detail]}"),
            TimeElapsedColumn(), EtaColumn(), console=self.console, transient=True,
            disable=not (live and self.console.is_terminal),  # a file or a pipe gets the lines only
        )  # fmt: skip
        self.running: dict[str, TaskID] = {}
        self.stages: list[str] = []
        self.outcomes: Counter[str] = Counter()
        self.ended: set[str] = set()
        self.warned: set[str] = set()

    def follow(self, lines: Iterable[str]) -> Counter[str]:
        """Render the events of `lines` until they end; the count of each stage outcome."""
        with self.progress:
            for line in lines:
                event = json.loads(line)
                getattr(self, f"_{event.pop('event')}")(**event)
        return self.outcomes

    def _plan(self, stages: list[str]) -> None:
        self.stages = stages

    def _start(self, stage: str) -> None:
        if stage in self.running:  # a retry
            self.progress.remove_task(self.running.pop(stage))
        remaining = [self.last.get(s) for s in self.stages if s not in self.ended]
        known = sum(seconds for seconds in remaining if seconds is not None)
        self.running[stage] = self.progress.add_task(
            self._position(stage), total=None, detail="",
            eta_end=time.monotonic() + known if known else None, eta_partial=None in remaining,
        )  # fmt: skip

    def _progress(self, stage: str, desc: str, n: int, total: int) -> None:
        self.progress.update(self.running[stage], completed=n, total=total, detail=f"{desc} {n}/{total}")

    def _end(self, stage: str, outcome: str, seconds: float, why: str | None = None) -> None:
        self.outcomes[outcome] += 1
        if stage in self.running and outcome != "retrying":
            self.progress.remove_task(self.running.pop(stage))
        if outcome != "retrying":
            self.ended.add(stage)
        line = f"{self._position(stage)}  {outcome:<9} {seconds:6.1f}s" + (f"  ({why})" if why else "")
        self.progress.console.print(
            Text(line, style="red" if outcome in ("failed", "retrying", "skipped") else ""), soft_wrap=True
        )
        if outcome in ("ran", "unchanged"):
            self.last[stage] = round(seconds, 1)
            write_json(self.durations, self.last)

    def _warning(self, text: str) -> None:
        if text not in self.warned:  # once: a warning every stage repeats is still one thing to act on
            self.warned.add(text)
            self.progress.console.print(Text(text, style="yellow"), soft_wrap=True)

    def _position(self, stage: str) -> str:
        width, name = len(str(len(self.stages))), max(map(len, self.stages))
        return f"{self.stages.index(stage) + 1:>{width}}/{len(self.stages)} {stage:<{name}}"
