"""How fast the web UI's log answers with a million events in the database.

Builds a relay database in a temporary folder (the real schema, migrations applied,
then rows written straight into it with SQL: a few minutes, not days of webhooks),
starts ``relay serve`` on loopback against it, logs in, and times the log page:
newest events, a filtered list (a source's dead deliveries), and text searches.
Prints the median and 95th percentile of each. Not part of the test suite:

    python bench/log_page.py                 # 1,000,000 events
    python bench/log_page.py --events 100000 --keep /tmp/relay-bench
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from relay.store import Store  # noqa: E402

PASSWORD = "bench password 123"
# Share of events per source: a big one, a few middling, and a small one.
SOURCES = [("tito", "tito", 0.40), ("quicket", "quicket", 0.30), ("tikkl", "tikkl", 0.20),
           ("webconnex", "webconnex", 0.09), ("openticket", "openticket", 0.01)]
FIRST = ["Ann", "Bob", "Chidi", "Dana", "Eve", "Femi", "Grace", "Hugo", "Ines", "Jon", "Kofi",
         "Lena", "Mia", "Nils", "Olu", "Pia", "Quinn", "Rosa", "Sam", "Tess", "Umar", "Vera"]
LAST = ["Smith", "Okafor", "Jansen", "Garcia", "Nkosi", "Muller", "Rossi", "Silva", "Kim",
        "Dubois", "Novak", "Berg", "Mensah", "Costa", "Ivanova", "Tanaka", "Ali", "Moreau"]
TICKETS = ["General Admission", "VIP", "Early Bird", "Student", "Workshop", "Backstage"]
SOURCES_YAML = """\
tito: {platform: tito, secrets: ["bench-tito"]}
quicket: {platform: quicket, token: "bench-quicket-token-0123456789"}
tikkl: {platform: tikkl, secrets: ["bench-tikkl"]}
webconnex: {platform: webconnex, secrets: ["bench-webconnex"]}
openticket: {platform: openticket, nonce: "bench-openticket"}
"""
RECIPE = """\
source: {source}
fields:
  email: email
to:
  - type: http
    url: http://127.0.0.1:9/{source}
"""


def body_of(i: int, rng: random.Random) -> tuple[bytes, str]:
    """A ticket sale of ~700 bytes with a unique email; returns (body, email)."""
    first, last = rng.choice(FIRST), rng.choice(LAST)
    email = f"{first.lower()}.{last.lower()}{i}@example.com"
    tickets = [{"ticket_id": f"T{i}-{n}", "type": rng.choice(TICKETS), "price": rng.choice([0, 25, 45, 120]),
                "attendee": {"name": f"{rng.choice(FIRST)} {rng.choice(LAST)}"}}
               for n in range(rng.choice([1, 1, 2, 3]))]
    payload = {"reference": f"REF{i:08d}", "event": "Summer Festival 2025", "email": email,
               "name": f"{first} {last}", "phone": f"+31 6 {rng.randrange(10**7, 10**8)}",
               "created_at": "2025-06-01T12:00:00Z", "currency": "EUR", "tickets": tickets,
               "notes": "Please send the invoice to the company address. " * rng.choice([0, 1, 3])}
    return json.dumps(payload).encode(), email


def build(db: Path, count: int, chunk: int = 50_000) -> list[str]:
    """Fill ``db`` with ``count`` events over the last 30 days; returns a few of their emails."""
    store = Store(db)  # the real schema, every migration applied
    conn = store.db.conn
    conn.execute("PRAGMA synchronous = OFF")  # a throwaway database: speed over durability
    rng = random.Random(4)
    now = time.time()
    start, step = now - 30 * 86400, 30 * 86400 / count
    weights = [share for _, _, share in SOURCES]
    emails: list[str] = []
    delivery_id = 0
    for first in range(1, count + 1, chunk):
        events, routes, deliveries, attempts = [], [], [], []
        for i in range(first, min(first + chunk, count + 1)):
            source, platform, _ = rng.choices(SOURCES, weights)[0]
            body, email = body_of(i, rng)
            if i % 100_000 == 50_000:
                emails.append(email)
            at = start + i * step
            roll = rng.random()
            status = "duplicate" if roll < 0.005 and i > 1 else ("ignored" if roll < 0.02 else "accepted")
            events.append((i, source, platform, "order.paid", f"k{i}", status,
                           max(1, i - 7) if status == "duplicate" else None, at, '{"content-type":'
                           ' "application/json", "user-agent": "bench"}', body, at + 0.01))
            if status != "accepted":
                continue
            routes.append((i, f"{source}-crm", "queued", 1, at + 0.01))
            if source == "tito" and roll > 0.5:
                routes.append((i, "tito-vip", "filtered", 0, at + 0.01))
            delivery_id += 1
            fate = rng.random()
            state = ("dead" if fate < 0.01 else "pending" if fate < 0.015 else "delivered")
            tries = 3 if state != "delivered" else 1
            error = "the destination answered 400 Bad Request: email is invalid" if state != "delivered" else None
            deliveries.append((delivery_id, i, f"{source}-crm", state, tries, at, now + 86400, at + 1,
                               at + 1 if state == "delivered" else None, error,
                               400 if error else 200, f"idem{delivery_id}"))
            for n in range(1, tries + 1):
                outcome = "delivered" if state == "delivered" else ("dead" if state == "dead" and n == tries
                                                                    else "retry")
                attempts.append((delivery_id, n, at + n, 0.05, outcome, 400 if error else 200, error,
                                 '{"ok": true}' if not error else '{"error": "email is invalid"}'))
        with store.db.atomic():
            conn.executemany(
                "INSERT INTO events (id, source, platform, type, dedup_key, status, duplicate_of,"
                " received_at, headers, body, routed_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", events)
            conn.executemany(
                "INSERT INTO routes (event_id, recipe, outcome, deliveries, created_at)"
                " VALUES (?, ?, ?, ?, ?)", routes)
            conn.executemany(
                "INSERT INTO deliveries (id, event_id, recipe, destination, dest_type, payload, status,"
                " attempts, queued_at, next_attempt_at, updated_at, delivered_at, last_error,"
                " last_status_code, idempotency_key) VALUES (?, ?, ?, 0, 'http', '{\"email\": \"x\"}',"
                " ?, ?, ?, ?, ?, ?, ?, ?, ?)", deliveries)
            conn.executemany(
                "INSERT INTO attempts (delivery_id, number, started_at, duration, outcome, status_code,"
                " error, response_body) VALUES (?, ?, ?, ?, ?, ?, ?, ?)", attempts)
            # What the router does as events are routed: add them to the search.
            while store.index_for_search():
                pass
        print(f"  {min(first + chunk - 1, count):>9,} events", file=sys.stderr, flush=True)
    with store.db.atomic():
        conn.executemany(
            "INSERT INTO rejections (source, received_at, status_code, reason, headers, body_prefix,"
            " body_size, client) VALUES (?, ?, 401, ?, '{}', ?, 20, '203.0.113.9')",
            [(rng.choice(SOURCES)[0], now - n * 60, "the signature does not match the body",
              b'{"forged": true}') for n in range(5000)])
    store.close()
    return emails


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def relay_env(folder: Path, **extra: str) -> dict[str, str]:
    """The environment for ``relay serve`` on ``folder`` (its recipes, database and data)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RELAY_")}
    env.update({"RELAY_DB": str(folder / "relay.db"), "RELAY_RECIPES": str(folder / "recipes"),
                "RELAY_DATA": str(folder / "data"), "RELAY_ADMIN_PASSWORD": PASSWORD,
                "RELAY_RETENTION": "3650d", "RELAY_MAX_DB_SIZE": "1000GB", "PYTHONPATH": str(ROOT)})
    env.update(extra)
    return env


def start_relay(folder: Path, port: int, **extra: str) -> subprocess.Popen[bytes]:
    """Start ``relay serve`` on loopback (its output in ``folder/relay.log``); does not wait."""
    with open(folder / "relay.log", "ab") as log:
        return subprocess.Popen([sys.executable, "-m", "relay", "serve", "--port", str(port)],
                                cwd=folder, env=relay_env(folder, **extra), stdout=log,
                                stderr=subprocess.STDOUT)


def wait_healthy(proc: subprocess.Popen[bytes], url: str, timeout: float = 120, interval: float = 0.2) -> None:
    """Wait until ``url/healthz`` answers 200. :raises SystemExit: if relay exits or never does."""
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise SystemExit(f"relay exited ({proc.returncode}); its output is in relay.log in its folder")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url + "/healthz", timeout=2).status_code == 200:
                return
        if time.monotonic() > deadline:
            raise SystemExit(f"relay did not start within {timeout:g} s")
        time.sleep(interval)


@contextlib.contextmanager
def serving(folder: Path) -> Iterator[str]:
    """``relay serve`` on loopback against the built database; yields its URL."""
    port = free_port()
    proc = start_relay(folder, port)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(proc, url)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def login(url: str) -> httpx.Client:
    client = httpx.Client(base_url=url, timeout=60)
    page = client.get("/login").text
    token = re.search(r'name="login_token" value="([^"]+)"', page)
    assert token, "no login form"
    response = client.post("/login", data={"name": "admin", "password": PASSWORD, "next": "/",
                                           "login_token": token.group(1)})
    assert response.status_code == 303, response.text
    return client


def timed(client: httpx.Client, path: str, runs: int) -> tuple[float, float, int]:
    """(median ms, p95 ms, rows on the page) over ``runs`` requests, after two to warm up."""
    for _ in range(2):
        client.get(path)
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        response = client.get(path)
        times.append((time.perf_counter() - started) * 1000)
        assert response.status_code == 200, (path, response.status_code)
    rows = response.text.count('class="log-row')
    return statistics.median(times), statistics.quantiles(times, n=20)[-1], rows


def prepare(folder: Path) -> None:
    """The recipes folder the log database belongs with: five sources, a recipe each."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "recipes").mkdir(exist_ok=True)
    (folder / "recipes" / "sources.yaml").write_text(SOURCES_YAML)
    for source, _, _ in SOURCES:
        (folder / "recipes" / f"{source}-crm.yaml").write_text(RECIPE.format(source=source))


def ensure_built(folder: Path, events: int) -> list[str]:
    """Build the database in ``folder`` unless it is already there; returns a few emails."""
    prepare(folder)
    emails_file = folder / "emails.json"
    if not (folder / "relay.db").exists() or not emails_file.exists():
        print(f"building {events:,} events in {folder} ...", file=sys.stderr)
        started = time.monotonic()
        emails_file.write_text(json.dumps(build(folder / "relay.db", events)))
        print(f"built in {time.monotonic() - started:.0f} s", file=sys.stderr)
    return list(json.loads(emails_file.read_text()))


def cases(client: httpx.Client, emails: list[str]) -> list[tuple[str, str]]:
    """(name, path) of every page timed."""
    middle = client.get("/log").text
    newest = re.search(r'data-id="(\d+)"', middle)
    before = int(newest.group(1)) // 2 if newest else 1
    return [
        ("log, newest events", "/log"),
        ("log, older page (keyset)", f"/log?before={before}"),
        ("filter: source + status (webconnex dead deliveries)", "/log?source=webconnex&status=dead"),
        ("filter: source + status (openticket accepted events)", "/log?source=openticket&status=accepted"),
        ("filter: retrying deliveries, last 24 h", "/log?status=retrying&period=24h"),
        ("search: one email address", "/log?q=" + (emails[len(emails) // 2] if emails else "x@example.com")),
        ("search: a common first name", "/log?q=grace"),
        ("search: the start of an order reference", "/log?q=REF0055"),
        ("search: the start of a name, in dead deliveries", "/log?q=ros&status=dead"),
        ("dashboard", "/"),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--keep", type=Path, help="build (or reuse) the database in this folder and keep it")
    args = parser.parse_args()
    folder = args.keep or Path(tempfile.mkdtemp(prefix="relay-bench-"))
    try:
        emails = ensure_built(folder, args.events)
        size = (folder / "relay.db").stat().st_size
        with serving(folder) as url, contextlib.closing(login(url)) as client:
            print(f"\n{args.events:,} events, database {size / 2**30:.2f} GiB, {args.runs} requests each\n")
            print(f"{'request':<55} {'median':>9} {'p95':>9} {'rows':>5}")
            for name, path in cases(client, emails):
                median, p95, rows = timed(client, path, args.runs)
                print(f"{name:<55} {median:7.1f}ms {p95:7.1f}ms {rows:>5}")
    finally:
        if args.keep is None:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
