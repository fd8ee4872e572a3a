"""Retries against a real HTTP sink: what is retried, how long relay waits, what is dead.

A destination answering 5xx, 429 or not answering at all is retried (honouring
``Retry-After``); any other 4xx is dead at once, with the destination's answer
kept; a delivery failing for longer than ``max_age`` is given up. Dead
deliveries come back with ``relay replay``, which a running relay picks up.
"""

from __future__ import annotations

import email.utils
import json
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from conftest import RelayServer, Reply, Sink, free_port, quicket_http_recipe, sample, wait_until
from relay.cli import cli
from relay.delivery import backoff
from relay.destinations.base import parse_retry_after
from relay.settings import Settings

BASE = json.loads(sample("quicket/checkout_completed.json"))


def post(relay: RelayServer, reference: str = "R-1") -> int:
    """Post one Quicket checkout; returns the stored event's id."""
    body = json.dumps(dict(BASE, reference=reference)).encode()
    response = relay.send("quicket", "quicket", body)
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "accepted"
    return int(response.json()["event"])


def delivery_of(relay: RelayServer, event_id: int) -> dict[str, Any]:
    [row] = wait_until(lambda: relay.rows("SELECT * FROM deliveries WHERE event_id = ?", [event_id]))
    return row  # type: ignore[no-any-return]


def settled(relay: RelayServer, delivery_id: int, status: str,
            timeout: float = 30) -> dict[str, Any]:
    """Wait for the delivery to reach ``status``; returns its row."""
    def check() -> dict[str, Any] | None:
        [row] = relay.rows("SELECT * FROM deliveries WHERE id = ?", [delivery_id])
        return row if row["status"] == status else None
    return wait_until(check, timeout=timeout)  # type: ignore[no-any-return]



@pytest.fixture
def crm(make_relay: Callable[..., RelayServer], tmp_path: Path, sink: Sink) -> RelayServer:
    quicket_http_recipe(tmp_path / "recipes", f"{sink.url}/crm")
    return make_relay()


# --- retried ----------------------------------------------------------------------


def test_503_twice_then_200(crm: RelayServer, sink: Sink) -> None:
    sink.replies = [Reply(503, b'{"error":"busy"}'), Reply(503, b'{"error":"busy"}')]
    event_id = post(crm)
    delivery = settled(crm, delivery_of(crm, event_id)["id"], "delivered")
    assert crm.rows("SELECT COUNT(*) AS n FROM deliveries") == [{"n": 1}]
    assert delivery["attempts"] == 3
    assert delivery["last_status_code"] == 200 and delivery["last_error"] is None
    tried = crm.attempts(delivery["id"])
    assert [(a["number"], a["outcome"], a["status_code"]) for a in tried] == [
        (1, "retry", 503), (2, "retry", 503), (3, "delivered", 200)]
    assert "503" in tried[0]["error"] and tried[0]["response_body"] == '{"error":"busy"}'
    assert len(sink.received) == 3
    keys = {r.headers["idempotency-key"] for r in sink.received}
    assert len(keys) == 1 and keys == {delivery["idempotency_key"]}
    assert all(r.json() == {"reference": "R-1", "email": BASE["email"]} for r in sink.received)
    # each retry waited: attempt n+1 starts after attempt n plus its backoff (>= base/2)
    for before, after in zip(tried, tried[1:], strict=False):
        assert after["started_at"] >= before["started_at"] + 0.1


def test_429_retry_after_seconds_is_honoured(crm: RelayServer, sink: Sink) -> None:
    sink.replies = [Reply(429, b'{"error":"slow down"}', headers={"Retry-After": "2"})]
    event_id = post(crm)
    delivery = settled(crm, delivery_of(crm, event_id)["id"], "delivered")
    first, second = sink.received
    assert second.at - first.at >= 2.0
    assert [(a["outcome"], a["status_code"]) for a in crm.attempts(delivery["id"])] == [
        ("retry", 429), ("delivered", 200)]


def test_429_retry_after_http_date_is_honoured(crm: RelayServer, sink: Sink) -> None:
    until = int(time.time()) + 3
    sink.replies = [Reply(429, headers={"Retry-After": email.utils.formatdate(until, usegmt=True)})]
    event_id = post(crm)
    settled(crm, delivery_of(crm, event_id)["id"], "delivered")
    first, second = sink.received
    assert second.at >= until
    assert second.headers["idempotency-key"] == first.headers["idempotency-key"]


def test_parse_retry_after() -> None:
    now = 1_750_000_000.0
    assert parse_retry_after("120", now=now) == 120.0
    assert parse_retry_after(" 0 ", now=now) == 0.0
    assert parse_retry_after(email.utils.formatdate(now + 90, usegmt=True), now=now) == 90.0
    # IMF-fixdate with another zone, and the obsolete RFC 850 form (GMT)
    assert parse_retry_after("Sun, 15 Jun 2025 17:08:10 +0200", now=1_750_000_000.0) == 90.0
    assert parse_retry_after("Sunday, 15-Jun-25 15:08:10 GMT", now=1_750_000_000.0) == 90.0
    # a date in the past means "now", never a negative wait
    assert parse_retry_after(email.utils.formatdate(now - 600, usegmt=True), now=now) == 0.0
    assert parse_retry_after("-5", now=now) == 0.0
    for junk in (None, "", "soon", "1.5.2", "Mon, 99 Foo 2025"):
        assert parse_retry_after(junk, now=now) is None


def test_connection_refused_is_retried_not_dead(make_relay: Callable[..., RelayServer],
                                                tmp_path: Path) -> None:
    closed = free_port()  # nothing listens there
    quicket_http_recipe(tmp_path / "recipes", f"http://127.0.0.1:{closed}/crm")
    relay = make_relay()
    event_id = post(relay)
    delivery_id = delivery_of(relay, event_id)["id"]
    tried = wait_until(lambda: (rows := relay.attempts(delivery_id)) and len(rows) >= 3 and rows)
    assert {a["outcome"] for a in tried} == {"retry"}
    assert all(a["status_code"] is None for a in tried)
    assert "could not connect to 127.0.0.1" in tried[0]["error"]
    [row] = relay.rows("SELECT status, last_error FROM deliveries WHERE id = ?", [delivery_id])
    assert row["status"] in ("pending", "sending")
    assert "relay will retry" in row["last_error"]


def test_max_age_gives_up(make_relay: Callable[..., RelayServer], tmp_path: Path,
                          sink: Sink) -> None:
    quicket_http_recipe(tmp_path / "recipes", f"{sink.url}/crm")
    sink.default = Reply(503, b"maintenance")
    relay = make_relay(max_age=1.0)
    event_id = post(relay)
    delivery = settled(relay, delivery_of(relay, event_id)["id"], "dead")
    assert "gave up" in delivery["last_error"]
    assert "HTTP 503" in delivery["last_error"]  # and why it kept failing
    tried = relay.attempts(delivery["id"])
    assert len(tried) >= 2
    assert [a["outcome"] for a in tried] == ["retry"] * (len(tried) - 1) + ["dead"]
    assert {a["status_code"] for a in tried} == {503}
    time.sleep(0.6)
    assert len(relay.attempts(delivery["id"])) == len(tried)  # dead means no more attempts


# --- dead, then replayed ------------------------------------------------------------


def test_400_is_dead_at_once_and_replay_brings_it_back(crm: RelayServer, sink: Sink) -> None:
    error = b'{"error":"email is required","field":"email"}'
    sink.default = Reply(400, error)
    event_id = post(crm)
    delivery = settled(crm, delivery_of(crm, event_id)["id"], "dead")
    assert delivery["attempts"] == 1
    assert delivery["last_status_code"] == 400
    assert delivery["last_error"].startswith("HTTP 400: the destination refused the request")
    [attempt] = crm.attempts(delivery["id"])
    assert attempt["outcome"] == "dead" and attempt["status_code"] == 400
    assert attempt["response_body"] == error.decode()
    assert json.loads(attempt["response_headers"])["content-type"] == "application/json"
    time.sleep(0.6)
    assert len(sink.received) == 1  # dead: not retried on its own

    sink.default = Reply()
    result = CliRunner().invoke(cli, ["replay", str(delivery["id"]), "--db", str(crm.settings.db)])
    assert result.exit_code == 0, result.output
    assert f"1 deliveries queued again: {delivery['id']}" in result.output
    delivery = settled(crm, delivery["id"], "delivered")
    assert delivery["attempts"] == 2 and delivery["last_error"] is None
    assert [(a["number"], a["outcome"], a["status_code"]) for a in crm.attempts(delivery["id"])] == [
        (1, "dead", 400), (2, "delivered", 200)]
    first, second = sink.received
    assert first.headers["idempotency-key"] == second.headers["idempotency-key"]
    assert first.body == second.body


def test_replay_unknown_or_pending_is_a_plain_error(crm: RelayServer) -> None:
    result = CliRunner().invoke(cli, ["replay", "999", "--db", str(crm.settings.db)])
    assert result.exit_code == 1
    assert "delivery 999 was not found" in result.output
    assert "Traceback" not in result.output
    result = CliRunner().invoke(cli, ["replay", "--db", str(crm.settings.db)])
    assert result.exit_code == 2 and "--dead" in result.output


def test_replay_dead_of_one_recipe(make_relay: Callable[..., RelayServer], tmp_path: Path,
                                   sink: Sink) -> None:
    folder = tmp_path / "recipes"
    quicket_http_recipe(folder, f"{sink.url}/crm", name="crm")
    quicket_http_recipe(folder, f"{sink.url}/other", name="other")
    sink.default = Reply(422, b'{"error":"no"}')
    relay = make_relay()
    for n in range(3):
        post(relay, f"R-{n}")
    wait_until(lambda: relay.rows(
        "SELECT COUNT(*) AS n FROM deliveries WHERE status = 'dead'") == [{"n": 6}])

    sink.default = Reply()
    result = CliRunner().invoke(cli, ["replay", "--dead", "--recipe", "crm",
                                      "--db", str(relay.settings.db)])
    assert result.exit_code == 0, result.output
    crm_ids = [r["id"] for r in relay.rows("SELECT id FROM deliveries WHERE recipe = 'crm' ORDER BY id")]
    assert result.output.strip() == f"3 deliveries queued again: {', '.join(map(str, crm_ids))}"
    for delivery_id in crm_ids:
        settled(relay, delivery_id, "delivered")
    time.sleep(0.6)
    assert relay.rows("SELECT recipe, status, COUNT(*) AS n FROM deliveries"
                      " GROUP BY recipe, status ORDER BY recipe") == [
        {"recipe": "crm", "status": "delivered", "n": 3},
        {"recipe": "other", "status": "dead", "n": 3}]
    refs = lambda path: sorted(r.json()["reference"] for r in sink.received if r.path == path)  # noqa: E731
    assert refs("/crm") == ["R-0", "R-0", "R-1", "R-1", "R-2", "R-2"]  # refused, then accepted
    assert refs("/other") == ["R-0", "R-1", "R-2"]  # refused once, still dead
    # nothing dead is left for that recipe: a second replay finds none
    result = CliRunner().invoke(cli, ["replay", "--dead", "--recipe", "crm",
                                      "--db", str(relay.settings.db)])
    assert result.exit_code == 0 and result.output.strip() == "0 deliveries queued again."


# --- the backoff curve ----------------------------------------------------------


class Extreme(random.Random):
    """uniform() gives its low or high end, to see the curve without jitter."""

    def __init__(self, high: bool) -> None:
        super().__init__(0)
        self.high = high

    def uniform(self, a: float, b: float) -> float:
        return b if self.high else a


def test_backoff_grows_exponentially_with_jitter_and_a_cap() -> None:
    settings = Settings(retry_base=1.0, retry_max_delay=10.0)
    ceilings = [1.0, 2.0, 4.0, 8.0, 10.0, 10.0, 10.0]
    assert [backoff(n, settings, Extreme(high=True)) for n in range(1, 8)] == ceilings
    assert [backoff(n, settings, Extreme(high=False)) for n in range(1, 8)] == [c / 2 for c in ceilings]
    # a huge attempt number is still just the cap, not an overflow
    assert backoff(10_000, settings, Extreme(high=True)) == 10.0

    rng = random.Random(1234)
    for attempt, ceiling in enumerate(ceilings, 1):
        waits = [backoff(attempt, settings, rng) for _ in range(200)]
        assert all(0.5 * ceiling <= w <= ceiling for w in waits), (attempt, min(waits), max(waits))
        assert max(waits) - min(waits) > 0.25 * ceiling  # jittered, not one value
    # without an rng of its own it still stays within the bounds
    assert all(0.1 <= backoff(1, Settings(retry_base=0.2), None) <= 0.2 for _ in range(50))


def test_retry_after_date_without_zone_is_utc(monkeypatch: pytest.MonkeyPatch) -> None:
    """RFC 9110 dates are UTC; '-0000' must not be read as this machine's local time."""
    monkeypatch.setenv("TZ", "America/New_York")
    time.tzset()
    try:
        now = time.time()
        value = email.utils.formatdate(now + 90, usegmt=False)  # "... -0000"
        assert value.endswith("-0000")
        wait = parse_retry_after(value, now=now)
        assert wait is not None and 88 <= wait <= 91
    finally:
        monkeypatch.delenv("TZ")
        time.tzset()


def test_retry_after_longer_than_max_age_tries_once_more_at_the_deadline(
        make_relay: Callable[..., RelayServer], tmp_path: Path, sink: Sink) -> None:
    sink.replies = [Reply(429, b'{"error":"slow down"}', {"Retry-After": "3600"}), Reply(200)]
    quicket_http_recipe(tmp_path / "recipes", sink.url + "/crm")
    relay = make_relay(max_age=2.0)
    delivery = delivery_of(relay, post(relay))
    done = settled(relay, delivery["id"], "delivered")
    assert done["attempts"] == 2
    first, second = sink.received
    assert second.at - first.at >= 1.0  # it waited for the deadline, not 3600 s, nor 0
