"""Pacing: keep every request to a vendor account inside that vendor's rate limit.

A ``Pacer`` is a sliding-window limiter: at most ``limit`` requests in any ``per``
seconds, handed out first come, first served, so an on-sale rush goes out in order
of arrival and never meets a 429 storm. When the vendor answers 429 anyway (another
program shares the account), ``pause`` holds every request to that account until
the vendor's window has passed.

Pacers are shared by account: two recipes writing to the same HubSpot portal share
one pacer, because they share one limit.
"""

from __future__ import annotations

import asyncio
import collections
import time


class Pacer:
    def __init__(self, limit: int, per: float) -> None:
        if limit < 1 or per <= 0:
            raise ValueError("a pacer needs limit >= 1 and per > 0")
        self.limit = limit
        self.per = per
        self.sent: collections.deque[float] = collections.deque()
        self.paused_until = 0.0
        self._lock = asyncio.Lock()  # asyncio.Lock wakes waiters in FIFO order

    def _wait_needed(self, now: float) -> float:
        while self.sent and self.sent[0] <= now - self.per:
            self.sent.popleft()
        wait = max(0.0, self.paused_until - now)
        if len(self.sent) >= self.limit:
            wait = max(wait, self.sent[0] + self.per - now)
        return wait

    async def acquire(self) -> None:
        """Wait until one more request fits in the window, then count it."""
        async with self._lock:
            while True:
                now = time.monotonic()
                wait = self._wait_needed(now)
                if wait <= 0:
                    self.sent.append(now)
                    return
                # A small margin: the vendor's clock starts counting a little later.
                await asyncio.sleep(wait + 0.01)

    def pause(self, seconds: float) -> None:
        """Hold every request to this account for ``seconds`` (after a 429)."""
        self.paused_until = max(self.paused_until, time.monotonic() + seconds)


class Pacers:
    """The pacers of one running relay, by account; kept across recipe reloads."""

    def __init__(self) -> None:
        self._pacers: dict[tuple[str, int, float], Pacer] = {}

    def get(self, account: str, limit: int, per: float) -> Pacer:
        """The shared pacer of ``account`` (an id that must not contain a secret)."""
        key = (account, limit, per)
        pacer = self._pacers.get(key)
        if pacer is None:
            pacer = self._pacers[key] = Pacer(limit, per)
        return pacer
