"""Retention: old events go, so that relay can run for years without filling the disk.

Kept for ``RELAY_RETENTION``: events with their routes, deliveries and attempts,
and rejections. After that an event goes only when nothing still needs it: it was
routed and each of its deliveries was delivered, or died and a person reviewed it
(dismissed or replayed it). A delivery still pending, being sent, or dead and not
reviewed keeps its event, however old. When the database is still bigger than
``RELAY_MAX_DB_SIZE``, the oldest prunable events go too, retention or not.

Pruning runs through the writer in small batches with a pause between them, so
webhooks arriving meanwhile are committed between two batches rather than after
the whole prune. Freed pages go back to the file system with incremental vacuum,
in small steps for the same reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import sqlite3
import time
from pathlib import Path

from .settings import Settings
from .store import Store, Writer

log = logging.getLogger("relay.retention")


@dataclasses.dataclass
class Pruned:
    events: int = 0
    beyond_retention: int = 0  # of ``events``, those pruned only to fit RELAY_MAX_DB_SIZE
    rejections: int = 0
    size_before: int = 0  # bytes in use
    size_after: int = 0


class Retention:
    """The background task that prunes and reclaims space, every ``interval`` seconds."""

    def __init__(self, writer: Writer, settings: Settings, *, batch: int = 500,
                 pause: float = 0.02, vacuum_pages: int = 1000, interval: float = 600.0) -> None:
        self.writer = writer
        self.settings = settings
        self.batch = batch
        self.pause = pause
        self.vacuum_pages = vacuum_pages
        self.interval = interval

    async def run(self) -> None:
        while True:
            try:
                pruned = await self.prune()
                if pruned.events or pruned.rejections:
                    log.info("pruned %d events (%d only for RELAY_MAX_DB_SIZE) and %d rejections;"
                             " %d MiB in use", pruned.events, pruned.beyond_retention,
                             pruned.rejections, pruned.size_after // 2**20)
                if pruned.size_after > self.settings.max_db_size:
                    log.warning("the database holds %d MiB, over RELAY_MAX_DB_SIZE, but what is"
                                " left is still needed (pending or dead unreviewed deliveries)",
                                pruned.size_after // 2**20)
            except Exception:  # a failed pass is retried at the next one; ingest goes on
                log.exception("pruning failed")
            await asyncio.sleep(self.interval)

    async def prune(self, now: float | None = None) -> Pruned:
        """One pass: retention, then size, then give free pages back."""
        now = time.time() if now is None else now
        cutoff = now - self.settings.retention
        result = Pruned()
        result.size_before = (await self.writer.run(Store.size))[0]
        while True:
            count = await self.writer.run(
                lambda s: s.prune_rejections(cutoff, self.batch))  # noqa: B023
            result.rejections += count
            if count < self.batch:
                break
            await asyncio.sleep(self.pause)
        result.events += await self._prune_events(cutoff, result)
        if (await self.writer.run(Store.size))[0] > self.settings.max_db_size:
            # Over the size limit: the oldest prunable events go, young or not.
            extra = await self._prune_events(now, result, until_size=self.settings.max_db_size)
            result.events += extra
            result.beyond_retention = extra
        await self._reclaim()
        result.size_after = (await self.writer.run(Store.size))[0]
        return result

    async def _prune_events(self, cutoff: float, result: Pruned,
                            until_size: int | None = None) -> int:
        up_to = await self.writer.run(lambda s: s.last_event_before(cutoff))
        after, total = 0, 0
        while after < up_to:
            start = after
            deleted, after = await self.writer.run(
                lambda s: s.prune_events(start, up_to, self.batch))  # noqa: B023
            total += deleted
            if until_size is not None and (await self.writer.run(Store.size))[0] <= until_size:
                break
            await asyncio.sleep(self.pause)
        return total

    async def _reclaim(self) -> None:
        # Bounded: each step frees at most vacuum_pages; a busy writer meanwhile can
        # free more, so stop after as many steps as there were free pages to start with.
        free = await self.writer.run(lambda s: s.reclaim(self.vacuum_pages))
        for _ in range(free // max(self.vacuum_pages, 1) + 1):
            if free == 0:
                break
            await asyncio.sleep(self.pause)
            free = await self.writer.run(lambda s: s.reclaim(self.vacuum_pages))
        # In WAL mode the file shrinks when a checkpoint copies the vacuum back; a
        # passive one never waits for (nor holds up) anyone.
        await asyncio.to_thread(_checkpoint, Path(self.settings.db))


def _checkpoint(path: Path) -> None:
    with contextlib.closing(sqlite3.connect(str(path), timeout=30)) as conn:
        conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
