"""Upgrades: a database made by an older relay opens with this one, its data kept."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlite_utils import Database

from conftest import RelayServer, write_sources
from relay.secrets import SecretStore
from relay.settings import Settings
from relay.store import Store, _incremental_vacuum, migrations


def old_database(path: Path, stop_before: str) -> None:
    """A database as a relay from before ``stop_before`` left it: no incremental
    vacuum, the older schema, an event with a delivery and an attempt, a rejection."""
    db = Database(sqlite3.connect(str(path)))
    db.enable_wal()
    migrations.apply(db, stop_before=stop_before)
    now = time.time()
    db.execute(
        "INSERT INTO events (id, source, platform, type, dedup_key, status, received_at,"
        " headers, body, routed_at) VALUES (1, 'tito', 'tito', 'ticket.completed', 'k1',"
        " 'accepted', ?, '{}', X'7B7D', ?)", [now, now])
    db.execute(
        "INSERT INTO deliveries (id, event_id, recipe, destination, dest_type, payload, status,"
        " attempts, queued_at, next_attempt_at, updated_at, idempotency_key) VALUES"
        " (1, 1, 'crm', 0, 'http', '{}', 'dead', 1, ?, ?, ?, 'idem-1')", [now, now, now])
    db.execute(
        "INSERT INTO attempts (delivery_id, number, started_at, duration, outcome, status_code)"
        " VALUES (1, 1, ?, 0.1, 'dead', 400)", [now])
    db.execute(
        "INSERT INTO rejections (source, received_at, status_code, reason, headers, body_prefix,"
        " body_size) VALUES ('tito', ?, 401, 'mismatch', '{}', X'', 0)", [now])
    db.close()


def columns(store: Store, table: str) -> set[str]:
    return {r["name"] for r in store.rows(f"PRAGMA table_info({table})")}


def applied(store: Store) -> list[dict[str, Any]]:
    return store.rows("SELECT name, applied_at FROM _sqlite_migrations ORDER BY rowid")


def test_a_database_from_the_first_release_opens_with_its_data(tmp_path: Path) -> None:
    path = tmp_path / "relay.db"
    old_database(path, stop_before="002_lane_holds")
    settings = Settings.from_env(environ={}, db=path, data=tmp_path / "data")
    # The old relay's secret, encrypted with the key in the data folder.
    scratch = Store(tmp_path / "scratch.db")
    SecretStore(scratch, settings).set("CRM_TOKEN", "t0ps3cret")
    sealed = scratch.get_secret("CRM_TOKEN")
    scratch.close()
    with sqlite3.connect(path) as old:
        old.execute("INSERT INTO secrets VALUES ('CRM_TOKEN', ?, ?)", [sealed, time.time()])
        assert old.execute("PRAGMA auto_vacuum").fetchone() == (0,)
    old.close()

    store = Store(path)
    try:
        names = [m["name"] for m in applied(store)]
        assert names[:4] == ["001_initial", "002_lane_holds", "003_reviewed", "004_incremental_vacuum"]
        assert names == [m.name for m in migrations._migrations]  # every later one too
        assert store.one("PRAGMA auto_vacuum") == {"auto_vacuum": 2}
        assert "reviewed_at" in columns(store, "deliveries")
        assert columns(store, "lanes") == {"recipe", "destination", "held_until"}
        assert store.one("SELECT id, status, reviewed_at FROM deliveries") == {
            "id": 1, "status": "dead", "reviewed_at": None}
        assert store.one("SELECT COUNT(*) AS n FROM attempts") == {"n": 1}
        assert store.one("SELECT COUNT(*) AS n FROM rejections") == {"n": 1}
        assert SecretStore(store, settings).lookup("CRM_TOKEN") == "t0ps3cret"
        assert store.one("PRAGMA integrity_check") == {"integrity_check": "ok"}
    finally:
        store.close()


def test_an_old_database_serves_and_keeps_its_dead_delivery(
        make_relay: Callable[..., RelayServer], tmp_path: Path) -> None:
    old_database(tmp_path / "relay.db", stop_before="003_reviewed")
    write_sources(tmp_path / "recipes")
    relay = make_relay(retention=1.0)  # everything is old, yet the dead delivery is unreviewed
    assert relay.client.get("/healthz").status_code == 200
    relay.stop()
    store = Store(tmp_path / "relay.db")
    try:
        assert store.one("SELECT COUNT(*) AS n FROM events") == {"n": 1}
        assert store.one("SELECT status FROM deliveries") == {"status": "dead"}
    finally:
        store.close()


def test_a_converted_database_is_not_vacuumed_again(tmp_path: Path) -> None:
    path = tmp_path / "relay.db"
    old_database(path, stop_before="003_reviewed")
    Store(path).close()  # converts: one VACUUM
    store = Store(path)
    first = applied(store)
    store.close()

    statements: list[str] = []
    db = Database(sqlite3.connect(str(path)), tracer=lambda sql, params: statements.append(sql))
    migrations.apply(db)  # what every later start does
    _incremental_vacuum(db)  # even run again, it sees the conversion is done
    db.close()
    assert not [s for s in statements if "VACUUM" in s.upper() and "auto_vacuum" not in s]

    store = Store(path)
    try:
        assert applied(store) == first  # nothing re-applied
    finally:
        store.close()


def test_a_new_database_is_made_incremental_without_a_vacuum(tmp_path: Path) -> None:
    statements: list[str] = []
    db = Database(sqlite3.connect(str(tmp_path / "new.db")),
                  tracer=lambda sql, params: statements.append(sql))
    db.execute("PRAGMA auto_vacuum = INCREMENTAL")  # what connect() does on a new file
    migrations.apply(db)
    assert db.execute("PRAGMA auto_vacuum").fetchone() == (2,)
    assert "VACUUM" not in statements
    db.close()
