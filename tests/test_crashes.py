"""Killed at random moments (issue 6): ``relay serve`` is SIGKILLed again and again
under a load of signed webhooks, and restarted on the same database each time.

relay runs as a real OS process (``RelayProcess``). Each round starts it, lets a
``Load`` from test_durability (several threads, each event re-sent after a transport
error, as a platform would) post a fresh batch of Quicket webhooks, and kills it with
SIGKILL at a moment drawn from a fixed seed: while webhooks arrive, while they are
routed, while deliveries are on the wire. Two recipes split the events by their
reference (even last digit to sink A, odd to sink B), so routing matters.

At the end, after one last start: every event that ever got a 2xx reached its sink
(duplicates allowed, with the same Idempotency-Key), none reached the other sink, and
each stored event was routed once.
"""

from __future__ import annotations

import collections
import json
import random
import time
from pathlib import Path
from typing import Any

import pytest
from test_durability import Load, complete, db_rows, quiet, relay_env

from conftest import RelayProcess, Reply, Sink, free_port, wait_until, write_recipe, write_sources

pytestmark = pytest.mark.slow

ROUNDS = 20
PER_ROUND = 200  # events each round's load posts: a second or two of load
SEED = 20250614


class RoundLoad(Load):
    """A ``Load`` of the events numbered ``start`` to ``start + count - 1``."""

    def __init__(self, url: str, start: int, count: int, **kwargs: Any) -> None:
        self.start = start  # before Load.__init__, which submits the posts
        super().__init__(url, count, **kwargs)

    def post(self, n: int) -> None:
        super().post(self.start + n)


def digits(parity: int) -> str:
    return " || ".join(f"ends_with(reference, '{d}')" for d in range(parity, 10, 2))


def write_config(tmp_path: Path, even: Sink, odd: Sink) -> None:
    folder = tmp_path / "recipes"
    write_sources(folder)
    for name, sink, parity in (("even", even, 0), ("odd", odd, 1)):
        write_recipe(folder, name, f"""\
source: quicket
events: ["checkout_completed"]
when: "{digits(parity)}"
fields:
  reference: reference
  email: email
to:
  - type: http
    url: {sink.url}/{name}
""")


def received(sink: Sink) -> collections.Counter[str]:
    """How many whole requests the sink received per reference (a kill tears some)."""
    return collections.Counter(r.json()["reference"] for r in complete(sink))


def parity(reference: str) -> int:
    return int(reference[-1]) % 2


def test_sigkill_at_random_moments_loses_and_misroutes_nothing(tmp_path: Path) -> None:
    rng = random.Random(SEED)
    sinks = {0: quiet(Sink()), 1: quiet(Sink())}
    for sink in sinks.values():
        sink.default = Reply(delay=0.05)  # deliveries are on the wire when the kill comes
    loads: list[RoundLoad] = []
    kills: list[dict[str, Any]] = []
    relay: RelayProcess | None = None
    started = time.monotonic()
    try:
        write_config(tmp_path, sinks[0], sinks[1])
        env = relay_env(tmp_path)
        port = free_port()
        for round_ in range(ROUNDS):
            relay = RelayProcess(tmp_path, port, env)
            loads.append(RoundLoad(relay.url, round_ * PER_ROUND, PER_ROUND, workers=4,
                                   deadline=300))
            moment = rng.uniform(0.05, 2.0)
            time.sleep(moment)
            relay.kill()  # SIGKILL: no shutdown code runs at all
            relay = None
            [left] = db_rows(tmp_path / "relay.db",
                             "SELECT (SELECT COUNT(*) FROM events) AS events,"
                             " (SELECT COUNT(*) FROM events WHERE routed_at IS NULL) AS unrouted,"
                             " (SELECT COUNT(*) FROM deliveries WHERE status IN ('pending', 'sending'))"
                             " AS queued")
            kills.append({"after": round(moment, 2), **left, "this_round": loads[-1].answered})
        relay = RelayProcess(tmp_path, port, env)  # the last start: everything settles
        for load in loads:
            load.finish()
        ok = set().union(*(load.ok for load in loads))
        wanted = {p: {r for r in ok if parity(r) == p} for p in (0, 1)}
        wait_until(lambda: all(wanted[p] <= set(received(sinks[p])) for p in (0, 1)),
                   timeout=180, interval=0.2)
        wait_until(lambda: db_rows(tmp_path / "relay.db", "SELECT COUNT(*) AS n FROM deliveries"
                                   " WHERE status != 'delivered'")[0]["n"] == 0, timeout=60)
        time.sleep(0.5)  # give a stray extra delivery the chance to show up too
    finally:
        for load in loads:
            load.close()
        if relay is not None:
            relay.terminate()
        for sink in sinks.values():
            sink.close()

    counts = {p: received(sinks[p]) for p in (0, 1)}
    posted = sum(load.count for load in loads)
    statuses: collections.Counter[str] = collections.Counter()
    for load in loads:
        statuses.update(load.statuses)
    total = sum(sum(c.values()) for c in counts.values())
    unique = sum(len(c) for c in counts.values())
    torn = sum(len(s.received) - len(complete(s)) for s in sinks.values())
    print(f"\ncrashes: {ROUNDS} rounds of SIGKILL in {time.monotonic() - started:.0f} s; "
          f"posted {posted} events, {len(ok)} got a 2xx {dict(statuses)}, "
          f"{sum(load.transport_errors for load in loads)} transport errors re-sent; sinks "
          f"received {total} deliveries: {unique} unique, {total - unique} duplicates, plus "
          f"{torn} torn requests cut off by a kill")
    print("kills: " + "; ".join(
        f"#{i + 1} at {k['after']} s: {k['this_round']} of the round's {PER_ROUND} answered, "
        f"{k['events']} events stored, "
        f"{k['unrouted']} unrouted, {k['queued']} deliveries queued" for i, k in enumerate(kills)))

    assert all(load.answered == load.count for load in loads)
    # Kills landed at different stages: with webhooks unrouted, and deliveries queued.
    assert any(k["unrouted"] > 0 for k in kills) or any(k["queued"] > 0 for k in kills), kills
    for p in (0, 1):
        missing = wanted[p] - set(counts[p])
        assert not missing, f"{len(missing)} acknowledged events lost, e.g. {sorted(missing)[:5]}"
        wrong = {r for r in counts[p] if parity(r) != p}
        assert not wrong, f"sink {'AB'[p]} received events routed elsewhere: {sorted(wrong)[:5]}"
        # a repeated delivery is the same delivery: the receiver can drop it by its key
        keys: dict[str, set[str]] = collections.defaultdict(set)
        for request in complete(sinks[p]):
            keys[request.json()["reference"]].add(request.headers["idempotency-key"])
        assert all(len(k) == 1 for k in keys.values()), \
            [r for r, k in keys.items() if len(k) > 1][:5]
    everything = {f"DUR-{n:05d}" for n in range(ROUNDS * PER_ROUND)}
    assert set(counts[0]) | set(counts[1]) <= everything  # nothing that was never posted

    db = tmp_path / "relay.db"
    stored = [json.loads(bytes(e["body"]))["reference"]
              for e in db_rows(db, "SELECT body FROM events WHERE status != 'duplicate'")]
    assert len(stored) == len(set(stored))  # one event per reference, however often re-sent
    assert ok <= set(stored)
    # Each event routed once, by the recipe its reference says; one delivery per route.
    twice = db_rows(db, "SELECT event_id, recipe FROM routes GROUP BY event_id, recipe"
                        " HAVING COUNT(*) > 1")
    assert twice == [], twice[:5]
    routes = db_rows(db, "SELECT e.body, r.recipe, r.outcome FROM routes r"
                         " JOIN events e ON e.id = r.event_id")
    for row in routes:
        reference = json.loads(bytes(row["body"]))["reference"]
        queued = "even" if parity(reference) == 0 else "odd"
        assert row["outcome"] == ("queued" if row["recipe"] == queued else "filtered"), row
    [row] = db_rows(db, "SELECT COUNT(*) AS n FROM deliveries")
    assert row["n"] == len(stored)
