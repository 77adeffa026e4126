"""The response cache: one SQLite file (WAL, so several evaluation processes share it) of model answers.

A row is keyed by (model fingerprint, input key, generation key): the same weights answering the same prompt with
the same images under the same decoding settings. Rows are committed after every batch (a served model's after
every answer), so a killed evaluation resumes where it stopped and a repeated one costs only the lookups. Only real
answers are stored (an empty answer is one); per-sample failures (unreadable images, out of memory) are not, so they
are retried next time. Served models also keep each answer's token usage (table `usage`), so a resumed run's usage
and cost cover every answer.
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

from components.cache_root import cache_root
from components.errors import UserError

SCHEMA = """
CREATE TABLE IF NOT EXISTS responses (
    model TEXT NOT NULL,      -- ModelAdapter.fingerprint
    inputs TEXT NOT NULL,     -- prompt hash + image identities (runner.input_key)
    settings TEXT NOT NULL,   -- generation key (runner.generation_key)
    response TEXT NOT NULL,
    uid TEXT NOT NULL,        -- the sample that produced it (for people reading the file)
    created REAL NOT NULL,
    PRIMARY KEY (model, inputs, settings)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS usage (  -- served models: tokens the server counted for a cached response
    model TEXT NOT NULL,
    inputs TEXT NOT NULL,
    settings TEXT NOT NULL,
    prompt_tokens INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL,
    PRIMARY KEY (model, inputs, settings)
) WITHOUT ROWID;
"""
CHUNK = 500  # keys per SELECT (SQLite's default limit on variables is 32766; stay far below)


def default_cache_path() -> Path:
    """`$DEMONLAB_CACHE/eval/responses.sqlite` (default `~/.cache/demonlab/eval/responses.sqlite`)."""
    return cache_root() / "eval" / "responses.sqlite"


class ResponseCache:
    """Cached answers; `path=None` keeps them in memory only (nothing survives the process: no caching)."""

    def __init__(self, path: str | os.PathLike[str] | None) -> None:
        self.path = Path(path) if path is not None else None
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            # autocommit mode; writes are grouped in explicit transactions. A long timeout: other ranks write too.
            self._db = sqlite3.connect(self.path or ":memory:", timeout=120, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(SCHEMA)
        except sqlite3.DatabaseError as error:
            raise UserError(
                f"response cache {self.path}: not usable ({error}); delete the file or pass --cache another path"
            ) from None

    def get_many(self, model: str, settings: str, keys: Sequence[str]) -> dict[str, str]:
        """{input key: response} for the keys that are cached."""
        found: dict[str, str] = {}
        for start in range(0, len(keys), CHUNK):
            chunk = list(keys[start : start + CHUNK])
            marks = ",".join("?" * len(chunk))
            rows = self._db.execute(
                f"SELECT inputs, response FROM responses WHERE model = ? AND settings = ? AND inputs IN ({marks})",
                [model, settings, *chunk],
            )
            found.update(rows.fetchall())
        return found

    def put_many(self, model: str, settings: str, rows: Iterable[tuple[str, str, str]]) -> None:
        """Store (input key, uid, response) rows in one transaction."""
        now = time.time()
        values = [(model, key, settings, response, uid, now) for key, uid, response in rows]
        if not values:
            return
        with self._db:  # BEGIN ... COMMIT (ROLLBACK on error)
            self._db.execute("BEGIN IMMEDIATE")
            self._db.executemany("INSERT OR REPLACE INTO responses VALUES (?, ?, ?, ?, ?, ?)", values)

    def get_usage(self, model: str, settings: str, keys: Sequence[str]) -> dict[str, tuple[int, int]]:
        """{input key: (prompt tokens, completion tokens)} for the keys with a recorded usage."""
        found: dict[str, tuple[int, int]] = {}
        for start in range(0, len(keys), CHUNK):
            chunk = list(keys[start : start + CHUNK])
            marks = ",".join("?" * len(chunk))
            rows = self._db.execute(
                f"SELECT inputs, prompt_tokens, completion_tokens FROM usage WHERE model = ? AND settings = ? "
                f"AND inputs IN ({marks})",
                [model, settings, *chunk],
            )
            found.update((key, (prompt, completion)) for key, prompt, completion in rows)
        return found

    def put_usage(self, model: str, settings: str, rows: Iterable[tuple[str, int, int]]) -> None:
        """Store (input key, prompt tokens, completion tokens) rows in one transaction."""
        values = [(model, key, settings, prompt, completion) for key, prompt, completion in rows]
        with self._db:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.executemany("INSERT OR REPLACE INTO usage VALUES (?, ?, ?, ?, ?)", values)

    def count(self, model: str | None = None) -> int:
        if model is None:
            return self._db.execute("SELECT COUNT(*) FROM responses").fetchone()[0]
        return self._db.execute("SELECT COUNT(*) FROM responses WHERE model = ?", [model]).fetchone()[0]

    def close(self) -> None:
        self._db.close()
