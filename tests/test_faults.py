"""Faults around relay (issue 6): a destination that misbehaves, a full disk, a locked
database. In every case what relay records says what happened in plain words, and
every event that got a 2xx is delivered once the fault is gone: never lost, and sent
again only as at-least-once allows (the same ``Idempotency-Key`` on every attempt).

- **The destination misbehaves.** ``Misbehaving`` is a raw TCP server on 127.0.0.1
  that breaks HTTP the way real servers do, one way per connection: it hangs after
  accepting, hangs halfway through its answer, resets the connection (RST) before or
  after reading the request, answers a byte a second, answers 200 with a broken body,
  or redirects. RELAY_DELIVERY_TIMEOUT bounds each attempt as a whole.
- **The disk fills while ingesting**: with SQLite's ``max_page_count`` on the writer's
  connection (everywhere), and with a real, small tmpfs (where this may mount one).
  relay answers 503 (429 for OpenTicket), keeps nothing half-written, and /healthz says
  the database is not writable until there is room again.
- **The database is locked**: by another connection's write transaction, and by
  ``relay backup`` of a large database. Ingest waits and succeeds, or answers 503;
  never 500. The latencies are printed, not bounded.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import errno
import json
import os
import shutil
import socket
import sqlite3
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner
from filldb import fill as fill_db

from conftest import (
    RawServer,
    RelayProcess,
    RelayServer,
    Reply,
    Sink,
    free_port,
    quicket_http_recipe,
    read_request,
    sample,
    sign,
    wait_until,
    write_recipe,
    write_sources,
)
from fakes.base import Answer
from fakes.hubspot import TOKEN, FakeHubSpot
from relay.app import Runtime
from relay.cli import cli

BASE = json.loads(sample("quicket/checkout_completed.json"))
TIMEOUT = 1.5  # RELAY_DELIVERY_TIMEOUT in these tests


def quicket_body(reference: str, pad: int = 0) -> bytes:
    payload = dict(BASE, reference=reference)
    if pad:
        payload["notes"] = "n" * pad
    return json.dumps(payload).encode()


def post(relay: RelayServer, reference: str) -> httpx.Response:
    return relay.send("quicket", "quicket", quicket_body(reference))


def settled(relay: RelayServer, event_id: int, status: str, timeout: float = 60) -> dict[str, Any]:
    """The event's one delivery, once it has reached ``status``."""
    def check() -> dict[str, Any] | None:
        rows = relay.rows("SELECT * FROM deliveries WHERE event_id = ?", [event_id])
        return rows[0] if rows and rows[0]["status"] == status else None
    return wait_until(check, timeout=timeout)  # type: ignore[no-any-return]


# --- a destination that misbehaves ---------------------------------------------------


@dataclasses.dataclass
class Seen:
    """One connection to ``Misbehaving``: how it behaved, and the request if it read one."""

    mode: str
    headers: dict[str, str] | None = None
    body: bytes | None = None


OK = "ok"
MODES = {
    "hang": "accepts the connection, then never reads nor answers",
    "hang_mid_body": "sends a 200's headers and part of its body, then nothing more",
    "reset_before_read": "resets the connection (RST) before reading the request",
    "reset_after_read": "reads the whole request, then resets the connection (RST)",
    "slow": "answers 200, a byte a second",
    "short_body": "answers 200 with a Content-Length larger than the body, then closes",
    "broken_json": "answers 200 with a truncated JSON body (its Content-Length right)",
    "redirect": "answers 302 with a Location",
}


class Misbehaving(RawServer):
    """A raw TCP server on 127.0.0.1 speaking broken HTTP/1.1, one way per connection.

    ``script`` is consumed one mode per connection; when it is empty the server
    answers a proper ``200 {"ok":true}``. Every connection is recorded in ``seen``.
    """

    def __init__(self) -> None:
        self.script: list[str] = []
        self.seen: list[Seen] = []
        self.redirect_to = ""
        super().__init__()

    def accepted(self, conn: socket.socket) -> Callable[[], None]:
        with self.lock:
            mode = self.script.pop(0) if self.script else OK
        return lambda: self._serve(conn, mode)

    @staticmethod
    def _read_request(conn: socket.socket) -> tuple[dict[str, str], bytes] | None:
        conn.settimeout(30)
        request = read_request(conn)
        if request is None:
            return None
        head, body, _ = request
        lines = head.decode("latin-1").split("\r\n")[1:]
        headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
        return headers, body

    @staticmethod
    def _reset(conn: socket.socket) -> None:
        # SO_LINGER on, 0 s: close() sends RST instead of FIN.
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        conn.close()

    def _serve(self, conn: socket.socket, mode: str) -> None:
        seen = Seen(mode)
        with self.lock:
            self.seen.append(seen)
        try:
            if mode == "hang":
                self.closing.wait(timeout=120)
                return
            if mode == "reset_before_read":
                self._reset(conn)
                return
            request = self._read_request(conn)
            if request is None:
                return
            seen.headers, seen.body = request
            if mode == "reset_after_read":
                self._reset(conn)
                return
            ok = b'{"ok":true}'
            if mode == OK:
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                             b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(ok), ok))
            elif mode == "hang_mid_body":
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                             b"Content-Length: 1000\r\n\r\n{\"ok\":")
                self.closing.wait(timeout=120)
            elif mode == "slow":
                answer = (b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s"
                          % (len(ok), ok))
                for i in range(len(answer)):  # about a minute in all: far past the timeout
                    conn.sendall(answer[i:i + 1])
                    if self.closing.wait(timeout=1.0):
                        return
            elif mode == "short_body":
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                             b"Content-Length: 100\r\nConnection: close\r\n\r\n{\"ok\":true")
            elif mode == "broken_json":
                broken = b'{"ok": tr'
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                             b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(broken), broken))
            elif mode == "redirect":
                conn.sendall(b"HTTP/1.1 302 Found\r\nLocation: %s\r\nContent-Length: 0\r\n"
                             b"Connection: close\r\n\r\n" % self.redirect_to.encode())
            else:
                raise AssertionError(f"unknown mode {mode}")
        except OSError:
            pass  # relay gave up on this connection first
        finally:
            with contextlib.suppress(OSError):
                conn.close()

    def requests(self) -> list[Seen]:
        """The connections on which a whole request arrived."""
        with self.lock:
            return [s for s in self.seen if s.headers is not None]


@pytest.fixture
def misbehaving() -> Iterator[Misbehaving]:
    server = Misbehaving()
    yield server
    server.close()


# (mode, attempts that misbehave, outcomes relay records, words its first error has)
CASES = [
    ("hang", 2, ["retry", "retry", "delivered"], f"no answer within {TIMEOUT:g} s"),
    ("hang_mid_body", 2, ["retry", "retry", "delivered"], f"no answer within {TIMEOUT:g} s"),
    # A reset may come while the client still connects, or just after: either way, said.
    ("reset_before_read", 2, ["retry", "retry", "delivered"], "the destination reset the connection"),
    ("reset_after_read", 2, ["retry", "retry", "delivered"],
     "the connection to 127.0.0.1 broke before a whole answer came back: the destination reset"),
    ("slow", 1, ["retry", "delivered"], f"no answer within {TIMEOUT:g} s"),
    ("short_body", 2, ["retry", "retry", "delivered"],
     "the connection to 127.0.0.1 broke before a whole answer came back: RemoteProtocolError"),
    # The http destination counts any 2xx as delivered, whatever its body.
    ("broken_json", 1, ["delivered"], None),
]


@pytest.mark.parametrize(("mode", "faults", "outcomes", "words"), CASES, ids=[c[0] for c in CASES])
def test_a_misbehaving_destination_is_retried_until_it_behaves(
        make_relay: Callable[..., RelayServer], tmp_path: Path, misbehaving: Misbehaving,
        mode: str, faults: int, outcomes: list[str], words: str | None) -> None:
    misbehaving.script = [mode] * faults
    quicket_http_recipe(tmp_path / "recipes", f"{misbehaving.url}/hook")
    relay = make_relay(delivery_timeout=TIMEOUT, retry_base=0.2, retry_max_delay=1.0)
    response = post(relay, f"F-{mode}")
    assert response.status_code == 200, response.text
    delivery = settled(relay, response.json()["event"], "delivered")
    attempts = relay.attempts(delivery["id"])
    print(f"\n{mode} ({MODES[mode]}): " + "; ".join(
        f"#{a['number']} {a['outcome']} in {a['duration']:.2f} s"
        + (f": {a['error']}" if a["error"] else f" (HTTP {a['status_code']}, body {a['response_body']!r})")
        for a in attempts))

    assert [a["outcome"] for a in attempts] == outcomes
    if words is not None:
        assert words in attempts[0]["error"], attempts[0]["error"]
        assert "relay will retry" in attempts[0]["error"]
        assert attempts[0]["status_code"] is None
    assert delivery["last_error"] is None and delivery["attempts"] == len(outcomes)
    if mode == "broken_json":
        assert attempts[0]["status_code"] == 200 and attempts[0]["response_body"] == '{"ok": tr'
    # Every request that arrived is this one delivery, with its one Idempotency-Key;
    # exactly one of them was answered properly.
    requests = misbehaving.requests()
    assert requests, misbehaving.seen
    assert {s.headers["idempotency-key"] for s in requests if s.headers} == {delivery["idempotency_key"]}
    assert {s.body for s in requests} == {json.dumps(
        {"reference": f"F-{mode}", "email": BASE["email"]}, separators=(",", ":")).encode()}
    assert sum(s.mode in (OK, "broken_json") for s in requests) == 1
    assert len(misbehaving.seen) == len(outcomes)


def test_a_redirect_is_not_followed_and_waits_for_a_person(
        make_relay: Callable[..., RelayServer], tmp_path: Path, misbehaving: Misbehaving,
        sink: Sink) -> None:
    misbehaving.script = ["redirect"]
    misbehaving.redirect_to = f"{sink.url}/elsewhere"
    quicket_http_recipe(tmp_path / "recipes", f"{misbehaving.url}/hook")
    relay = make_relay(delivery_timeout=TIMEOUT)
    response = post(relay, "F-redirect")
    assert response.status_code == 200, response.text
    dead = settled(relay, response.json()["event"], "dead")
    print(f"\nredirect: {dead['last_error']}")
    assert dead["last_status_code"] == 302
    assert dead["last_error"] == ("HTTP 302: the destination answered with a redirect; put the final "
                                  f"URL in the recipe (it points to {sink.url}/elsewhere)")
    time.sleep(0.5)
    assert sink.received == []  # not followed
    # A person fixes the destination (here: it stops redirecting) and replays it.
    result = CliRunner().invoke(cli, ["replay", str(dead["id"]), "--db", str(relay.settings.db)])
    assert result.exit_code == 0, result.output
    delivered = settled(relay, response.json()["event"], "delivered")
    assert [a["outcome"] for a in relay.attempts(delivered["id"])] == ["dead", "delivered"]
    assert {s.headers["idempotency-key"] for s in misbehaving.requests() if s.headers} == {
        delivered["idempotency_key"]}
    assert sink.received == []


def test_hubspot_answering_200_with_unreadable_json_is_sent_again(
        make_relay: Callable[..., RelayServer], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A vendor destination reads the answer: HubSpot's 200 that is not JSON is not a
    delivery (relay cannot tell which contacts were saved), so it is sent again."""
    fake = FakeHubSpot()
    try:
        fake.fail_next(Answer(200, '{"status":"COMPLETE","results":[{"id":"9001",'))
        monkeypatch.setenv("HUBSPOT_TOKEN", TOKEN)
        folder = tmp_path / "recipes"
        write_sources(folder)
        write_recipe(folder, "hubspot", """\
source: quicket
events: ["checkout_completed"]
fields:
  email: email
  company: reference
to:
  - type: hubspot
    token: ${HUBSPOT_TOKEN}
""")
        relay = make_relay(hubspot_url=fake.url, delivery_timeout=TIMEOUT)
        response = post(relay, "F-hubspot")
        assert response.status_code == 200, response.text
        delivery = settled(relay, response.json()["event"], "delivered")
        attempts = relay.attempts(delivery["id"])
        print(f"\nhubspot broken JSON: {[(a['outcome'], a['status_code'], a['error']) for a in attempts]}")
        assert [(a["outcome"], a["status_code"]) for a in attempts] == [("retry", 200), ("delivered", 200)]
        assert attempts[0]["error"].startswith("HubSpot answered 200 but its answer could not be read")
        assert attempts[0]["response_body"] == '{"status":"COMPLETE","results":[{"id":"9001",'
        assert list(fake.contacts) == [BASE["email"]]
        assert fake.contacts[BASE["email"]]["properties"]["company"] == "F-hubspot"
        assert len(fake.requests) == 2
    finally:
        fake.close()


# --- the disk fills while ingesting --------------------------------------------------


@pytest.fixture
def runtimes(monkeypatch: pytest.MonkeyPatch) -> list[Runtime]:
    """The Runtime of every relay this test starts in-process, to reach its writer."""
    found: list[Runtime] = []
    original = Runtime.__init__

    def init(self: Runtime, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        found.append(self)

    monkeypatch.setattr(Runtime, "__init__", init)
    return found


def on_writer(runtime: Runtime, fn: Callable[[Any], Any]) -> Any:
    """Run ``fn(store)`` on the relay's writer thread, on its one writing connection."""
    async def run() -> Any:
        return await runtime.writer.run(fn)
    return asyncio.run(run())


def healthz(url: str) -> httpx.Response:
    return httpx.get(url + "/healthz", timeout=60)


class Ledger:
    """What a platform knows: the references answered 2xx, and the other answers."""

    def __init__(self) -> None:
        self.ok: list[str] = []
        self.refused: collections.Counter[str] = collections.Counter()
        self.messages: set[str] = set()
        self.refused_refs: list[str] = []

    def post(self, url: str, reference: str, pad: int = 0, source: str = "quicket") -> httpx.Response:
        if source == "openticket":
            body = json.dumps(dict(json.loads(sample("openticket/order.paid.json")),
                                   guid=reference, notes="n" * pad)).encode()
        else:
            body = quicket_body(reference, pad)
        path, headers = sign(source, source, body)
        response = httpx.post(url + path, content=body, headers=headers, timeout=60)
        if 200 <= response.status_code < 300:
            self.ok.append(reference)
        else:
            self.refused[f"{source} HTTP {response.status_code}"] += 1
            self.messages.add(response.json()["error"])
            self.refused_refs.append(reference)
        return response


def db_rows(db: Path, sql: str) -> list[tuple[Any, ...]]:
    with contextlib.closing(sqlite3.connect(db, timeout=30)) as conn:
        return conn.execute(sql).fetchall()


def stored_references(db: Path) -> list[str]:
    found = []
    for (body,) in db_rows(db, "SELECT body FROM events WHERE status != 'duplicate' ORDER BY id"):
        payload = json.loads(bytes(body))
        found.append(payload.get("reference") or payload.get("guid"))
    return found


def check_consistent(db: Path) -> dict[str, int]:
    """integrity_check is ok, and what routing wrote went in whole: every routed event
    has its routes, every route its deliveries. Returns a few counts."""
    assert db_rows(db, "PRAGMA integrity_check") == [("ok",)]
    assert db_rows(db, "PRAGMA foreign_key_check") == []
    [(half,)] = db_rows(db, "SELECT COUNT(*) FROM events e WHERE e.status = 'accepted' AND"
                        " e.routed_at IS NOT NULL AND NOT EXISTS (SELECT 1 FROM routes r"
                        " WHERE r.event_id = e.id)")
    assert half == 0, f"{half} routed events without their routes"
    [(short,)] = db_rows(db, "SELECT COUNT(*) FROM routes r WHERE r.outcome = 'queued' AND"
                         " r.deliveries != (SELECT COUNT(*) FROM deliveries d WHERE"
                         " d.event_id = r.event_id AND d.recipe = r.recipe)")
    assert short == 0, f"{short} routes without all their deliveries"
    [(events, unrouted, deliveries, attempts)] = db_rows(
        db, "SELECT (SELECT COUNT(*) FROM events), (SELECT COUNT(*) FROM events WHERE"
        " routed_at IS NULL), (SELECT COUNT(*) FROM deliveries), (SELECT COUNT(*) FROM attempts)")
    return {"events": events, "unrouted": unrouted, "deliveries": deliveries, "attempts": attempts}


def delivered_references(db: Path) -> set[str]:
    return {json.loads(payload).get("reference") for (payload,) in db_rows(
        db, "SELECT payload FROM deliveries WHERE status = 'delivered' AND recipe = 'crm'")}


def disk_full(url: str, db: Path, sink: Sink, fill: Callable[[], str],
              free: Callable[[], None]) -> None:
    """The common story: a few events, the disk fills (``fill``), webhooks keep coming,
    the destination keeps failing; then there is room again (``free``)."""
    # The destination is down meanwhile, with a long answer: each attempt relay records
    # needs room too.
    sink.default = Reply(503, b'{"error":"' + b"down " * 1000 + b'"}')
    ledger = Ledger()
    for n in range(5):
        assert ledger.post(url, f"DF-early-{n}").status_code == 200
    wait_until(lambda: db_rows(db, "SELECT COUNT(*) FROM deliveries WHERE attempts > 0") == [(5,)])

    how = fill()
    full_at = time.monotonic()
    for n in range(300):  # bounded: a few MB at most, far less in practice
        if ledger.post(url, f"DF-fill-{n}", pad=20_000).status_code != 200:
            break
    else:
        raise AssertionError("the database never filled up")
    filled = len(ledger.ok) - 5
    # Now full: big events are refused, OpenTicket's with a 429 (it retries only a 4xx).
    for n in range(3):
        ledger.post(url, f"DF-full-{n}", pad=20_000)
    ot = ledger.post(url, "DF-openticket", pad=20_000, source="openticket")
    assert ot.status_code == 429, ot.text
    health = healthz(url)
    # The delivery worker keeps trying meanwhile, and cannot record its attempts (for
    # longer than it used to retry recording them).
    time.sleep(7)
    while_full = dict(db_rows(db, "SELECT status, COUNT(*) FROM deliveries GROUP BY status"))
    counts = check_consistent(db)
    stored = stored_references(db)
    answered = list(ledger.ok)

    free()
    sink.default = Reply()
    wait_until(lambda: healthz(url).status_code == 200, timeout=60)
    recovered_in = time.monotonic() - full_at
    for n in range(5):
        assert ledger.post(url, f"DF-after-{n}").status_code == 200
    # The platform sends the refused ones again: now they are stored.
    again = list(ledger.refused_refs)
    for reference in again:
        source = "openticket" if reference == "DF-openticket" else "quicket"
        assert ledger.post(url, reference, pad=20_000, source=source).status_code == 200
    quicket_ok = {r for r in ledger.ok if r != "DF-openticket"}
    wait_until(lambda: quicket_ok <= delivered_references(db), timeout=120, interval=0.2)
    final = check_consistent(db)
    print(f"\ndisk full ({how}): {filled} big events accepted before it was full, then "
          f"refused {dict(ledger.refused)} saying {sorted(ledger.messages)}; /healthz answered "
          f"{health.status_code} {health.json()}; while full: deliveries {while_full}, {counts}; "
          f"healthy again {recovered_in:.1f} s after it filled; {len(quicket_ok)} quicket events "
          f"2xx'd, all delivered; at the end {final}")

    assert ledger.refused["quicket HTTP 503"] >= 1
    assert set(ledger.refused) <= {"quicket HTTP 503", "openticket HTTP 429"}
    assert ledger.messages == {"relay could not store this event right now; send it again later."}
    assert health.status_code == 503
    assert health.json() == {"status": "error", "error": "the database is not writable"}
    # Nothing half-written: what was answered 2xx is stored, what was refused is not.
    assert set(answered) <= set(stored)
    assert not set(again) & set(stored), set(again) & set(stored)
    statuses = db_rows(db, "SELECT status, COUNT(*) FROM deliveries GROUP BY status")
    assert statuses == [("delivered", len(quicket_ok))], statuses
    keys: dict[str, set[str]] = collections.defaultdict(set)
    for received in sink.received:
        keys[received.json()["reference"]].add(received.headers["idempotency-key"])
    assert all(len(k) == 1 for k in keys.values())


def test_disk_full_max_page_count(make_relay: Callable[..., RelayServer], tmp_path: Path,
                                  sink: Sink, runtimes: list[Runtime]) -> None:
    """The writer's connection may not grow the file (``PRAGMA max_page_count``): this
    runs anywhere, without root."""
    quicket_http_recipe(tmp_path / "recipes", f"{sink.url}/crm")
    relay = make_relay(delivery_timeout=TIMEOUT, retry_base=0.2, retry_max_delay=1.0)
    [runtime] = runtimes

    def fill() -> str:
        pages = on_writer(runtime, lambda s: s.db.execute("PRAGMA page_count").fetchone()[0])
        # Room for a few more big events, then none.
        on_writer(runtime, lambda s: s.db.execute(f"PRAGMA max_page_count = {pages + 30}").fetchall())
        return f"PRAGMA max_page_count = {pages + 30} on the writer's connection"

    def free() -> None:
        on_writer(runtime, lambda s: s.db.execute("PRAGMA max_page_count = 1073741823").fetchall())

    disk_full(relay.url, relay.settings.db, sink, fill, free)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 12 MiB tmpfs, where this may mount one (root)."""
    folder = tmp_path / "disk"
    folder.mkdir()
    if os.geteuid() != 0 or not shutil.which("mount"):
        pytest.skip("mounting a tmpfs needs root; test_disk_full_max_page_count covers the rest")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=12m", "tmpfs", str(folder)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield folder
    finally:
        if subprocess.run(["umount", str(folder)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(folder)], capture_output=True)


@pytest.mark.slow
def test_disk_full_for_real(small_disk: Path, tmp_path: Path, sink: Sink) -> None:
    """``relay serve`` with its database on a small tmpfs, which a file then fills."""
    quicket_http_recipe(tmp_path / "recipes", f"{sink.url}/crm")
    db = small_disk / "relay.db"
    env = {k: v for k, v in os.environ.items() if not k.startswith("RELAY_")}
    env.update({"RELAY_RECIPES": str(tmp_path / "recipes"), "RELAY_DB": str(db),
                "RELAY_DATA": str(tmp_path / "data"), "RELAY_RETRY_BASE": "0.2",
                "RELAY_RETRY_MAX_DELAY": "1", "RELAY_DELIVERY_TIMEOUT": str(TIMEOUT)})
    relay = RelayProcess(tmp_path, free_port(), env)
    filler = small_disk / "filler"

    def fill() -> str:
        fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            for _ in range(100_000):  # bounded: 12 MiB is 3072 blocks
                os.write(fd, b"\0" * 4096)
        except OSError as e:
            assert e.errno == errno.ENOSPC, e
        finally:
            os.close(fd)
        return (f"a {shutil.disk_usage(small_disk).total / 2**20:.0f} MiB tmpfs, filled up "
                f"by a {filler.stat().st_size / 2**20:.1f} MiB file")

    try:
        disk_full(relay.url, db, sink, fill, filler.unlink)
        assert relay.proc.poll() is None  # it never stopped
    finally:
        relay.terminate()


# --- the database locked -------------------------------------------------------------


@dataclasses.dataclass
class Answered:
    reference: str
    status: int
    started: float  # time.monotonic()
    seconds: float


class Posters:
    """Threads posting signed Quicket webhooks, each answer timed, until stopped."""

    def __init__(self, url: str, prefix: str, threads: int = 4) -> None:
        self.url = url
        self.prefix = prefix
        self.answers: list[Answered] = []
        self.errors: list[str] = []
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self.run, args=(t,), daemon=True)
                        for t in range(threads)]
        for thread in self.threads:
            thread.start()

    def run(self, t: int) -> None:
        with httpx.Client(base_url=self.url, timeout=120) as client:
            for n in range(5000):  # bounded; stopped long before
                if self.stop.is_set():
                    return
                reference = f"{self.prefix}-{t}-{n:05d}"
                body = quicket_body(reference)
                path, headers = sign("quicket", "quicket", body)
                started = time.monotonic()
                try:
                    response = client.post(path, content=body, headers=headers)
                except httpx.HTTPError as e:
                    with self.lock:
                        self.errors.append(f"{type(e).__name__}: {e}")
                    continue
                with self.lock:
                    self.answers.append(Answered(reference, response.status_code, started,
                                                 time.monotonic() - started))

    def count(self) -> int:
        with self.lock:
            return len(self.answers)

    def wait_for(self, more: int) -> None:
        target = self.count() + more
        wait_until(lambda: self.count() >= target, timeout=120)

    def close(self) -> list[Answered]:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=150)
        return list(self.answers)


def latencies(answers: list[Answered]) -> str:
    if not answers:
        return "none"
    seconds = sorted(a.seconds for a in answers)
    return (f"{len(seconds)} requests, median {seconds[len(seconds) // 2] * 1000:.0f} ms, "
            f"max {seconds[-1] * 1000:.0f} ms")


def check_all_delivered(db: Path, answers: list[Answered]) -> None:
    ok = {a.reference for a in answers if a.status == 200}
    wait_until(lambda: ok <= delivered_references(db), timeout=120, interval=0.2)


def test_a_write_lock_held_elsewhere_makes_ingest_wait(
        make_relay: Callable[..., RelayServer], tmp_path: Path, sink: Sink) -> None:
    """Another connection holds the write lock (BEGIN IMMEDIATE) for 3 s."""
    quicket_http_recipe(tmp_path / "recipes", f"{sink.url}/crm")
    relay = make_relay()
    db = relay.settings.db
    posters = Posters(relay.url, "LK")
    late: Posters | None = None
    try:
        posters.wait_for(20)
        with contextlib.closing(sqlite3.connect(db, isolation_level=None, timeout=30)) as other:
            other.execute("BEGIN IMMEDIATE")
            locked = time.monotonic()
            # The four posters may all be waiting on requests sent just before the lock:
            # this one's first webhook surely arrives while the lock is held.
            late = Posters(relay.url, "LL", threads=1)
            time.sleep(3)
            unlocked = time.monotonic()
            other.execute("ROLLBACK")
        posters.wait_for(20)
    finally:
        answers = posters.close() + (late.close() if late is not None else [])
    during = [a for a in answers if a.started < unlocked and a.started + a.seconds > locked]
    others = [a for a in answers if a not in during]
    statuses = collections.Counter(a.status for a in answers)
    print(f"\nwrite lock held 3 s elsewhere: answers {dict(statuses)}; overlapping the lock: "
          f"{latencies(during)}; the rest: {latencies(others)}")
    assert not posters.errors, posters.errors[:3]
    assert set(statuses) <= {200, 503}, statuses
    # Webhooks arrived while the lock was held, and waited for it.
    assert any(a.started > locked and a.started + a.seconds >= unlocked for a in during)
    check_all_delivered(db, answers)


def test_relay_keeps_answering_while_a_webhook_waits_for_the_write_lock(
        make_relay: Callable[..., RelayServer], tmp_path: Path, sink: Sink) -> None:
    """The writer runs on the event loop's thread, so it must wait for a lock held
    elsewhere without stopping that loop: while a webhook waits for its commit, the
    web UI still answers, and the webhook is stored once the lock is let go."""
    quicket_http_recipe(tmp_path / "recipes", f"{sink.url}/crm")
    relay = make_relay()
    body = quicket_body("WAITS-1")
    path, headers = sign("quicket", "quicket", body)
    answers: list[httpx.Response] = []
    with contextlib.closing(sqlite3.connect(relay.settings.db, isolation_level=None,
                                            timeout=30)) as other:
        other.execute("BEGIN IMMEDIATE")
        try:
            poster = threading.Thread(target=lambda: answers.append(
                httpx.post(relay.url + path, content=body, headers=headers, timeout=120)))
            poster.start()
            time.sleep(0.5)  # for the webhook to reach the writer (not a bound on anything)
            # A loop stopped by SQLite's own wait for the lock would answer only after
            # its busy timeout (30 s): this bound is well below that, and far above what
            # a login page takes on any machine.
            page = httpx.get(f"{relay.url}/login", timeout=15)
            assert page.status_code == 200
            assert not answers, "the webhook was answered while the lock was still held"
        finally:
            other.execute("ROLLBACK")
    poster.join(timeout=120)
    assert [a.status_code for a in answers] == [200], [a.text for a in answers]
    check_all_delivered(relay.settings.db, [Answered("WAITS-1", 200, 0.0, 0.0)])


def test_a_backup_of_a_large_database_does_not_stop_ingest(
        make_relay: Callable[..., RelayServer], tmp_path: Path, sink: Sink) -> None:
    """``relay backup`` (SQLite's backup API, in its own process) of a database with
    60,000 events, while webhooks keep coming."""
    db = tmp_path / "relay.db"
    quicket_http_recipe(tmp_path / "recipes", f"{sink.url}/crm")
    fill_db(db, 60_000, received_from=time.time() - 3600)
    relay = make_relay()
    posters = Posters(relay.url, "BK")
    target = tmp_path / "backup.db"
    try:
        posters.wait_for(20)
        before = {a.reference for a in posters.answers if a.status == 200}
        started = time.monotonic()
        done = subprocess.run([sys.executable, "-m", "relay", "backup", str(target), "--db", str(db)],
                              capture_output=True, text=True, timeout=300, cwd=tmp_path)
        ended = time.monotonic()
        posters.wait_for(20)
    finally:
        answers = posters.close()
    assert done.returncode == 0, done.stdout + done.stderr
    during = [a for a in answers if a.started < ended and a.started + a.seconds > started]
    statuses = collections.Counter(a.status for a in answers)
    size = target.stat().st_size / 2**20
    print(f"\nbackup of {size:.0f} MiB took {ended - started:.1f} s ({done.stdout.strip()}); answers "
          f"{dict(statuses)}; during the backup: {latencies(during)}; all: {latencies(answers)}")
    assert not posters.errors, posters.errors[:3]
    assert set(statuses) <= {200, 503}, statuses
    assert during, "no webhook arrived during the backup"
    with contextlib.closing(sqlite3.connect(target)) as copy:
        assert copy.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        kept = {json.loads(bytes(body)).get("reference") for (body,) in copy.execute(
            "SELECT body FROM events WHERE source = 'quicket'")}
    assert before <= kept  # 2xx'd before the backup began: in it
    check_all_delivered(db, answers)
