"""``relay backup``: a consistent copy while relay runs and keeps writing."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
from click.testing import CliRunner
from filldb import fill

from conftest import RelayServer, sample, sign, wait_until, write_sources
from relay.cli import cli

BASE = json.loads(sample("quicket/checkout_completed.json"))


class Poster:
    """A thread posting signed webhooks until stopped; keeps the ids answered 2xx."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.ids: list[int] = []
        self.failures: list[str] = []
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=30) as client:
            for n in range(100_000):  # bounded; stopped long before
                if self.stop.is_set():
                    return
                body = json.dumps(dict(BASE, reference=f"BK-{n:06d}")).encode()
                path, headers = sign("quicket", "quicket", body)
                response = client.post(path, content=body, headers=headers)
                with self.lock:
                    if response.status_code == 200:
                        self.ids.append(response.json()["event"])
                    else:
                        self.failures.append(response.text)

    def answered(self) -> list[int]:
        with self.lock:
            return list(self.ids)

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=60)


def test_backup_during_ingest_holds_everything_committed_before_it(
        make_relay: Callable[..., RelayServer], tmp_path: Path) -> None:
    db = tmp_path / "relay.db"
    write_sources(tmp_path / "recipes")
    fill(db, 20_000, received_from=time.time() - 3600)  # a few MiB: the copy takes many steps
    relay = make_relay()
    poster = Poster(relay.url)
    try:
        wait_until(lambda: len(poster.answered()) >= 50, timeout=60)
        committed = poster.answered()  # each was answered 2xx: on disk before the answer
        target = tmp_path / "backups" / "relay-backup.db"
        target.parent.mkdir()
        result = CliRunner().invoke(cli, ["backup", str(target), "--db", str(db)])
        assert result.exit_code == 0, result.output
        after = poster.answered()
    finally:
        poster.close()
    assert not poster.failures
    assert len(after) > len(committed)  # ingest went on during the backup
    assert "Backed up" in result.output and "MiB" in result.output

    with sqlite3.connect(target) as copy:
        assert copy.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        kept = {row[0] for row in copy.execute("SELECT id FROM events")}
        assert copy.execute("PRAGMA journal_mode").fetchone() == ("delete",)
    assert set(committed) <= kept
    assert set(range(1, 20_001)) <= kept
    assert f"Backed up {len(kept)} events" in result.output
    assert not target.with_name(target.name + ".partial").exists()


def test_backup_refuses_to_overwrite_without_force(tmp_path: Path) -> None:
    db = tmp_path / "relay.db"
    fill(db, 10, received_from=time.time())
    target = tmp_path / "copy.db"
    target.write_bytes(b"precious")
    runner = CliRunner()
    result = runner.invoke(cli, ["backup", str(target), "--db", str(db)])
    assert result.exit_code == 1
    assert "already exists" in result.output and "--force" in result.output
    assert target.read_bytes() == b"precious"

    result = runner.invoke(cli, ["backup", str(target), "--force", "--db", str(db)])
    assert result.exit_code == 0, result.output
    assert "Backed up 10 events" in result.output
    with sqlite3.connect(target) as copy:
        assert copy.execute("SELECT COUNT(*) FROM deliveries").fetchone() == (10,)


def test_backup_of_a_missing_database_says_so(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["backup", str(tmp_path / "copy.db"),
                                      "--db", str(tmp_path / "none.db")])
    assert result.exit_code == 1
    assert "there is no database" in result.output
    assert not (tmp_path / "copy.db").exists()
