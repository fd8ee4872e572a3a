"""The delivery worker: claim due deliveries, send them, record every attempt.

Deliveries live in SQLite, so the queue survives restarts. A claimed delivery is
marked ``sending``; if relay dies mid-send it goes back to ``pending`` at the next
start and is sent again (at-least-once: receivers dedupe on ``Idempotency-Key``).

After a failed attempt: a retryable failure waits ``retry_base * 2^(n-1)`` seconds
(capped at ``retry_max_delay``, with jitter so that a recovering destination is
not hit by every queued delivery at once), or exactly what ``Retry-After`` asked;
a permanent failure, or a delivery older than ``max_age``, is ``dead`` until a
person replays it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import itertools
import json
import logging
import random
import time
from collections.abc import Callable
from typing import Any

import httpx

from .destinations import DeliveryContext, Destination, Sent
from .errors import DeliveryFailed, RelayError
from .metrics import Metrics
from .recipes import Recipes
from .settings import Settings
from .store import Store, Writer

log = logging.getLogger("relay.delivery")


def backoff(attempt: int, settings: Settings, rng: random.Random | None = None) -> float:
    """Seconds to wait after failed attempt number ``attempt`` (1-based)."""
    rng = rng or random.Random()
    ceiling = min(settings.retry_max_delay, settings.retry_base * 2 ** min(attempt - 1, 30))
    return ceiling * rng.uniform(0.5, 1.0)


def human_duration(seconds: float) -> str:
    """``90`` -> ``1.5 min``, ``86400`` -> ``24 h``."""
    if seconds < 120:
        return f"{seconds:g} s"
    if seconds < 7200:
        return f"{seconds / 60:g} min"
    return f"{seconds / 3600:g} h"


def find_destination(recipes: Recipes, delivery: dict[str, Any]) -> Destination:
    """The destination a delivery goes to, from the recipes as they are now.

    :raises DeliveryFailed: retryable while the recipe has an error (the user may be
        fixing it); permanent when the recipe or the destination is gone.
    """
    recipe = recipes.get(delivery["recipe"])
    if recipe is None:
        raise DeliveryFailed(
            f"the recipe {delivery['recipe']!r} no longer exists. Restore it and replay, "
            "if this delivery should still be sent.", retryable=False)
    if recipe.error is not None:
        raise DeliveryFailed(
            f"the recipe {recipe.name!r} has an error, so relay is holding this delivery until "
            f"it is fixed: {recipe.error.located()}", retryable=True)
    if not recipe.enabled:
        raise DeliveryFailed(
            f"the recipe {recipe.name!r} is turned off (enabled: false). Turn it on and replay.",
            retryable=False)
    index = delivery["destination"]
    if index >= len(recipe.to) or recipe.to[index].type != delivery["dest_type"]:
        raise DeliveryFailed(
            f"the recipe {recipe.name!r} no longer has this {delivery['dest_type']} destination "
            f"(number {index + 1} in `to:`). Replay after restoring it.", retryable=False)
    return recipe.to[index]


@dataclasses.dataclass
class Lane:
    """The deliveries of one recipe's destination: first due, first sent.

    A hold (the destination said "wait") is kept in the database: see ``Store.hold_lane``.
    """

    in_flight: int = 0


@dataclasses.dataclass
class Result:
    """How one attempt of one delivery ended, ready to record."""

    outcome: str  # delivered, retry, dead
    status_code: int | None = None
    headers: dict[str, str] | None = None
    body: str | None = None
    error: str | None = None
    next_at: float | None = None
    hold: bool = False  # the destination asked for a wait: the whole lane waits


class Deliverer:
    """Runs deliveries: at most ``settings.concurrency`` batches at a time overall,
    and per lane at most its destination's ``max_in_flight``."""

    PER_LANE = 200  # due deliveries looked at per lane each round
    SCAN = 5000  # ... and in all
    RESCAN = 0.25  # seconds a scan's rows not started yet are started from (step)

    def __init__(self, writer: Writer, recipes: Callable[[], Recipes], settings: Settings,
                 client: httpx.AsyncClient, metrics: Metrics | None = None) -> None:
        self.writer = writer
        self.metrics = metrics or Metrics()
        self.recipes = recipes
        self.settings = settings
        self.client = client
        self.wake = asyncio.Event()
        self.in_flight: set[asyncio.Task[None]] = set()
        self.lanes: dict[tuple[str, int], Lane] = {}
        self.rng = random.Random()
        self._due: dict[tuple[str, int], list[dict[str, Any]]] = {}  # scanned, not started yet
        self._scanned = 0.0  # time.monotonic() of that scan

    async def run(self) -> None:
        await self.writer.run(lambda s: s.requeue_interrupted())
        while True:
            try:
                await self.step()
            except Exception:  # e.g. the database is briefly unwritable: keep going
                log.exception("the delivery loop failed; trying again in a second")
                await asyncio.sleep(1.0)

    async def step(self) -> None:
        """Start what can start now, then wait for a slot, a due time or new work."""
        free = self.settings.concurrency - len(self.in_flight)
        if free <= 0:
            await self._wait(1.0)
            return
        now = time.time()
        recipes = self.recipes()
        # A scan reads every due delivery (a backlog's 10,000 too): its rows not started
        # yet are started from for up to RESCAN seconds, instead of a scan each time a
        # slot frees up. Claiming checks that each is still pending; a lane told to wait
        # drops its rows (_finish), so a hold is kept as if scanned again.
        age = time.monotonic() - self._scanned
        if not self._due or age >= self.RESCAN or self._short(recipes):
            rows = await self.writer.run(functools.partial(
                Store.due_by_lane, now=now, per_lane=self.PER_LANE, limit=self.SCAN))
            self._due = {}
            for row in rows:
                self._due.setdefault((row["recipe"], row["destination"]), []).append(row)
            self._scanned, age = time.monotonic(), 0.0
        plans: list[tuple[tuple[str, int], Destination | None, DeliveryFailed | None,
                          list[dict[str, Any]]]] = []
        for key, items in self._due.items():
            lane = self.lanes.setdefault(key, Lane())
            unusable: DeliveryFailed | None = None
            try:
                destination: Destination | None = find_destination(recipes, items[0])
                assert destination is not None
                size, lane_limit = max(1, destination.batch_size), max(1, destination.max_in_flight)
            except DeliveryFailed as failure:  # the recipe is broken or gone
                destination, size, lane_limit = None, len(items), 1
                unusable = failure
            planned = 0
            while items and free > 0 and lane.in_flight + planned < lane_limit:
                plans.append((key, destination, unusable, items[:size]))
                del items[:size]
                planned += 1
                free -= 1
        self._due = {key: items for key, items in self._due.items() if items}
        started = 0
        if plans:  # one claim (one trip to the writer) for every batch starting now
            ids = await self.writer.run(functools.partial(
                Store.claim, ids=[d["id"] for *_, batch in plans for d in batch]), savepoint=False)
            for key, destination, unusable, batch in plans:
                batch = [d for d in batch if d["id"] in ids]
                if not batch:
                    continue
                if destination is not None:
                    work = self.attempt_batch(key, destination, batch)
                else:
                    assert unusable is not None
                    work = self.fail_batch(key, batch, unusable)
                self.lanes[key].in_flight += 1
                started += 1
                task = asyncio.create_task(work)
                self.in_flight.add(task)
                task.add_done_callback(self._done)
        if started:
            return
        if self._due:  # due work, but its lanes are busy: wait for a slot, or the next scan
            wait = min(1.0, self.RESCAN - age)
        else:
            due = await self.writer.run(lambda s: s.next_due_at())
            wait = 1.0 if due is None else min(1.0, due - now)
        await self._wait(max(0.01, wait))

    def _short(self, recipes: Recipes) -> bool:
        """Has a lane with room fewer rows from the last scan than a whole batch? Then
        scan again: what was queued since goes in the same batch."""
        for key, items in self._due.items():
            try:
                destination = find_destination(recipes, items[0])
            except DeliveryFailed:
                continue
            lane = self.lanes.get(key) or Lane()
            if (lane.in_flight < max(1, destination.max_in_flight)
                    and len(items) < max(1, destination.batch_size)):
                return True
        return False

    async def _wait(self, seconds: float) -> None:
        self.wake.clear()
        try:
            await asyncio.wait_for(self.wake.wait(), timeout=seconds)
        except TimeoutError:
            pass

    def _done(self, task: asyncio.Task[None]) -> None:
        self.in_flight.discard(task)
        self.wake.set()
        if not task.cancelled() and task.exception() is not None:
            log.error("delivery task failed", exc_info=task.exception())

    def _context(self, delivery: dict[str, Any]) -> DeliveryContext:
        return DeliveryContext(
            client=self.client, delivery_id=delivery["id"], event_id=delivery["event_id"],
            idempotency_key=delivery["idempotency_key"], attempt=int(delivery["attempts"]) + 1,
            timeout=self.settings.delivery_timeout,
        )

    async def attempt_batch(self, key: tuple[str, int], destination: Destination,
                            batch: list[dict[str, Any]]) -> None:
        """One attempt of each delivery in ``batch``, recorded whatever happens."""
        started = time.time()
        try:
            # Each request has its own timeout; this bounds the whole attempt (a
            # destination may make several requests, and wait for its pacer).
            # (asyncio.timeout, not wait_for: no second task for every delivery.)
            async with asyncio.timeout(self.settings.delivery_timeout * 4 + 60):
                outcomes: list[Sent | DeliveryFailed] = await destination.send_batch(
                    [json.loads(d["payload"]) for d in batch], [self._context(d) for d in batch])
            if len(outcomes) != len(batch):
                raise RuntimeError(f"{destination.type} gave {len(outcomes)} outcomes for {len(batch)}")
        except DeliveryFailed as failure:
            outcomes = [failure] * len(batch)
        except TimeoutError:
            outcomes = [DeliveryFailed("the destination took too long; relay will retry",
                                       retryable=True)] * len(batch)
        except Exception as e:  # a bug in a destination must not lose the deliveries
            log.exception("destination %s crashed", destination.type)
            outcomes = [DeliveryFailed(
                f"relay hit an internal error sending this: {type(e).__name__}: {e}",
                retryable=True)] * len(batch)
        self.metrics.attempt_took(destination.type, time.time() - started)
        await self._finish(key, batch, outcomes, started)

    async def fail_batch(self, key: tuple[str, int], batch: list[dict[str, Any]],
                         failure: DeliveryFailed) -> None:
        await self._finish(key, batch, [failure] * len(batch), time.time())

    async def _finish(self, key: tuple[str, int], batch: list[dict[str, Any]],
                      outcomes: list[Sent | DeliveryFailed], started: float) -> None:
        lane = self.lanes.setdefault(key, Lane())
        try:
            duration = time.time() - started
            results = [self._result(d, o) for d, o in zip(batch, outcomes, strict=True)]
            # A destination that says "wait" (429, Retry-After) means the whole account:
            # hold the lane so that nothing overtakes what must be retried. Other
            # failures (a 500 on one record) hold only themselves, or one poison record
            # would stall every sale behind it.
            holds = [r.next_at for r in results if r.hold and r.next_at]
            if holds:  # what the last scan found of this lane waits too
                self._due.pop(key, None)
            await self._record(batch, results, started, duration,
                               hold=(key, max(holds)) if holds else None)
            now = time.time()
            for delivery, result in zip(batch, results, strict=True):
                self.metrics.attempted(delivery["dest_type"], result.outcome,
                                       float(delivery["queued_at"]), now)
        finally:
            lane.in_flight -= 1

    def _result(self, delivery: dict[str, Any], outcome: Sent | DeliveryFailed) -> Result:
        if isinstance(outcome, Sent):
            return Result("delivered", outcome.status_code, outcome.headers,
                          outcome.body or outcome.note)
        state, next_at, error = self._after_failure(
            delivery, int(delivery["attempts"]) + 1, outcome, outcome.message)
        return Result(state, outcome.status_code, outcome.response_headers or None,
                      outcome.response_body, error, next_at,
                      hold=state == "retry" and outcome.retry_after is not None)

    async def _record(self, batch: list[dict[str, Any]], results: list[Result], started: float,
                      duration: float, hold: tuple[tuple[str, int], float] | None = None) -> None:
        def record(store: Store) -> None:
            for delivery, r in zip(batch, results, strict=True):
                store.record_attempt(
                    delivery["id"], number=int(delivery["attempts"]) + 1, started_at=started,
                    duration=duration, outcome=r.outcome, status_code=r.status_code, error=r.error,
                    response_headers=r.headers, response_body=r.body, next_attempt_at=r.next_at)
            if hold is not None:
                (recipe, destination), until = hold
                store.hold_lane(recipe, destination, until)

        # Until the database takes it (the disk may be full for a while): given up, the
        # deliveries would stay 'sending', never tried again before the next start. If
        # relay stops first, the next start queues them again (at-least-once).
        wait = 1.0
        for tries in itertools.count(1):
            try:
                await self.writer.run(record)
                if tries > 1:
                    log.info("recorded the attempts of deliveries %s after %d tries",
                             [d["id"] for d in batch], tries)
                return
            except RelayError as e:
                if tries == 1:
                    log.error("could not record the attempts of deliveries %s (%s); retrying",
                              [d["id"] for d in batch], e.message)
                await asyncio.sleep(wait)
                wait = min(wait * 2, 10.0)

    def _after_failure(self, delivery: dict[str, Any], number: int, failure: DeliveryFailed,
                       error: str) -> tuple[str, float | None, str]:
        if not failure.retryable:
            return "dead", None, error
        now = time.time()
        deadline = float(delivery["queued_at"]) + self.settings.max_age
        if now >= deadline:
            return "dead", None, (f"gave up after {human_duration(self.settings.max_age)} of "
                                  f"retries; last error: {error}")
        if failure.retry_after is not None:
            # Honour the destination's wait, but try once more at the deadline rather
            # than give up early because it asked for longer than relay keeps trying.
            wait = min(failure.retry_after, deadline - now)
        else:
            wait = backoff(number, self.settings, self.rng)
            if now + wait > deadline:
                return "dead", None, (f"gave up after {human_duration(self.settings.max_age)} of "
                                      f"retries; last error: {error}")
        return "retry", now + wait, error

    async def drain(self, timeout: float) -> None:
        """Wait (bounded) for in-flight attempts, e.g. at shutdown."""
        if self.in_flight:
            await asyncio.wait(set(self.in_flight), timeout=timeout)

