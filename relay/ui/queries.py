"""The web UI's queries over the log: lists, an event's page, the dashboard's figures.

``LogQueries`` is part of ``Store`` (relay/store.py), kept here because only the
UI asks these questions. Every list is newest first and paged by id (keyset: "id <
the last one shown", never OFFSET), and every filter either uses an index or bounds
the ids it reads, so a page costs the same with a million events as with a hundred.
The text search reads ``events_fts``, which the router fills in batches as events
are routed (``Store.index_for_search``): an event is found within a second or so.
"""

from __future__ import annotations

import contextlib
import sqlite3
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sqlite_utils import Database


class LogQueries:
    """The log's and the dashboard's queries (a part of ``Store``)."""

    if TYPE_CHECKING:  # provided by Store
        db: Database

        def rows(self, sql: str, params: Sequence[Any] | dict[str, Any] = ()) -> list[dict[str, Any]]: ...
        def one(self, sql: str, params: Sequence[Any] | dict[str, Any] = ()) -> dict[str, Any] | None: ...
        def _writing(self) -> contextlib.AbstractContextManager[None]: ...
        def replay(self, *, delivery_id: int | None = None, source: str | None = None,
                   recipe: str | None = None, since: float | None = None,
                   now: float | None = None) -> list[int]: ...

    EVENT_STATUSES = ("accepted", "duplicate", "ignored")
    # What the log calls a delivery's status. "pending" waits for its first attempt,
    # "retrying" failed at least once and will be tried again (either may be sending).
    DELIVERY_STATUSES = {
        "pending": "d.status IN ('pending', 'sending') AND d.attempts = 0",
        "retrying": "d.status IN ('pending', 'sending') AND d.attempts > 0",
        "delivered": "d.status = 'delivered'",
        "dead": "d.status = 'dead'",
    }
    _EVENT_COLUMNS = ("e.id, e.source, e.type, e.status, e.is_test, e.duplicate_of, e.received_at,"
                      " length(e.body) AS size")
    _DELIVERY_COLUMNS = (
        "d.id, d.event_id, d.recipe, d.destination, d.dest_type, d.item_index, d.status, d.attempts,"
        " d.queued_at, d.next_attempt_at, d.updated_at, d.delivered_at, d.last_error,"
        " d.last_status_code, d.reviewed_at, e.source, e.type AS event_type")

    @staticmethod
    def match_query(text: str | None) -> str | None:
        """The user's words as a safe FTS5 query; None when there is nothing to search for.

        Each word is quoted, so FTS5 syntax in it is plain text and an email address
        is the phrase of its parts ("ann example com"). The last word also matches as
        the start of a word, as people type. All words must match.
        """
        words = [w[:100] for w in (text or "").split() if any(c.isalnum() for c in w)][:12]
        if not words:
            return None
        query = " ".join('"' + w.replace('"', '""') + '"' for w in words)
        # Not for one or two letters, nor an email address (typed whole): every word that
        # starts with "r" (or, in an address, "com") would be read from the index.
        last = words[-1]
        return query + "*" if len(last) > 2 and "@" not in last else query



    def first_event_since(self, since: float) -> int | None:
        """The id of the first event received at or after ``since`` (None: none since).

        Ids grow with time, so "received since" becomes "id >= this", which stops a
        newest-first scan there instead of at the end of the table.
        """
        row = self.one("SELECT id FROM events WHERE received_at >= ? ORDER BY received_at LIMIT 1",
                       [since])
        return int(row["id"]) if row else None

    def _keyset(self, select: str, where: list[str], params: list[Any], key: str,
                before: int | None, after: int | None, limit: int) -> tuple[list[dict[str, Any]], bool]:
        """One page, newest first, and whether more rows lie beyond it in the direction read.

        ``before`` reads older rows than that id; ``after`` reads newer ones.
        """
        where, params = list(where), list(params)
        if before is not None:
            where.append(f"{key} < ?")
            params.append(before)
        if after is not None:
            where.append(f"{key} > ?")
            params.append(after)
        upward = after is not None and before is None
        found = self.rows(f"{select} WHERE {' AND '.join(where) or '1'}"
                          f" ORDER BY {key} {'ASC' if upward else 'DESC'} LIMIT ?", [*params, limit + 1])
        page = found[:limit]
        return (page[::-1] if upward else page), len(found) > limit

    def log_events(
        self, *, source: str | None = None, recipe: str | None = None, status: str | None = None,
        since: float | None = None, search: str | None = None, before: int | None = None,
        after: int | None = None, limit: int = 50,
    ) -> tuple[list[dict[str, Any]], bool]:
        """A page of events received (see ``_keyset``)."""
        where: list[str] = []
        params: list[Any] = []
        if source:
            where.append("e.source = ?")
            params.append(source)
        if status in self.EVENT_STATUSES:
            where.append("e.status = ?")
            params.append(status)
        if recipe:
            where.append("EXISTS (SELECT 1 FROM routes r WHERE r.event_id = e.id AND r.recipe = ?)")
            params.append(recipe)
        if since is not None:
            first = self.first_event_since(since)
            if first is None:
                return [], False
            where += ["e.id >= ?", "e.received_at >= ?"]
            params += [first, since]
        match = self.match_query(search)
        select, key = f"SELECT {self._EVENT_COLUMNS} FROM events e", "e.id"
        if match and status == "duplicate":  # redeliveries are found through their original
            where.append("e.duplicate_of IN (SELECT rowid FROM events_fts WHERE events_fts MATCH ?)")
            params.append(match)
        elif match:
            # The index gives its matches newest first and stops at the page's end.
            select = f"SELECT {self._EVENT_COLUMNS} FROM events_fts CROSS JOIN events e ON e.id = events_fts.rowid"
            key = "events_fts.rowid"
            where.append("events_fts MATCH ?")
            params.append(match)
        return self._keyset(select, where, params, key, before, after, limit)

    def _delivery_filter(
        self, *, source: str | None, recipe: str | None, status: str | None, since: float | None,
        by_event: bool = False,
    ) -> tuple[str, list[str], list[Any]] | None:
        """FROM and WHERE of the log's deliveries, with their event (None: nothing can match).

        ``by_event``: the query names its events (``d.event_id IN (...)``, a search's
        batch), so the deliveries are found through their event, not by scanning.
        """
        where: list[str] = []
        params: list[Any] = []
        if source:
            where.append("e.source = ?")
            params.append(source)
        if recipe:
            where.append("d.recipe = ?")
            params.append(recipe)
        if status in self.DELIVERY_STATUSES:
            where.append(self.DELIVERY_STATUSES[status])
        if since is not None:
            first = self.first_event_since(since)
            if first is None:
                return None
            # Events are routed in order, so their deliveries' ids grow with time too.
            first_delivery = self.one("SELECT id FROM deliveries WHERE event_id >= ?"
                                      " ORDER BY event_id, id LIMIT 1", [first])
            if first_delivery is None:
                return None
            where += ["d.id >= ?", "d.event_id >= ?", "e.received_at >= ?"]
            params += [first_delivery["id"], first, since]
        # The dead ones have their own index, in id order; left to itself, SQLite reads
        # them through deliveries_due and sorts them all.
        table = ("deliveries d INDEXED BY deliveries_event" if by_event
                 else "deliveries d INDEXED BY deliveries_dead" if status == "dead" else "deliveries d")
        return f"{table} CROSS JOIN events e ON e.id = d.event_id", where, params

    def log_deliveries(
        self, *, source: str | None = None, recipe: str | None = None, status: str | None = None,
        since: float | None = None, search: str | None = None, before: int | None = None,
        after: int | None = None, limit: int = 50,
    ) -> tuple[list[dict[str, Any]], bool]:
        """A page of deliveries, with their event's source and type (see ``_keyset``)."""
        match = self.match_query(search)
        found = self._delivery_filter(source=source, recipe=recipe, status=status, since=since,
                                      by_event=match is not None)
        if found is None:
            return [], False
        tables, where, params = found
        if match:
            return self._searched_deliveries(tables, where, params, match, before, after, limit)
        return self._keyset(f"SELECT {self._DELIVERY_COLUMNS} FROM {tables}", where, params, "d.id",
                            before, after, limit)

    def _searched_deliveries(
        self, tables: str, where: list[str], params: list[Any], match: str, before: int | None,
        after: int | None, limit: int,
    ) -> tuple[list[dict[str, Any]], bool]:
        """A page of deliveries whose event matches ``match``.

        The index hands over matching event ids newest first, in growing batches, and
        only each batch's deliveries are read. A delivery's id grows with its event's,
        so the page comes out in id order, and reading stops once it is full (sorting
        every match first would take seconds for a common word).
        """
        upward = after is not None and before is None
        cursor = after if upward else before
        sign, order = (">", "ASC") if upward else ("<", "DESC")
        resume_op, resume_at = sign, None  # where the index starts: past the cursor's event
        if cursor is not None:
            where, params = [*where, f"d.id {sign} ?"], [*params, cursor]
            row = self.one("SELECT event_id FROM deliveries WHERE id = ?", [cursor])
            if row:  # the cursor's own event may have more deliveries beyond it
                resume_op, resume_at = f"{sign}=", int(row["event_id"])
        near = f" AND rowid {resume_op} ?" if resume_at is not None else ""
        # One query read in growing batches: FTS5 merges a prefix's words once per query.
        matches = self.db.conn.execute(
            f"SELECT rowid FROM events_fts WHERE events_fts MATCH ?{near} ORDER BY rowid {order}",
            [match, *([resume_at] if near else [])])
        found: list[dict[str, Any]] = []
        size = 100
        try:
            while len(found) <= limit:
                ids = [int(r[0]) for r in matches.fetchmany(size)]
                if not ids:
                    break
                found += self.rows(
                    f"SELECT {self._DELIVERY_COLUMNS} FROM {tables} WHERE "
                    + " AND ".join([*where, f"d.event_id IN ({','.join('?' * len(ids))})"])
                    + f" ORDER BY d.id {order}", [*params, *ids])
                size = min(size * 4, 5000)
        finally:
            matches.close()
        page = found[:limit]
        return (page[::-1] if upward else page), len(found) > limit

    #: Seconds the log page gives counting the dead deliveries its filter matches. A
    #: search for the start of a common name can match a quarter of a big log; past
    #: this the page offers to replay them all without saying how many.
    COUNT_BUDGET = 0.05

    def count_dead_matching(self, *, budget: float | None = None, source: str | None = None,
                            recipe: str | None = None, since: float | None = None,
                            search: str | None = None) -> int | None:
        """How many ids ``dead_matching`` gives; None when counting them took longer
        than ``budget`` seconds (SQLite stops the query)."""
        deadline = time.monotonic() + (self.COUNT_BUDGET if budget is None else budget)
        conn = self.db.conn
        conn.set_progress_handler(lambda: time.monotonic() > deadline, 100)
        try:
            return len(self.dead_matching(source=source, recipe=recipe, since=since, search=search))
        except sqlite3.OperationalError as e:
            if e.sqlite_errorcode != sqlite3.SQLITE_INTERRUPT:
                raise
            return None
        finally:
            conn.set_progress_handler(None, 0)

    def dead_matching(self, *, source: str | None = None, recipe: str | None = None,
                      since: float | None = None, search: str | None = None) -> list[int]:
        """The ids of the dead deliveries the log shows with these filters."""
        found = self._delivery_filter(source=source, recipe=recipe, status="dead", since=since)
        if found is None:
            return []
        tables, where, params = found
        match = self.match_query(search)
        if match:
            where = [*where, "d.event_id IN (SELECT rowid FROM events_fts WHERE events_fts MATCH ?)"]
            params = [*params, match]
        return [int(r["id"]) for r in self.rows(
            f"SELECT d.id FROM {tables} WHERE {' AND '.join(where) or '1'} ORDER BY d.id", params)]

    def replay_still_dead(self, ids: Sequence[int], now: float | None = None) -> list[int]:
        """Replay those of ``ids`` that are still dead; returns them.

        A bulk replay goes through here in batches, so webhooks arriving meanwhile
        are committed between two batches; one replayed by someone else since it
        was listed is left alone.
        """
        now = time.time() if now is None else now
        with self._writing():
            marks = ",".join("?" * len(ids))
            dead = [int(r["id"]) for r in self.rows(  # "+status": by the ids (Store.claim)
                f"SELECT id FROM deliveries WHERE +status = 'dead' AND id IN ({marks})", list(ids))]
            for delivery_id in dead:
                self.replay(delivery_id=delivery_id, now=now)
        return dead

    def progress(self, ids: Sequence[int]) -> dict[str, int]:
        """How many of these deliveries are delivered, dead, retrying or pending now."""
        counts = {"delivered": 0, "dead": 0, "retrying": 0, "pending": 0}
        for start in range(0, len(ids), 500):
            chunk = list(ids[start:start + 500])
            for row in self.rows(
                    "SELECT CASE WHEN status IN ('delivered', 'dead') THEN status"
                    " WHEN attempts > 0 THEN 'retrying' ELSE 'pending' END AS state, COUNT(*) AS n"
                    f" FROM deliveries WHERE id IN ({','.join('?' * len(chunk))}) GROUP BY state", chunk):
                counts[row["state"]] += row["n"]
        return counts

    def log_rejections(
        self, *, source: str | None = None, since: float | None = None, search: str | None = None,
        before: int | None = None, after: int | None = None, limit: int = 50,
    ) -> tuple[list[dict[str, Any]], bool]:
        """A page of refused requests (a bounded table: a plain scan is cheap)."""
        where: list[str] = []
        params: list[Any] = []
        if source:
            where.append("source = ?")
            params.append(source)
        if since is not None:
            where.append("received_at >= ?")
            params.append(since)
        for word in (search or "").split()[:12]:
            where.append("(instr(lower(reason), ?) > 0 OR instr(lower(CAST(body_prefix AS TEXT)), ?) > 0)")
            params += [word.lower(), word.lower()]
        select = ("SELECT id, source, received_at, status_code, reason, body_size, client"
                  " FROM rejections")
        return self._keyset(select, where, params, "id", before, after, limit)

    def event_outcomes(self, ids: Sequence[int]) -> dict[int, dict[str, int]]:
        """Per event: its deliveries by log status, and its recipes that filtered or failed."""
        found: dict[int, dict[str, int]] = {i: {} for i in ids}
        if not ids:
            return found
        marks = ",".join("?" * len(ids))
        for row in self.rows(
                "SELECT event_id, CASE WHEN status IN ('delivered', 'dead') THEN status"
                " WHEN attempts > 0 THEN 'retrying' ELSE 'pending' END AS state, COUNT(*) AS n"
                f" FROM deliveries WHERE event_id IN ({marks}) GROUP BY event_id, state", list(ids)):
            found[row["event_id"]][row["state"]] = row["n"]
        for row in self.rows(
                "SELECT event_id, outcome, COUNT(*) AS n FROM routes"
                f" WHERE event_id IN ({marks}) AND outcome != 'queued' GROUP BY event_id, outcome",
                list(ids)):
            found[row["event_id"]][row["outcome"]] = row["n"]
        return found

    def event_page(self, event_id: int) -> dict[str, Any] | None:
        """An event with its recipes' outcomes, its deliveries and each one's attempts."""
        event = self.one("SELECT * FROM events WHERE id = ?", [event_id])
        if event is None:
            return None
        deliveries = self.rows("SELECT * FROM deliveries WHERE event_id = ? ORDER BY id", [event_id])
        attempts: dict[int, list[dict[str, Any]]] = {d["id"]: [] for d in deliveries}
        for attempt in self.rows(
                "SELECT a.* FROM attempts a JOIN deliveries d ON d.id = a.delivery_id"
                " WHERE d.event_id = ? ORDER BY a.delivery_id, a.number, a.id", [event_id]):
            attempts[attempt["delivery_id"]].append(attempt)
        for delivery in deliveries:
            delivery["attempt_rows"] = attempts[delivery["id"]]
        return {
            "event": event,
            "routes": self.rows("SELECT * FROM routes WHERE event_id = ? ORDER BY id", [event_id]),
            "deliveries": deliveries,
            "duplicates": self.rows("SELECT id, received_at FROM events WHERE duplicate_of = ?"
                                    " ORDER BY id LIMIT 100", [event_id]),
        }

    def rejection(self, rejection_id: int) -> dict[str, Any] | None:
        return self.one("SELECT * FROM rejections WHERE id = ?", [rejection_id])

    # The dashboard's counts.

    def _first_id_at(self, table: str, column: str, since: float) -> int:
        """The first id of ``table`` whose ``column`` (a time that grows with the id) is at
        or after ``since``: a binary search, as these tables have no index on the time."""
        # Two queries: SQLite reads only one end of the table for a lone MIN or MAX.
        low = self.one(f"SELECT MIN(id) AS id FROM {table}")
        high = self.one(f"SELECT MAX(id) AS id FROM {table}")
        if not low or not high or low["id"] is None:
            return 0
        lo, hi = int(low["id"]), int(high["id"]) + 1
        while lo < hi:
            mid = (lo + hi) // 2
            row = self.one(f"SELECT id, {column} AS t FROM {table} WHERE id >= ? ORDER BY id LIMIT 1",
                           [mid])
            if row is None or row["t"] >= since:
                hi = mid
            else:
                lo = int(row["id"]) + 1
        return lo

    def hourly(self, start: float, hours: int) -> dict[str, list[int]]:
        """Per hour from ``start``: events received, and deliveries that were delivered or
        died (by the hour of their final attempt)."""
        series = {name: [0] * hours for name in ("events", "delivered", "dead")}

        def add(name: str, hour: int, count: int) -> None:
            if 0 <= hour < hours:
                series[name][hour] += count

        for row in self.rows(
                "SELECT CAST((received_at - ?) / 3600 AS INTEGER) AS hour, COUNT(*) AS n"
                " FROM events WHERE received_at >= ? GROUP BY hour", [start, start]):
            add("events", row["hour"], row["n"])
        first = self._first_id_at("attempts", "started_at", start)
        for row in self.rows(
                "SELECT CAST((started_at - ?) / 3600 AS INTEGER) AS hour, outcome, COUNT(*) AS n"
                " FROM attempts WHERE id >= ? AND started_at >= ? AND outcome IN ('delivered', 'dead')"
                " GROUP BY hour, outcome", [start, first, start]):
            add(row["outcome"], row["hour"], row["n"])
        return series

    def queue_state(self) -> dict[str, Any]:
        """Deliveries waiting, retrying and dead, and the one waiting longest."""
        state = self.one(
            "SELECT COALESCE(SUM(attempts = 0), 0) AS pending, COALESCE(SUM(attempts > 0), 0) AS retrying"
            " FROM deliveries WHERE status IN ('pending', 'sending')") or {}
        dead = self.one("SELECT COUNT(*) AS dead, COALESCE(SUM(reviewed_at IS NULL), 0) AS unreviewed"
                        " FROM deliveries WHERE status = 'dead'") or {}
        oldest = self.one(
            "SELECT id, event_id, recipe, dest_type, attempts, queued_at, next_attempt_at, last_error"
            " FROM deliveries WHERE status IN ('pending', 'sending') ORDER BY queued_at LIMIT 1")
        return {**state, **dead, "oldest": oldest}

    def rejections_by_source(self, since: float, limit: int = 10) -> list[dict[str, Any]]:
        """Requests refused since ``since``, per source, with the latest one's reason."""
        return self.rows(
            "SELECT r.source, g.n, r.id, r.reason, r.status_code, r.received_at FROM"
            " (SELECT source, COUNT(*) AS n, MAX(id) AS latest FROM rejections"
            "  WHERE received_at >= ? GROUP BY source) g JOIN rejections r ON r.id = g.latest"
            " ORDER BY g.n DESC, r.source LIMIT ?", [since, limit])

    def recipe_failures(self, since: float, limit: int = 20) -> list[dict[str, Any]]:
        """Recipes that failed on events since ``since``, with the latest event and message."""
        first = self._first_id_at("routes", "created_at", since)
        return self.rows(
            "SELECT r.recipe, g.n, r.event_id, r.message, r.created_at FROM"
            " (SELECT recipe, COUNT(*) AS n, MAX(id) AS latest FROM routes"
            "  WHERE id >= ? AND created_at >= ? AND outcome = 'error' GROUP BY recipe) g"
            " JOIN routes r ON r.id = g.latest ORDER BY g.n DESC, r.recipe LIMIT ?",
            [first, since, limit])
