"""Fill a relay database fast with events as a relay long in service would hold.

Rows go in with ``executemany`` in a few large transactions, on a real ``Store``
(so the schema is the real one, migrations applied).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from relay.store import Store

BODY = json.dumps({"reference": "OLD", "attendee": {"name": "A. Person", "email": "a@example.com"},
                   "notes": "x" * 300}).encode()


def fill(db: Path, count: int, *, received_from: float, step: float = 0.01,
         chunk: int = 50_000) -> None:
    """``count`` routed events of source ``old`` from ``received_from`` on, each with one
    delivered delivery, its attempt and its route."""
    store = Store(db)
    try:
        conn = store.db.conn
        for start in range(0, count, chunk):
            ids = range(start + 1, min(start + chunk, count) + 1)
            with store.db.atomic():
                conn.executemany(
                    "INSERT INTO events (id, source, platform, type, dedup_key, status, is_test,"
                    " received_at, headers, body, routed_at) VALUES"
                    " (?, 'old', 'quicket', 'checkout_completed', ?, 'accepted', 0, ?, '{}', ?, ?)",
                    [(i, f"k{i}", received_from + i * step, BODY, received_from + i * step)
                     for i in ids])
                conn.executemany(
                    "INSERT INTO routes (event_id, recipe, outcome, deliveries, created_at)"
                    " VALUES (?, 'attendees', 'queued', 1, ?)",
                    [(i, received_from + i * step) for i in ids])
                conn.executemany(
                    "INSERT INTO deliveries (id, event_id, recipe, destination, dest_type, payload,"
                    " status, attempts, queued_at, next_attempt_at, updated_at, delivered_at,"
                    " idempotency_key) VALUES (?, ?, 'attendees', 0, 'http', '{\"ref\":\"OLD\"}',"
                    " 'delivered', 1, ?, ?, ?, ?, ?)",
                    [(i, i, *(received_from + i * step,) * 4, f"idem{i}") for i in ids])
                conn.executemany(
                    "INSERT INTO attempts (delivery_id, number, started_at, duration, outcome,"
                    " status_code, response_body) VALUES (?, 1, ?, 0.05, 'delivered', 200, 'ok')",
                    [(i, received_from + i * step) for i in ids])
    finally:
        store.close()


def set_delivery(db: Path, event_id: int, status: str, *, reviewed: bool = False) -> None:
    """Give event ``event_id``'s delivery another state (never due: the deliverer leaves it)."""
    store = Store(db)
    try:
        store.db.execute(
            "UPDATE deliveries SET status = ?, delivered_at = NULL, next_attempt_at = ?,"
            " reviewed_at = ? WHERE event_id = ?",
            [status, time.time() + 10 * 86400, time.time() if reviewed else None, event_id])
    finally:
        store.close()


def file_size(db: Path) -> int:
    """The database's bytes on disk, its WAL included."""
    wal = db.with_name(db.name + "-wal")
    return db.stat().st_size + (wal.stat().st_size if wal.exists() else 0)
