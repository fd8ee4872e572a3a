"""SQLite: the schema, its named migrations, and every query relay makes.

One file holds everything: events (what arrived), rejections (what was refused and
why), routes (what each recipe decided about an event), deliveries (the durable
queue) and their attempts, and secrets. WAL mode, and a commit is on the disk
before relay answers 2xx.

``Store`` is synchronous and owns one connection. In the server, the ``Writer``
owns the only writing ``Store`` and runs jobs in group commits on the event loop's
thread: jobs that arrive together share one transaction, each in its own savepoint
so one failing job does not undo the others, and one flush of the WAL to the disk
(on a thread of its own) makes them durable before anyone is told.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import os
import queue
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

from sqlite_utils import Database
from sqlite_utils.migrations import Migrations

from .errors import StorageUnavailable
from .ui.queries import LogQueries

T = TypeVar("T")

log = logging.getLogger("relay.store")

migrations = Migrations("relay")

REJECTIONS_KEPT = 10_000  # the rejection log is bounded: oldest rows go first
BODY_PREFIX = 4096  # bytes of a rejected body kept to show what it was
RESPONSE_KEPT = 65536  # characters of a destination's answer kept per attempt


@migrations(name="001_initial")
def _initial(db: Database) -> None:
    db.executescript(
        """
        CREATE TABLE events (
            id INTEGER PRIMARY KEY,
            source TEXT NOT NULL,
            platform TEXT NOT NULL,
            type TEXT NOT NULL,
            dedup_key TEXT NOT NULL,
            status TEXT NOT NULL,          -- accepted, duplicate, ignored
            is_test INTEGER NOT NULL DEFAULT 0,
            duplicate_of INTEGER REFERENCES events(id),
            received_at REAL NOT NULL,
            headers TEXT NOT NULL,         -- JSON, secrets redacted
            body BLOB NOT NULL,
            routed_at REAL
        );
        CREATE UNIQUE INDEX events_dedup ON events(source, dedup_key)
            WHERE status != 'duplicate';
        CREATE INDEX events_unrouted ON events(id) WHERE routed_at IS NULL;
        CREATE INDEX events_received ON events(received_at);

        CREATE TABLE rejections (
            id INTEGER PRIMARY KEY,
            source TEXT NOT NULL,
            received_at REAL NOT NULL,
            status_code INTEGER NOT NULL,
            reason TEXT NOT NULL,
            headers TEXT NOT NULL,
            body_prefix BLOB NOT NULL,
            body_size INTEGER NOT NULL,
            client TEXT
        );
        CREATE INDEX rejections_source ON rejections(source, id);

        CREATE TABLE routes (
            id INTEGER PRIMARY KEY,
            event_id INTEGER NOT NULL REFERENCES events(id),
            recipe TEXT NOT NULL,
            outcome TEXT NOT NULL,         -- queued, filtered, error
            message TEXT,
            deliveries INTEGER NOT NULL DEFAULT 0,
            created_at REAL NOT NULL
        );
        CREATE INDEX routes_event ON routes(event_id);

        CREATE TABLE deliveries (
            id INTEGER PRIMARY KEY,
            event_id INTEGER NOT NULL REFERENCES events(id),
            recipe TEXT NOT NULL,
            destination INTEGER NOT NULL,  -- index in the recipe's `to` list
            dest_type TEXT NOT NULL,
            item_index INTEGER,            -- position in for_each, if any
            payload TEXT NOT NULL,         -- the mapped fields, JSON
            status TEXT NOT NULL,          -- pending, sending, delivered, dead
            attempts INTEGER NOT NULL DEFAULT 0,
            queued_at REAL NOT NULL,
            next_attempt_at REAL NOT NULL,
            updated_at REAL NOT NULL,
            delivered_at REAL,
            last_error TEXT,
            last_status_code INTEGER,
            idempotency_key TEXT NOT NULL
        );
        CREATE INDEX deliveries_due ON deliveries(status, next_attempt_at);
        CREATE INDEX deliveries_event ON deliveries(event_id);

        CREATE TABLE attempts (
            id INTEGER PRIMARY KEY,
            delivery_id INTEGER NOT NULL REFERENCES deliveries(id),
            number INTEGER NOT NULL,
            started_at REAL NOT NULL,
            duration REAL NOT NULL,
            outcome TEXT NOT NULL,         -- delivered, retry, dead
            status_code INTEGER,
            error TEXT,
            response_headers TEXT,
            response_body TEXT
        );
        CREATE INDEX attempts_delivery ON attempts(delivery_id);

        CREATE TABLE secrets (
            name TEXT PRIMARY KEY,
            value BLOB NOT NULL,           -- encrypted
            updated_at REAL NOT NULL
        );
        """
    )


@migrations(name="002_lane_holds")
def _lane_holds(db: Database) -> None:
    # A destination that said "wait" (429) holds its lane: nothing of that recipe
    # destination is sent before held_until, so that order of arrival survives.
    db.executescript(
        """
        CREATE TABLE lanes (
            recipe TEXT NOT NULL,
            destination INTEGER NOT NULL,
            held_until REAL NOT NULL,
            PRIMARY KEY (recipe, destination)
        );
        """
    )


@migrations(name="003_reviewed")
def _reviewed(db: Database) -> None:
    # A dead delivery waits for a person; once reviewed (dismissed or replayed) it
    # may be pruned with its event like a delivered one.
    db.execute("ALTER TABLE deliveries ADD COLUMN reviewed_at REAL")
    # Deleting an event checks (foreign key) that no redelivery points at it:
    # without this index, each check would read the whole events table.
    db.execute("CREATE INDEX events_duplicate_of ON events(duplicate_of)"
               " WHERE duplicate_of IS NOT NULL")


@migrations(name="004_incremental_vacuum", transactional=False)
def _incremental_vacuum(db: Database) -> None:
    # Pruning frees pages; with incremental auto-vacuum they can be given back to
    # the file system in small steps. A database made before this needs one full
    # VACUUM to switch (once, at the first start after the upgrade).
    if db.execute("PRAGMA auto_vacuum").fetchone()[0] == 2:
        return
    db.execute("PRAGMA auto_vacuum = INCREMENTAL")
    db.execute("VACUUM")


@migrations(name="005_users")
def _users(db: Database) -> None:
    # The web UI's accounts and sessions. A session cookie holds a random token;
    # only its SHA-256 is stored, so a copy of the database logs nobody in.
    db.executescript(
        """
        CREATE TABLE users (
            name TEXT PRIMARY KEY,
            password_hash TEXT NOT NULL,   -- argon2id
            created_at REAL NOT NULL,
            updated_at REAL NOT NULL
        );
        CREATE TABLE sessions (
            token_hash TEXT PRIMARY KEY,
            user TEXT NOT NULL REFERENCES users(name) ON DELETE CASCADE,
            csrf_token TEXT NOT NULL,
            created_at REAL NOT NULL,
            seen_at REAL NOT NULL
        );
        CREATE INDEX sessions_user ON sessions(user);
        """
    )


@migrations(name="006_search")
def _search(db: Database) -> None:
    # The log's text search: an FTS5 index of event bodies (a blob is read as text).
    # Its content is the view of exactly the events it holds, each routed event once
    # (a redelivery is found through its original), so that 'integrity-check' can
    # compare the two. The router adds events in batches once routed (index_for_search),
    # which keeps ingest fast; pruning takes them out before the events go.
    db.execute("CREATE VIEW events_searchable AS SELECT id, body FROM events"
               " WHERE status != 'duplicate' AND routed_at IS NOT NULL")
    db.execute("CREATE VIRTUAL TABLE events_fts USING fts5(body, content='events_searchable',"
               " content_rowid='id')")
    last = db.execute("SELECT COALESCE(MAX(id), 0) FROM events").fetchone()[0]
    for start in range(0, last, 10_000):  # in batches: memory stays bounded on a big database
        db.execute("INSERT INTO events_fts (rowid, body) SELECT id, body FROM events_searchable"
                   " WHERE id > ? AND id <= ?", [start, start + 10_000])
    # The log lists a source's events, and dead deliveries, newest first without
    # reading the whole table.
    db.execute("CREATE INDEX events_source ON events(source, id)")
    db.execute("CREATE INDEX deliveries_dead ON deliveries(id) WHERE status = 'dead'")
    # The recipes page shows each recipe's last delivery; the log filters by recipe.
    db.execute("CREATE INDEX deliveries_recipe ON deliveries(recipe, id)")


def connect(path: Path | str) -> Database:
    """Open (creating if needed) the database and bring its schema up to date."""
    path = Path(path)
    if path.parent and not path.parent.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(str(path), check_same_thread=False, timeout=30)
    db = Database(conn)
    db.execute("PRAGMA busy_timeout = 30000")
    if db.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()[0] == 0:
        # Only before the first table: a new file gets incremental vacuum for free.
        db.execute("PRAGMA auto_vacuum = INCREMENTAL")
    db.enable_wal()
    db.execute("PRAGMA synchronous = FULL")
    db.execute("PRAGMA foreign_keys = ON")
    migrations.apply(db)
    return db


#: One encoder for every row: json.dumps with options makes a new one each call.
_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)


def _json(value: Any) -> str:
    return _ENCODER.encode(value)


class Store(LogQueries):
    """Every query relay makes, on one connection. Not thread-safe: one user at a time."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self.db = connect(self.path)
        self.probed = False  # set by writable(), for the Writer

    def close(self) -> None:
        self.db.close()

    @contextlib.contextmanager
    def _writing(self) -> Iterator[None]:
        """A transaction that takes the write lock first (waiting for it if need be).

        A plain BEGIN that reads, then writes, fails at once with "database is
        locked" when another connection (the running relay) committed in between.
        """
        if self.db.conn.in_transaction:  # on the writer: already ours
            with self._atomic():
                yield
            return
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    def writable(self) -> bool:
        """Whether the database file takes a write now (``/healthz``).

        A 64 KiB row goes into the main database and is rolled back: the file must
        have room for it (a full ``max_page_count`` shows here), and the commit, which
        still writes a page or two, must reach the disk (a full disk shows only there:
        on the writer, a probe whose commit fails is answered False, see ``Writer``).
        A temporary table would not do: it lives elsewhere, and says yes on a full disk.
        """
        self.probed = True
        try:
            with self._atomic():
                self.db.execute("SAVEPOINT writable_probe")
                self.db.execute(
                    "INSERT INTO rejections (source, received_at, status_code, reason, headers,"
                    " body_prefix, body_size) VALUES ('', 0, 0, '', '{}', zeroblob(65536), 0)")
                self.db.execute("ROLLBACK TO writable_probe")
                self.db.execute("RELEASE writable_probe")
            return True
        except sqlite3.Error:
            return False

    @contextlib.contextmanager
    def _atomic(self, savepoint: bool = True) -> Iterator[None]:
        """A transaction, or inside one a savepoint: all of the block or none of it.

        sqlite-utils' ``atomic()`` does the same with a random savepoint name, a
        system call for each; on the writer that runs several times per webhook.
        SQLite allows the one name to nest (``ROLLBACK TO`` reaches the innermost).
        ``savepoint=False``: inside a transaction, add nothing. For a block of one
        writing statement (SQLite undoes a failed statement by itself), or one whose
        caller undoes it on failure, as the writer does with each job's savepoint.
        """
        conn = self.db.conn
        if conn.in_transaction and not savepoint:
            yield
            return
        if not conn.in_transaction:
            conn.execute("BEGIN")
            try:
                yield
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
            return
        conn.execute("SAVEPOINT relay")
        try:
            yield
        except BaseException:
            # An error may have ended the whole transaction (a full disk): then
            # there is no savepoint left to go back to.
            if conn.in_transaction:
                conn.execute("ROLLBACK TO relay")
                conn.execute("RELEASE relay")
            raise
        conn.execute("RELEASE relay")

    def rows(self, sql: str, params: Sequence[Any] | dict[str, Any] = ()) -> list[dict[str, Any]]:
        """The rows of one SELECT as dicts (sqlite-utils' ``query`` wraps each
        statement in a savepoint of its own, three statements for one)."""
        cursor = self.db.conn.execute(sql, params)
        keys = [column[0] for column in cursor.description]
        if len(set(keys)) != len(keys):  # one would overwrite the other: name them apart
            raise ValueError(f"the query returns a column name twice: {keys}")
        return [dict(zip(keys, row, strict=True)) for row in cursor]

    def one(self, sql: str, params: Sequence[Any] | dict[str, Any] = ()) -> dict[str, Any] | None:
        found = self.rows(sql, params)
        return found[0] if found else None

    # --- events -----------------------------------------------------------------

    def insert_event(
        self, *, source: str, platform: str, type: str, dedup_key: str, is_test: bool,
        headers: dict[str, str], body: bytes, matched: bool, wanted: bool = True,
        now: float | None = None,
    ) -> tuple[str, int]:
        """Store an event; returns ``(status, id)``.

        ``status`` is ``duplicate`` (and ``id`` the original's) when the source
        already has an event with this dedup key; the redelivery is still recorded,
        but never routed. Otherwise ``accepted``, or ``ignored`` when no recipe of
        the source wants this event type (``matched`` is False).

        An event no recipe would even look at (``wanted`` False: no recipe of the
        source takes its type, enabled or not) is stored as routed: the router
        would only record that nothing happened.
        """
        now = time.time() if now is None else now
        # One statement (no SELECT first): on the writer, each statement is another
        # round of handing Python's lock between threads.
        with self._atomic(savepoint=False):
            [(new_id, status, original)] = self.db.conn.execute(
                "INSERT INTO events (source, platform, type, dedup_key, status, is_test,"
                " duplicate_of, received_at, headers, body, routed_at)"
                " SELECT ?, ?, ?, ?, CASE WHEN o.id IS NULL THEN ? ELSE 'duplicate' END, ?,"
                " o.id, ?, ?, ?, CASE WHEN o.id IS NULL THEN ? ELSE ? END"
                " FROM (SELECT (SELECT id FROM events WHERE source = ? AND dedup_key = ?"
                " AND status != 'duplicate') AS id) o"
                " RETURNING id, status, duplicate_of",
                [source, platform, type, dedup_key, "accepted" if matched else "ignored",
                 int(is_test), now, _json(headers), body, None if wanted else now, now,
                 source, dedup_key],
            ).fetchall()
        return str(status), int(original if original is not None else new_id)

    def unrouted_events(self, limit: int = 100) -> list[dict[str, Any]]:
        return self.rows(
            "SELECT * FROM events WHERE routed_at IS NULL ORDER BY id LIMIT ?", [limit]
        )

    def record_routing(
        self, event_id: int, routes: Iterable[dict[str, Any]],
        deliveries: Iterable[dict[str, Any]], now: float | None = None,
    ) -> int:
        """Store a routed event's recipe outcomes and queue its deliveries, atomically.

        Returns how many deliveries were queued.
        """
        now = time.time() if now is None else now
        count = 0
        with self._atomic():
            for route in routes:
                self.db.execute(
                    "INSERT INTO routes (event_id, recipe, outcome, message, deliveries, created_at)"
                    " VALUES (?, ?, ?, ?, ?, ?)",
                    [event_id, route["recipe"], route["outcome"], route.get("message"),
                     route.get("deliveries", 0), now],
                )
            for d in deliveries:
                # A held lane takes new deliveries no earlier than its hold ends.
                self.db.execute(
                    "INSERT INTO deliveries (event_id, recipe, destination, dest_type, item_index,"
                    " payload, status, queued_at, next_attempt_at, updated_at, idempotency_key)"
                    " VALUES (?, ?, ?, ?, ?, ?, 'pending', ?, MAX(?, COALESCE((SELECT held_until"
                    " FROM lanes WHERE recipe = ? AND destination = ?), 0)), ?, ?)",
                    [event_id, d["recipe"], d["destination"], d["dest_type"], d.get("item_index"),
                     _json(d["payload"]), now, now, d["recipe"], d["destination"], now,
                     uuid.uuid4().hex],
                )
                count += 1
            self.db.execute("UPDATE events SET routed_at = ? WHERE id = ?", [now, event_id])
        return count

    def log_rejection(
        self, *, source: str, status_code: int, reason: str, headers: dict[str, str],
        body: bytes, body_size: int, client: str | None, now: float | None = None,
    ) -> None:
        now = time.time() if now is None else now
        with self._atomic():
            cursor = self.db.execute(
                "INSERT INTO rejections (source, received_at, status_code, reason, headers,"
                " body_prefix, body_size, client) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [source[:200], now, status_code, reason, _json(headers), body[:BODY_PREFIX],
                 body_size, client],
            )
            newest = int(cursor.lastrowid or 0)
            if newest % 100 == 0:  # prune now and then, not on every insert
                self.db.execute("DELETE FROM rejections WHERE id <= ?", [newest - REJECTIONS_KEPT])

    # --- deliveries -------------------------------------------------------------

    def requeue_interrupted(self) -> int:
        """Deliveries left 'sending' by a crash go back to the queue (at-least-once)."""
        cursor = self.db.execute(
            "UPDATE deliveries SET status = 'pending', updated_at = ? WHERE status = 'sending'",
            [time.time()],
        )
        return cursor.rowcount

    def due_by_lane(self, now: float, per_lane: int, limit: int) -> list[dict[str, Any]]:
        """Due pending deliveries, the first ``per_lane`` of each recipe destination.

        First due, first sent; arrival (id) breaks ties, so a lane released from a
        hold goes in order of arrival. Capping each lane means a lane with a huge
        backlog cannot hide the others' work.
        """
        # The window numbers the due deliveries' ids only; the rows (payloads) and their
        # events are read for the few it keeps: a third of the time with a big backlog.
        return self.rows(
            "SELECT d.*, e.source, e.type AS event_type, q.lane_position FROM (SELECT id,"
            " next_attempt_at, ROW_NUMBER() OVER (PARTITION BY recipe, destination"
            " ORDER BY next_attempt_at, id) AS lane_position FROM deliveries"
            " WHERE status = 'pending' AND next_attempt_at <= ?) q"
            " JOIN deliveries d ON d.id = q.id JOIN events e ON e.id = d.event_id"
            " WHERE q.lane_position <= ? ORDER BY q.next_attempt_at, q.id LIMIT ?",
            [now, per_lane, limit],
        )

    def hold_lane(self, recipe: str, destination: int, until: float) -> None:
        """Nothing of this recipe destination goes before ``until`` (after a 429).

        Its pending deliveries move to ``until``, where arrival order breaks the tie,
        and routing queues new ones no earlier (``record_routing``).
        """
        with self._atomic():
            self.db.execute(
                "INSERT INTO lanes (recipe, destination, held_until) VALUES (?, ?, ?)"
                " ON CONFLICT(recipe, destination) DO UPDATE SET"
                " held_until = MAX(held_until, excluded.held_until)",
                [recipe, destination, until])
            self.db.execute(
                "UPDATE deliveries SET next_attempt_at = ? WHERE recipe = ? AND destination = ?"
                " AND status = 'pending' AND next_attempt_at < ?",
                [until, recipe, destination, until])

    def claim(self, ids: list[int], now: float | None = None) -> set[int]:
        """Mark these deliveries 'sending' if they are still pending; returns those marked."""
        if not ids:
            return set()
        now = time.time() if now is None else now
        marks = ",".join("?" * len(ids))
        with self._atomic(savepoint=False):  # one statement
            # "+status": by the ids, never by the status index, which SQLite picks for
            # more than one id and then reads every pending delivery (a backlog's all).
            cursor = self.db.conn.execute(
                f"UPDATE deliveries SET status = 'sending', updated_at = ? WHERE id IN ({marks})"
                " AND +status = 'pending' RETURNING id", [now, *ids])
            return {int(row[0]) for row in cursor.fetchall()}

    def next_due_at(self) -> float | None:
        row = self.one("SELECT MIN(next_attempt_at) AS t FROM deliveries WHERE status = 'pending'")
        return row["t"] if row and row["t"] is not None else None

    def record_attempt(
        self, delivery_id: int, *, number: int, started_at: float, duration: float,
        outcome: str, status_code: int | None, error: str | None,
        response_headers: dict[str, str] | None, response_body: str | None,
        next_attempt_at: float | None = None,
    ) -> None:
        """Record one attempt and move the delivery to its next state.

        ``outcome`` is ``delivered``, ``retry`` (then ``next_attempt_at`` is set) or ``dead``.
        """
        now = time.time()
        status = {"delivered": "delivered", "retry": "pending", "dead": "dead"}[outcome]
        with self._atomic(savepoint=False):  # on the writer, its job's savepoint
            self.db.execute(
                "INSERT INTO attempts (delivery_id, number, started_at, duration, outcome,"
                " status_code, error, response_headers, response_body)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [delivery_id, number, started_at, duration, outcome, status_code, error,
                 _json(response_headers) if response_headers is not None else None,
                 response_body[:RESPONSE_KEPT] if response_body is not None else None],
            )
            self.db.execute(
                "UPDATE deliveries SET status = ?, attempts = ?, updated_at = ?,"
                " next_attempt_at = COALESCE(?, next_attempt_at),"
                " delivered_at = CASE WHEN ? = 'delivered' THEN ? ELSE delivered_at END,"
                " last_error = ?, last_status_code = ?,"
                " reviewed_at = CASE WHEN ? = 'dead' THEN NULL ELSE reviewed_at END WHERE id = ?",
                [status, number, now, next_attempt_at, outcome, now, error, status_code,
                 outcome, delivery_id],
            )

    def replay(
        self, *, delivery_id: int | None = None, source: str | None = None,
        recipe: str | None = None, since: float | None = None, now: float | None = None,
    ) -> list[int]:
        """Put dead deliveries back in the queue, as if just queued. Returns their ids.

        With ``delivery_id``, that one delivery (dead or delivered: a person may
        want it sent again). Otherwise every dead delivery matching the filters.
        """
        now = time.time() if now is None else now
        where = ["1 = 1"]
        params: list[Any] = []
        if delivery_id is not None:
            where.append("d.id = ?")
            params.append(delivery_id)
            where.append("d.status IN ('dead', 'delivered')")
        else:
            where.append("d.status = 'dead'")
        if source is not None:
            where.append("e.source = ?")
            params.append(source)
        if recipe is not None:
            where.append("d.recipe = ?")
            params.append(recipe)
        if since is not None:
            where.append("d.queued_at >= ?")
            params.append(since)
        with self._writing():
            ids = [r["id"] for r in self.rows(
                "SELECT d.id FROM deliveries d JOIN events e ON e.id = d.event_id WHERE "
                + " AND ".join(where) + " ORDER BY d.id", params)]
            for chunk_start in range(0, len(ids), 500):
                chunk = ids[chunk_start:chunk_start + 500]
                marks = ",".join("?" * len(chunk))
                self.db.execute(
                    # Replaying is a review: should it die again, that is a new death
                    # (record_attempt clears reviewed_at) and waits for a person again.
                    "UPDATE deliveries SET status = 'pending', queued_at = ?, next_attempt_at = ?,"
                    f" updated_at = ?, reviewed_at = ? WHERE id IN ({marks})",
                    [now, now, now, now, *chunk],
                )
        return ids

    def dismiss(self, *, delivery_id: int | None = None, now: float | None = None) -> list[int]:
        """Mark dead deliveries reviewed (one, or every unreviewed one); returns their ids.

        A reviewed dead delivery is kept for the retention, then pruned with its event.
        """
        now = time.time() if now is None else now
        where, params = "status = 'dead' AND reviewed_at IS NULL", [now]
        if delivery_id is not None:
            where += " AND id = ?"
            params.append(delivery_id)
        with self._atomic():
            cursor = self.db.execute(
                f"UPDATE deliveries SET reviewed_at = ? WHERE {where} RETURNING id", params)
            return sorted(int(row[0]) for row in cursor.fetchall())

    # --- retention --------------------------------------------------------------

    # An event may go only when nothing still needs it: it was routed, and each of
    # its deliveries was delivered or is dead and reviewed by a person.
    _PRUNABLE = (
        "e.routed_at IS NOT NULL AND NOT EXISTS (SELECT 1 FROM deliveries d"
        " WHERE d.event_id = e.id AND (d.status IN ('pending', 'sending')"
        " OR (d.status = 'dead' AND d.reviewed_at IS NULL)))"
    )

    def last_event_before(self, cutoff: float) -> int:
        """The highest event id received before ``cutoff`` (0 when none)."""
        row = self.one("SELECT MAX(id) AS id FROM events WHERE received_at < ?", [cutoff])
        return int(row["id"]) if row and row["id"] is not None else 0

    def prune_events(self, after_id: int, up_to_id: int, limit: int) -> tuple[int, int]:
        """Delete up to ``limit`` prunable events with ids in (after_id, up_to_id].

        Their routes, deliveries and attempts go too, and the redeliveries
        recorded as their duplicates. Returns ``(events deleted, last id looked
        at)``; the last id is where the next batch starts.
        """
        ids = [int(r[0]) for r in self.db.execute(
            f"SELECT e.id FROM events e WHERE e.id > ? AND e.id <= ? AND {self._PRUNABLE}"
            " ORDER BY e.id LIMIT ?", [after_id, up_to_id, limit]).fetchall()]
        if not ids:
            return 0, up_to_id
        with self._atomic():
            self.db.execute("CREATE TEMP TABLE IF NOT EXISTS _prune(id INTEGER PRIMARY KEY)")
            self.db.execute("DELETE FROM _prune")
            self.db.conn.executemany("INSERT INTO _prune VALUES (?)", [(i,) for i in ids])
            self.unindex_pruned()  # the text search forgets them before they go
            self.db.execute(
                "DELETE FROM attempts WHERE delivery_id IN (SELECT d.id FROM deliveries d"
                " JOIN _prune p ON p.id = d.event_id)")
            self.db.execute("DELETE FROM deliveries WHERE event_id IN (SELECT id FROM _prune)")
            self.db.execute("DELETE FROM routes WHERE event_id IN (SELECT id FROM _prune)")
            self.db.execute("DELETE FROM events WHERE duplicate_of IN (SELECT id FROM _prune)")
            deleted = self.db.execute(
                "DELETE FROM events WHERE id IN (SELECT id FROM _prune)").rowcount
            self.db.execute("DELETE FROM _prune")
        return deleted, ids[-1]

    def prune_rejections(self, cutoff: float, limit: int) -> int:
        """Delete up to ``limit`` rejections received before ``cutoff``; returns how many."""
        return self.db.execute(
            "DELETE FROM rejections WHERE id IN (SELECT id FROM rejections"
            " WHERE received_at < ? ORDER BY id LIMIT ?)", [cutoff, limit]).rowcount

    def size(self) -> tuple[int, int]:
        """``(bytes in use, bytes free inside the file)``."""
        page_size = self.db.execute("PRAGMA page_size").fetchone()[0]
        pages = self.db.execute("PRAGMA page_count").fetchone()[0]
        free = self.db.execute("PRAGMA freelist_count").fetchone()[0]
        return (pages - free) * page_size, free * page_size

    def reclaim(self, pages: int) -> int:
        """Give up to ``pages`` free pages back to the file system; returns how many are left.

        Does nothing on a database without incremental auto-vacuum.
        """
        free = int(self.db.execute("PRAGMA freelist_count").fetchone()[0])
        # Python's sqlite3 steps a statement without result columns once, and each
        # step of incremental_vacuum frees one page: hence one statement per page.
        for _ in range(min(pages, free)):
            self.db.conn.execute("PRAGMA incremental_vacuum(1)").close()
        return int(self.db.execute("PRAGMA freelist_count").fetchone()[0])

    # --- secrets ----------------------------------------------------------------

    def put_secret(self, name: str, value: bytes) -> None:
        self.db.execute(
            "INSERT INTO secrets (name, value, updated_at) VALUES (?, ?, ?)"
            " ON CONFLICT(name) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at",
            [name, value, time.time()],
        )

    def get_secret(self, name: str) -> bytes | None:
        row = self.one("SELECT value FROM secrets WHERE name = ?", [name])
        return bytes(row["value"]) if row else None

    def secret_names(self) -> list[dict[str, Any]]:
        return self.rows("SELECT name, updated_at FROM secrets ORDER BY name")

    def delete_secret(self, name: str) -> bool:
        return self.db.execute("DELETE FROM secrets WHERE name = ?", [name]).rowcount > 0

    # --- users and sessions (the web UI) -------------------------------------------

    def user(self, name: str) -> dict[str, Any] | None:
        return self.one("SELECT * FROM users WHERE name = ?", [name])

    def users(self) -> list[dict[str, Any]]:
        return self.rows("SELECT name, created_at, updated_at FROM users ORDER BY name")

    def put_user(self, name: str, password_hash: str) -> None:
        """Add the user, or set a new password (which ends all their sessions)."""
        now = time.time()
        with self._writing():
            self.db.execute(
                "INSERT INTO users (name, password_hash, created_at, updated_at) VALUES (?, ?, ?, ?)"
                " ON CONFLICT(name) DO UPDATE SET password_hash = excluded.password_hash,"
                " updated_at = excluded.updated_at",
                [name, password_hash, now, now])
            self.db.execute("DELETE FROM sessions WHERE user = ?", [name])

    def delete_user(self, name: str) -> bool:
        with self._writing():
            self.db.execute("DELETE FROM sessions WHERE user = ?", [name])
            return self.db.execute("DELETE FROM users WHERE name = ?", [name]).rowcount > 0

    def add_session(self, token_hash: str, user: str, csrf_token: str, expired_before: float) -> None:
        now = time.time()
        self.db.execute("DELETE FROM sessions WHERE seen_at < ?", [expired_before])
        self.db.execute(
            "INSERT INTO sessions (token_hash, user, csrf_token, created_at, seen_at)"
            " VALUES (?, ?, ?, ?, ?)", [token_hash, user, csrf_token, now, now])

    def session(self, token_hash: str) -> dict[str, Any] | None:
        return self.one("SELECT * FROM sessions WHERE token_hash = ?", [token_hash])

    def touch_session(self, token_hash: str) -> None:
        self.db.execute("UPDATE sessions SET seen_at = ? WHERE token_hash = ?", [time.time(), token_hash])

    def delete_session(self, token_hash: str) -> None:
        self.db.execute("DELETE FROM sessions WHERE token_hash = ?", [token_hash])

    # --- text search (the log's) -----------------------------------------------------

    #: Events added to the text search per call: one FTS5 segment, bounded memory.
    INDEX_BATCH = 500

    def index_for_search(self, limit: int = INDEX_BATCH) -> int:
        """Add routed events not yet in the text search, oldest first; returns how many.

        The index holds every routed event but redeliveries (``events_searchable``)
        and is filled in id order up to the oldest event still waiting for the
        router, so the highest id it holds says where the next batch starts. Done
        in batches, apart from storing and routing: one segment for many events
        instead of one per commit (bench/: a third of ingest's time went here).
        In the server it runs on a connection of its own, in a thread (``Router``):
        one statement, so SQLite does the work without holding Python's lock, on the
        other core, and the writer waits only for its lock.
        """
        conn = self.db.conn
        with self._writing():
            last = conn.execute("SELECT COALESCE(MAX(id), 0) FROM events_fts_docsize").fetchone()[0]
            waiting = conn.execute(
                "SELECT MIN(id) FROM events WHERE routed_at IS NULL").fetchone()[0]
            return int(conn.execute(
                "INSERT INTO events_fts (rowid, body) SELECT id, body FROM events"
                " WHERE id > ? AND id < ? AND status != 'duplicate' ORDER BY id LIMIT ?",
                [last, waiting if waiting is not None else 2**62, limit]).rowcount)

    def unindex_pruned(self) -> None:
        """Take the events about to be pruned (``_prune``, and their redeliveries) out of
        the text search.

        FTS5 removes an entry only when told the body it indexed; an event the index
        does not hold (no row in its docsize table) is left alone, as "removing" it
        would corrupt the index.
        """
        self.db.execute(
            "INSERT INTO events_fts (events_fts, rowid, body) SELECT 'delete', e.id, e.body"
            " FROM events e JOIN events_fts_docsize s ON s.id = e.id"
            " WHERE e.id IN (SELECT id FROM _prune) OR e.duplicate_of IN (SELECT id FROM _prune)")



class Readers:
    """A few read-only connections for the web UI, used from worker threads.

    WAL lets them read while the writer commits; running the query in a thread
    keeps a slow page from holding up the event loop (and so ingest).
    """

    def __init__(self, path: Path | str, size: int = 2) -> None:
        self.path = path
        self._idle: queue.SimpleQueue[Store] = queue.SimpleQueue()
        self._slots = threading.BoundedSemaphore(size)
        self._all: list[Store] = []

    async def run(self, fn: Callable[[Store], T]) -> T:
        return await asyncio.to_thread(self._call, fn)

    def _call(self, fn: Callable[[Store], T]) -> T:
        with self._slots:
            try:
                store = self._idle.get_nowait()
            except queue.Empty:
                store = Store(self.path)
                self._all.append(store)
            try:
                return fn(store)
            finally:
                if store.db.conn.in_transaction:
                    store.db.conn.rollback()
                self._idle.put(store)

    def close(self) -> None:
        for store in self._all:
            store.close()
        self._all.clear()


class _Job:
    __slots__ = ("fn", "future", "loop", "savepoint")

    def __init__(self, fn: Callable[[Store], Any], future: asyncio.Future[Any],
                 loop: asyncio.AbstractEventLoop, savepoint: bool) -> None:
        self.fn = fn
        self.future = future
        self.loop = loop
        self.savepoint = savepoint


def _settle(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if future.done():  # the caller went away (client disconnected): nothing to tell
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


class Writer:
    """The one writer to SQLite, with group commit, on the event loop's own thread.

    ``await writer.run(fn)`` queues ``fn(store)``. The jobs queued by the next turn of
    the event loop (or, while a flush is under way, until it ends) run together in one
    transaction, each in its own savepoint so that one failing job does not undo the
    others. The transaction commits with ``synchronous = NORMAL`` (the WAL is written,
    not yet on the disk); a thread of its own then flushes the WAL to the disk
    (``fdatasync``), and only then is each caller told its result: what a caller is told
    is committed survives a crash and a power cut. One transaction and one flush per
    round, however many jobs; a round that wrote nothing (reads) is told at once.

    Why not a thread for the writer: every SQLite statement hands Python's lock
    between that thread and the busy event loop, and under load those hand-overs, not
    SQLite, took most of the time (README, Performance). Here only the flush leaves the
    loop's thread, once per round. The price: a job holds up the event loop while it
    runs, so every job is short (its caller bounds it: at most a few hundred rows).
    Nothing leaves relay before its round is flushed: a 2xx waits for it, and a
    delivery is sent only once its claim (a job, after its event and routing) is.

    The jobs of every event loop run on one of them (the first to use the writer), so a
    job from another thread's loop is handed over to it.

    The write lock held elsewhere (another process) is waited for without stopping the
    loop: the transaction is tried again every ``BUSY_RETRY`` seconds, and the jobs fail
    with ``StorageUnavailable`` after ``BUSY_TIMEOUT``. A job that asked
    ``Store.writable()`` gets False, not an error, when its transaction cannot commit.
    """

    MAX_BATCH = 256
    BUSY_TIMEOUT = 30.0
    BUSY_RETRY = 0.002

    def __init__(self, path: Path | str) -> None:
        self.store = Store(path)
        db = self.store.db
        # SQLite must never wait for the lock itself: that would stop the event loop.
        db.execute("PRAGMA busy_timeout = 0")
        wal = db.execute("PRAGMA journal_mode").fetchone()[0].lower() == "wal"
        # Without WAL (a filesystem that cannot share memory), SQLite's own FULL stays.
        self._wal = _WalFlusher(self.store.path) if wal else None
        if self._wal is not None:
            db.execute("PRAGMA synchronous = NORMAL")
        self._pending: list[_Job] = []
        self._scheduled: asyncio.AbstractEventLoop | None = None
        self._locked_since: float | None = None
        self._flushing = False
        self._home: asyncio.AbstractEventLoop | None = None  # the loop whose thread runs the jobs

    async def run(self, fn: Callable[[Store], T], *, savepoint: bool = True) -> T:
        """:raises StorageUnavailable: when the transaction cannot commit.

        ``savepoint=False`` only for a job of one writing statement (reads aside),
        which SQLite undoes by itself when it fails (``Store.insert_event``).
        A transaction that wrote nothing (reads only) is not flushed.
        """
        loop = asyncio.get_running_loop()
        home = self._home
        if home is not None and home is not loop and home.is_running():
            # The connection is that loop's (another thread's): the job joins its rounds.
            return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(
                self.run(fn, savepoint=savepoint), home))
        self._home = loop  # the first loop to use it, or the next once that one has stopped
        future: asyncio.Future[T] = loop.create_future()
        self._pending.append(_Job(fn, future, loop, savepoint))
        self._kick(loop)
        return await future

    def _kick(self, loop: asyncio.AbstractEventLoop) -> None:
        """Run the queued jobs at the loop's next turn, unless that is planned already or
        a WAL flush is under way: then once it is done, so that the jobs queued
        meanwhile share one transaction. (Committing them sooner would not tell anyone
        sooner: only a flush begun after a commit makes it durable. And a hot page, an
        index's say, is written to the WAL once for them all, not once each.)"""
        if self._scheduled is None and not self._flushing and self._pending:
            self._scheduled = loop
            loop.call_soon(self._flush)

    def close(self) -> None:
        """Run what is still queued, wait for the flushes, and close the database."""
        self.store.db.execute(f"PRAGMA busy_timeout = {int(self.BUSY_TIMEOUT * 1000)}")
        outcomes: list[_Outcome] = []
        while self._pending:
            batch, self._pending = self._pending[:self.MAX_BATCH], self._pending[self.MAX_BATCH:]
            outcomes += self._run_batch(batch, self._begin())
        if self._wal is not None:
            self._wal.close()  # after the flush under way, if any
            outcomes = self._flush_failed(outcomes, self._wal.flush_now())
        _tell(outcomes)
        self.store.close()

    def _flush(self) -> None:
        loop, self._scheduled = self._scheduled, None
        if not self._pending or loop is None or self._flushing:
            return
        began = self._begin()
        if began is not None and getattr(began.__cause__, "sqlite_errorcode", None) == sqlite3.SQLITE_BUSY:
            now = time.monotonic()
            if self._locked_since is None:
                self._locked_since = now
            if now - self._locked_since < self.BUSY_TIMEOUT:
                self._scheduled = loop
                loop.call_later(self.BUSY_RETRY, self._flush)
                return
        self._locked_since = None
        batch, self._pending = self._pending[:self.MAX_BATCH], self._pending[self.MAX_BATCH:]
        changes = self.store.db.conn.total_changes
        try:
            outcomes = self._run_batch(batch, began)
        except Exception as e:  # a bug here must not leave the jobs waiting forever
            log.exception("the writer failed on a batch")
            with contextlib.suppress(sqlite3.Error):
                if self.store.db.conn.in_transaction:
                    self.store.db.execute("ROLLBACK")
            failure = StorageUnavailable(f"the database cannot be written: {e}")
            outcomes = [(job, None, failure, False) for job in batch]
        if (self._wal is None or began is not None
                or self.store.db.conn.total_changes == changes):  # failed, or wrote nothing
            _tell(outcomes)
            self._kick(loop)
            return
        # No other round starts until this flush is done (_kick), so these are the only
        # outcomes waiting for it.
        self._flushing = True
        self._wal.flush(loop, functools.partial(self._flushed, loop, outcomes))

    def _flushed(self, loop: asyncio.AbstractEventLoop, outcomes: list[_Outcome],
                 error: OSError | None) -> None:
        self._flushing = False
        _tell(self._flush_failed(outcomes, error))
        self._kick(loop)

    @staticmethod
    def _flush_failed(outcomes: list[_Outcome], error: OSError | None) -> list[_Outcome]:
        """The outcomes as callers are told them, when the flush failed with ``error``."""
        if error is None:
            return outcomes
        log.error("could not flush the database's WAL to the disk: %s", error)
        failure = StorageUnavailable(f"the database cannot be written to the disk: {error}")
        return [(job, False, None, True) if probe else
                (job, None, failure if err is None else err, False)
                for job, _, err, probe in outcomes]

    def _begin(self) -> StorageUnavailable | None:
        try:
            self.store.db.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as e:
            error = StorageUnavailable(f"the database cannot be written: {e}")
            error.__cause__ = e
            return error
        return None

    @staticmethod
    def _undo(results: list[tuple[Any, BaseException | None]], probes: list[bool], start: int,
              cause: BaseException | str) -> None:
        """The jobs from ``start`` on lost their work: tell them (a probe: not writable)."""
        failure = StorageUnavailable(f"the database cannot be written: {cause}")
        for i in range(start, len(results)):
            if probes[i]:
                results[i] = (False, None)
            elif results[i][1] is None:
                results[i] = (None, failure)

    def _run_batch(self, batch: list[_Job], failure: StorageUnavailable | None) -> list[_Outcome]:
        """Run the jobs in the transaction just begun (or not: ``failure``) and commit."""
        db = self.store.db
        results: list[tuple[Any, BaseException | None]] = []
        probes: list[bool] = []  # which jobs asked Store.writable()
        opened = 0  # results[opened:] are the jobs of the open transaction
        for job in batch:
            if failure is not None:  # no transaction could be opened: the job does not run
                results.append((None, failure))
                probes.append(False)
                continue
            self.store.probed = False
            outcome: tuple[Any, BaseException | None]
            try:
                # A savepoint: a failing job undoes only itself.
                with self.store._atomic(savepoint=job.savepoint):
                    outcome = (job.fn(self.store), None)
            except Exception as e:  # the job's own error goes back to its caller
                outcome = (None, e)
            results.append(outcome)
            probes.append(self.store.probed)
            if not db.conn.in_transaction:
                # SQLite rolled the whole transaction back, as it may when the disk is
                # full: the jobs before this one in it are undone too. The next jobs get
                # a transaction of their own, never autocommit.
                self._undo(results, probes, opened,
                           results[-1][1] or "SQLite rolled the transaction back")
                opened = len(results)
                failure = self._begin()
        if failure is None:
            try:
                db.execute("COMMIT")
            except sqlite3.Error as e:
                try:
                    db.execute("ROLLBACK")
                except sqlite3.Error:
                    pass
                self._undo(results, probes, opened, e)
        outcomes: list[_Outcome] = []
        for job, (result, error), probe in zip(batch, results, probes, strict=True):
            if isinstance(error, sqlite3.Error):
                error = StorageUnavailable(f"the database cannot be written: {error}")
            outcomes.append((job, result, error, probe))
        return outcomes


#: A job, its result, its error, and whether it asked ``Store.writable()``.
_Outcome = tuple[_Job, Any, BaseException | None, bool]


def _tell(outcomes: list[_Outcome]) -> None:
    """Settle each job's future, on its own event loop."""
    here = _running_loop()
    for job, result, error, _ in outcomes:
        if job.loop is here:
            _settle(job.future, result, error)
        else:
            with contextlib.suppress(RuntimeError):  # that loop is closed: nobody waits
                job.loop.call_soon_threadsafe(_settle, job.future, result, error)


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


class _WalFlusher:
    """``fdatasync`` of a database's WAL file, on a thread of its own.

    SQLite in WAL mode appends every commit to the ``-wal`` file; once that file's
    data is on the disk, the commit is (``synchronous = FULL`` does exactly this
    inside the commit). The file is opened again whenever SQLite has made a new one.
    """

    def __init__(self, db: Path) -> None:
        self.path = f"{db}-wal"
        self._fd: int | None = None
        self._inode: int | None = None
        self._jobs: queue.SimpleQueue[tuple[asyncio.AbstractEventLoop,
                                            Callable[[OSError | None], None]] | None] = (
            queue.SimpleQueue())
        self._thread = threading.Thread(target=self._loop, name="relay-wal-flush", daemon=True)
        self._thread.start()

    def flush(self, loop: asyncio.AbstractEventLoop, then: Callable[[OSError | None], None]) -> None:
        """Flush on the thread; ``then(error or None)`` is called on ``loop`` afterwards."""
        self._jobs.put((loop, then))

    def flush_now(self) -> OSError | None:
        try:
            try:
                inode = os.stat(self.path).st_ino
            except FileNotFoundError:
                # No WAL: SQLite moved every commit into the database file (and synced
                # it) and removed it.
                return None
            if self._fd is None or inode != self._inode:
                if self._fd is not None:
                    os.close(self._fd)
                    self._fd = None
                self._fd = os.open(self.path, os.O_RDONLY)
                self._inode = os.fstat(self._fd).st_ino
            os.fdatasync(self._fd)
        except OSError as e:
            return e
        return None

    def close(self) -> None:
        self._jobs.put(None)
        self._thread.join(timeout=30)
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def _loop(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            loop, then = job
            error = self.flush_now()
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits
                loop.call_soon_threadsafe(then, error)
