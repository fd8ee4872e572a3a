"""Retention: old events go, what is still needed stays, and ingest goes on meanwhile."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from filldb import file_size, fill, set_delivery

from conftest import RelayServer, sample, sign, wait_until, write_sources
from relay.cli import cli
from relay.errors import ConfigError
from relay.retention import Pruned, Retention
from relay.settings import Settings
from relay.store import Store, Writer

DAY = 86400.0
BASE = json.loads(sample("quicket/checkout_completed.json"))


def count(db: Path, sql: str, params: Any = ()) -> int:
    store = Store(db)
    try:
        return int(store.db.execute(sql, params).fetchone()[0])
    finally:
        store.close()


def prune_once(settings: Settings, now: float | None = None) -> Pruned:
    async def go() -> Pruned:
        writer = Writer(settings.db)
        try:
            return await Retention(writer, settings, pause=0).prune(now)
        finally:
            writer.close()
    return asyncio.run(go())


@pytest.mark.slow
def test_200k_old_events_are_pruned_while_ingest_answers(
        make_relay: Callable[..., RelayServer], tmp_path: Path) -> None:
    db = tmp_path / "relay.db"
    write_sources(tmp_path / "recipes")
    now = time.time()
    started = time.monotonic()
    fill(db, 200_000, received_from=now - 40 * DAY)
    fill_time = time.monotonic() - started
    store = Store(db)
    # The newest 1,000 are within the retention; a few old ones are still needed.
    store.db.execute("UPDATE events SET received_at = ? WHERE id > 199000", [now - DAY])
    for age in (40 * DAY, DAY):
        store.log_rejection(source="old", status_code=401, reason="signature mismatch",
                            headers={}, body=b"{}", body_size=2, client="127.0.0.1",
                            now=now - age)
    store.close()
    set_delivery(db, 10, "pending")
    set_delivery(db, 20, "sending")
    set_delivery(db, 30, "dead")
    set_delivery(db, 40, "dead", reviewed=True)
    size_before = file_size(db)

    started = time.monotonic()
    relay = make_relay()  # the retention task starts pruning at once
    latencies: list[float] = []
    statuses: list[int] = []
    event_ids: list[int] = []
    n = 0
    deadline = time.monotonic() + 180
    while count(db, "SELECT COUNT(*) FROM events WHERE source = 'old'") > 1003:
        assert time.monotonic() < deadline, "pruning did not finish"
        n += 1
        body = json.dumps(dict(BASE, reference=f"NEW-{n:05d}")).encode()
        path, headers = sign("quicket", "quicket", body)
        sent = time.monotonic()
        response = relay.post(path, body, headers)
        latencies.append(time.monotonic() - sent)
        statuses.append(response.status_code)
        event_ids.append(response.json()["event"])
        time.sleep(0.02)
    prune_time = time.monotonic() - started

    def reclaimed() -> bool:
        store = Store(db)
        try:
            return store.size()[1] < 2**20
        finally:
            store.close()
    wait_until(reclaimed, timeout=60, interval=0.2)
    relay.stop()
    size_after = file_size(db)
    print(f"\nfill {fill_time:.1f} s; prune {prune_time:.1f} s; {len(latencies)} webhooks during "
          f"pruning, max latency {max(latencies) * 1000:.0f} ms; file {size_before / 2**20:.1f}"
          f" MiB -> {size_after / 2**20:.1f} MiB")

    assert latencies and all(200 <= s < 300 for s in statuses), statuses
    assert size_after < size_before / 10
    kept = {r["id"] for r in Store(db).rows("SELECT id FROM events WHERE source = 'old'")}
    assert {10, 20, 30} <= kept and 40 not in kept and 5 not in kept
    assert set(range(199001, 200001)) <= kept
    assert count(db, "SELECT COUNT(*) FROM deliveries WHERE event_id IN (10, 20, 30)") == 3
    assert count(db, "SELECT COUNT(*) FROM deliveries WHERE event_id = 40") == 0
    assert count(db, "SELECT COUNT(*) FROM attempts WHERE delivery_id < 199001"
                     " AND delivery_id NOT IN (10, 20, 30)") == 0
    assert count(db, "SELECT COUNT(*) FROM routes WHERE event_id < 199001"
                     " AND event_id NOT IN (10, 20, 30)") == 0
    new = count(db, f"SELECT COUNT(*) FROM events WHERE id IN ({','.join(map(str, event_ids))})")
    assert new == len(set(event_ids))
    assert count(db, "SELECT COUNT(*) FROM rejections") == 1


def test_max_db_size_prunes_the_oldest_prunable_events_within_the_retention(
        tmp_path: Path) -> None:
    db = tmp_path / "relay.db"
    fill(db, 20_000, received_from=time.time() - DAY)  # all within the 30 days
    set_delivery(db, 1, "pending")
    settings = Settings.from_env(environ={"RELAY_MAX_DB_SIZE": "4MiB"}, db=db)
    assert settings.max_db_size == 4 * 2**20
    before = file_size(db)
    assert before > 3 * settings.max_db_size

    pruned = prune_once(settings)

    assert pruned.beyond_retention == pruned.events > 0
    assert pruned.size_after <= settings.max_db_size
    ids = [r["id"] for r in Store(db).rows("SELECT id FROM events ORDER BY id")]
    assert ids[0] == 1  # still needed
    assert ids[1:] == list(range(ids[1], 20_001))  # the oldest went first, the newest stayed
    assert file_size(db) < before / 2


def test_a_dead_delivery_is_kept_until_reviewed(tmp_path: Path) -> None:
    db = tmp_path / "relay.db"
    fill(db, 10, received_from=time.time() - 40 * DAY)
    set_delivery(db, 3, "dead")
    set_delivery(db, 4, "dead")
    settings = Settings.from_env(environ={}, db=db)
    prune_once(settings)
    assert count(db, "SELECT COUNT(*) FROM events") == 2

    runner = CliRunner()
    result = runner.invoke(cli, ["dismiss", "3", "--db", str(db)])
    assert result.exit_code == 0, result.output
    assert "1 dead deliveries dismissed" in result.output
    assert runner.invoke(cli, ["dismiss", "3", "--db", str(db)]).exit_code == 1
    prune_once(settings)
    assert [r["id"] for r in Store(db).rows("SELECT id FROM events")] == [4]

    # Replaying is a review; dying again needs a new one.
    store = Store(db)
    (delivery,) = store.replay(delivery_id=4)
    store.record_attempt(delivery, number=2, started_at=time.time(), duration=0.1, outcome="dead",
                         status_code=400, error="no", response_headers=None, response_body=None)
    assert store.one("SELECT reviewed_at FROM deliveries WHERE id = 4") == {"reviewed_at": None}
    store.close()
    prune_once(settings)
    assert count(db, "SELECT COUNT(*) FROM events") == 1
    assert runner.invoke(cli, ["dismiss", "--dead", "--db", str(db)]).exit_code == 0
    prune_once(settings)
    assert count(db, "SELECT COUNT(*) FROM events") == 0


def test_unrouted_events_are_kept(tmp_path: Path) -> None:
    db = tmp_path / "relay.db"
    fill(db, 5, received_from=time.time() - 40 * DAY)
    store = Store(db)
    store.db.execute("UPDATE events SET routed_at = NULL WHERE id = 2")
    store.close()
    prune_once(Settings.from_env(environ={}, db=db))
    assert [r["id"] for r in Store(db).rows("SELECT id FROM events")] == [2]


def test_a_redelivery_goes_with_its_original(tmp_path: Path) -> None:
    db = tmp_path / "relay.db"
    fill(db, 3, received_from=time.time() - 40 * DAY)
    store = Store(db)
    status, original = store.insert_event(
        source="old", platform="quicket", type="checkout_completed", dedup_key="k2",
        is_test=False, headers={}, body=b"{}", matched=True)
    store.close()
    assert (status, original) == ("duplicate", 2)
    prune_once(Settings.from_env(environ={}, db=db))
    assert count(db, "SELECT COUNT(*) FROM events") == 0


@pytest.mark.parametrize("env", [{"RELAY_RETENTION": "0"}, {"RELAY_MAX_DB_SIZE": "0"},
                                 {"RELAY_RETENTION": "a month"}])
def test_bad_retention_settings_name_the_variable(env: dict[str, str]) -> None:
    with pytest.raises(ConfigError, match=next(iter(env))):
        Settings.from_env(environ=env)


def test_new_databases_use_incremental_vacuum(tmp_path: Path) -> None:
    assert count(tmp_path / "relay.db", "PRAGMA auto_vacuum") == 2
