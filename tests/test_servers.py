"""A new Prefect home starts from an empty database this Prefect version migrated once (`seed_prefect_database`):
made on first use in demonlab's cache, copied into every new home, never over a database that is there or one the
user configured. (Servers started on seeded homes: every test using `prefect_api`.)"""

from __future__ import annotations

import os
import sqlite3
from contextlib import closing
from pathlib import Path

import pytest

from components.runtime.servers import seed_prefect_database


def test_a_new_prefect_home_starts_from_a_database_migrated_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("DEMONLAB_CACHE", str(tmp_path / "cache"))
    first, second = tmp_path / "first", tmp_path / "second"
    seed_prefect_database({**os.environ, "PREFECT_HOME": str(first)})
    [template] = (tmp_path / "cache/prefect").glob("empty-*.db")
    made = template.stat().st_mtime_ns
    seed_prefect_database({**os.environ, "PREFECT_HOME": str(second)})
    assert template.stat().st_mtime_ns == made  # migrated once
    assert (first / "prefect.db").read_bytes() == (second / "prefect.db").read_bytes() == template.read_bytes()
    assert sorted(p.name for p in template.parent.iterdir()) == [template.name]  # no scratch left behind
    with closing(sqlite3.connect(first / "prefect.db")) as db:
        tables = {name for (name,) in db.execute("select name from sqlite_master where type = 'table'")}
        assert db.execute("select count(*) from flow_run").fetchone() == (0,)
    assert {"alembic_version", "flow_run", "deployment", "work_pool"} <= tables  # migrated, and empty

    (second / "prefect.db").write_bytes(b"runs of its own")
    seed_prefect_database({**os.environ, "PREFECT_HOME": str(second)})
    assert (second / "prefect.db").read_bytes() == b"runs of its own"
    configured = tmp_path / "configured"
    url = f"sqlite+aiosqlite:///{tmp_path / 'elsewhere.db'}"
    seed_prefect_database({**os.environ, "PREFECT_HOME": str(configured), "PREFECT_API_DATABASE_CONNECTION_URL": url})
    assert not configured.exists()

    # a cache that cannot be written: nothing seeded, no error (the server migrates its own database, as before)
    (tmp_path / "unwritable").write_text("a file where the cache folder would be")
    monkeypatch.setenv("DEMONLAB_CACHE", str(tmp_path / "unwritable"))
    seed_prefect_database({**os.environ, "PREFECT_HOME": str(tmp_path / "third")})
    assert not (tmp_path / "third" / "prefect.db").exists()
