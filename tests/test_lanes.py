"""Lanes and pacing: order of arrival holds, rate limits hold, nothing is lost."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from pathlib import Path

from conftest import RelayServer, Reply, Sink, sample, wait_until, write_recipe, write_sources
from relay.destinations.pacing import Pacer

BASE = json.loads(sample("quicket/checkout_completed.json"))


def post(relay: RelayServer, reference: str) -> None:
    body = json.dumps(dict(BASE, reference=reference)).encode()
    response = relay.send("quicket", "quicket", body)
    assert response.status_code == 200, response.text


def recipe(folder: Path, url: str) -> None:
    write_sources(folder)
    write_recipe(folder, "crm", f"""\
source: quicket
events: ["checkout_completed"]
fields:
  reference: reference
to:
  - type: http
    url: {url}
""")


# --- Pacer ----------------------------------------------------------------------


def test_pacer_never_exceeds_its_window() -> None:
    async def run() -> list[float]:
        pacer = Pacer(limit=5, per=0.5)
        times: list[float] = []
        for _ in range(12):
            await pacer.acquire()
            times.append(time.monotonic())
        return times

    times = asyncio.run(run())
    # in any 0.5 s window there are at most 5 acquisitions
    for i in range(len(times) - 5):
        assert times[i + 5] - times[i] >= 0.5


def test_pacer_serves_waiters_in_arrival_order() -> None:
    async def run() -> list[int]:
        pacer = Pacer(limit=1, per=0.05)
        order: list[int] = []

        async def one(n: int) -> None:
            await pacer.acquire()
            order.append(n)

        tasks = []
        for n in range(8):
            tasks.append(asyncio.create_task(one(n)))
            await asyncio.sleep(0)  # each task starts waiting before the next is made
        await asyncio.gather(*tasks)
        return order

    assert asyncio.run(run()) == list(range(8))


def test_pacer_pause_holds_everything() -> None:
    async def run() -> float:
        pacer = Pacer(limit=100, per=1)
        pacer.pause(0.4)
        start = time.monotonic()
        await pacer.acquire()
        return time.monotonic() - start

    assert asyncio.run(run()) >= 0.4


# --- lanes ----------------------------------------------------------------------


def test_a_wait_asked_for_holds_the_lane_in_order(
        make_relay: Callable[..., RelayServer], tmp_path: Path, sink: Sink) -> None:
    """The first delivery is told to wait: the later ones do not overtake it."""
    sink.replies = [Reply(429, b'{"error":"slow down"}', {"Retry-After": "1"})]
    recipe(tmp_path / "recipes", sink.url + "/crm")
    relay = make_relay()
    post(relay, "A")
    wait_until(lambda: len(sink.received) >= 1)
    post(relay, "B")
    post(relay, "C")
    wait_until(lambda: len(sink.received) >= 4)
    time.sleep(0.3)
    order = [r.json()["reference"] for r in sink.received]
    # Nothing overtook the held delivery. (B and C then go out side by side: an http
    # lane sends up to 8 at once; strict order is for one-at-a-time vendor lanes.)
    assert order[:2] == ["A", "A"] and sorted(order[2:]) == ["B", "C"]
    assert sink.received[1].at - sink.received[0].at >= 1.0


def test_a_plain_failure_does_not_hold_the_lane(
        make_relay: Callable[..., RelayServer], tmp_path: Path, sink: Sink) -> None:
    """A 500 on one record (no wait asked) must not stall the sales behind it."""
    sink.replies = [Reply(500, b'{"error":"boom"}')]
    recipe(tmp_path / "recipes", sink.url + "/crm")
    # A's retry is 10 to 20 s away: B surely goes before it, even on a busy machine.
    relay = make_relay(retry_base=20.0, retry_max_delay=20.0)
    post(relay, "A")
    wait_until(lambda: len(sink.received) >= 1)
    post(relay, "B")
    wait_until(lambda: any(r.json()["reference"] == "B" for r in sink.received))
    # B went out while A was still waiting for its retry
    assert [r.json()["reference"] for r in sink.received][:2] == ["A", "B"]
    rows = relay.rows("SELECT status FROM deliveries ORDER BY id")
    assert [r["status"] for r in rows] == ["pending", "delivered"]  # A waits, B is through


def test_a_hold_is_kept_in_the_database(tmp_path: Path) -> None:
    """Deliveries queued during a hold wait for it, then all go in order of arrival."""
    from relay.store import Store

    store = Store(tmp_path / "relay.db")
    try:
        def event() -> int:
            _, event_id = store.insert_event(
                source="quicket", platform="quicket", type="t", dedup_key=str(time.time_ns()),
                is_test=False, headers={}, body=b"{}", matched=True)
            return event_id

        def queue(recipe: str = "crm") -> None:
            store.record_routing(event(), [], [{"recipe": recipe, "destination": 0,
                                                "dest_type": "http", "payload": {}}])

        now = time.time()
        queue()  # id 1: the one the destination told to wait
        queue()  # id 2: queued before the 429
        store.hold_lane("crm", 0, now + 60)
        queue()  # id 3: queued during the hold
        queue("other")  # another recipe's lane is not held
        due_now = store.due_by_lane(time.time(), per_lane=10, limit=10)
        assert [d["recipe"] for d in due_now] == ["other"]
        later = store.due_by_lane(now + 61, per_lane=10, limit=10)
        assert [(d["recipe"], d["id"]) for d in later] == [
            ("other", 4), ("crm", 1), ("crm", 2), ("crm", 3)]
    finally:
        store.close()
