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
import functools
import json
import logging
import random
import time
from collections.abc import Callable
from typing import Any

import httpx

from .destinations import DeliveryContext, Destination
from .errors import DeliveryFailed, RelayError
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


class Deliverer:
    """Runs deliveries, at most ``settings.concurrency`` at a time."""

    def __init__(self, writer: Writer, recipes: Callable[[], Recipes], settings: Settings,
                 client: httpx.AsyncClient) -> None:
        self.writer = writer
        self.recipes = recipes
        self.settings = settings
        self.client = client
        self.wake = asyncio.Event()
        self.in_flight: set[asyncio.Task[None]] = set()
        self.rng = random.Random()

    async def run(self) -> None:
        await self.writer.run(lambda s: s.requeue_interrupted())
        while True:
            try:
                await self.step()
            except Exception:  # e.g. the database is briefly unwritable: keep going
                log.exception("the delivery loop failed; trying again in a second")
                await asyncio.sleep(1.0)

    async def step(self) -> None:
        """Claim what is due and start sending it, or wait for something to do."""
        free = self.settings.concurrency - len(self.in_flight)
        claimed: list[dict[str, Any]] = []
        if free > 0:
            claimed = await self.writer.run(functools.partial(Store.claim_due, limit=free))
            for delivery in claimed:
                task = asyncio.create_task(self.attempt(delivery))
                self.in_flight.add(task)
                task.add_done_callback(self._done)
        if claimed and len(claimed) == free:
            # Full: wait for a slot, not for the clock.
            self.wake.clear()
            await self.wake.wait()
            return
        if claimed:
            return
        await self._sleep_until_due()

    def _done(self, task: asyncio.Task[None]) -> None:
        self.in_flight.discard(task)
        self.wake.set()
        if not task.cancelled() and task.exception() is not None:
            log.error("delivery task failed", exc_info=task.exception())

    async def _sleep_until_due(self) -> None:
        due = await self.writer.run(lambda s: s.next_due_at())
        wait = 1.0 if due is None else min(1.0, max(0.0, due - time.time()))
        self.wake.clear()
        if wait > 0:
            try:
                await asyncio.wait_for(self.wake.wait(), timeout=wait)
            except TimeoutError:
                pass

    async def attempt(self, delivery: dict[str, Any]) -> None:
        """One attempt of one delivery, recorded whatever happens."""
        number = int(delivery["attempts"]) + 1
        started = time.time()
        status_code: int | None = None
        headers: dict[str, str] | None = None
        body: str | None = None
        error: str | None = None
        next_at: float | None = None
        try:
            destination = find_destination(self.recipes(), delivery)
            ctx = DeliveryContext(
                client=self.client, delivery_id=delivery["id"], event_id=delivery["event_id"],
                idempotency_key=delivery["idempotency_key"], attempt=number,
                timeout=self.settings.delivery_timeout,
            )
            sent = await asyncio.wait_for(
                destination.send(json.loads(delivery["payload"]), ctx),
                # The destination's own timeout bounds each request; this bounds the
                # whole attempt (a destination may make several requests).
                timeout=self.settings.delivery_timeout * 2 + 5,
            )
            outcome = "delivered"
            status_code, headers, body = sent.status_code, sent.headers, sent.body or sent.note
        except DeliveryFailed as failure:
            status_code, headers, body = (failure.status_code, failure.response_headers or None,
                                          failure.response_body)
            error = failure.message
            outcome, next_at, error = self._after_failure(delivery, number, failure, error)
        except TimeoutError:
            error = "the destination took too long; relay will retry"
            outcome, next_at, error = self._after_failure(
                delivery, number, DeliveryFailed(error, retryable=True), error)
        except Exception as e:  # a bug in a destination must not lose the delivery
            log.exception("destination crashed on delivery %s", delivery["id"])
            error = f"relay hit an internal error sending this: {type(e).__name__}: {e}"
            outcome, next_at, error = self._after_failure(
                delivery, number, DeliveryFailed(error, retryable=True), error)
        duration = time.time() - started

        def record(store: Store) -> None:
            store.record_attempt(
                delivery["id"], number=number, started_at=started, duration=duration,
                outcome=outcome, status_code=status_code, error=error, response_headers=headers,
                response_body=body, next_attempt_at=next_at)

        for tries_left in range(5, 0, -1):
            try:
                await self.writer.run(record)
                return
            except RelayError:
                if tries_left == 1:
                    # Left 'sending': the next start queues it again (at-least-once).
                    log.error("could not record attempt %d of delivery %s", number, delivery["id"])
                    raise
                await asyncio.sleep(1.0)

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

