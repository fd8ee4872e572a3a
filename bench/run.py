"""relay's benchmark: every scenario of issue 7 in one run, against the stack's ceiling.

    .venv/bin/python bench/run.py                 # everything (about 10 minutes)
    .venv/bin/python bench/run.py --quick         # one short run each, 100,000-event log
    .venv/bin/python bench/run.py --only ingest relay

On loopback, in this order:

- **sink**: bench/sink.py, a bare uvloop + httptools server that answers every POST;
  relay delivers to it. Loaded with wrk too, to show it is never the bottleneck.
- **ceiling**: bench/ceiling.py, a bare starlette app under uvicorn with relay's
  settings (uvloop, httptools, one worker, no access log) that only verifies the
  Tito signature and answers. Every rate is also given as a share of its rate.
- **floor**: bench/ceiling.py --durable, the same app plus ``json.loads`` and a
  SQLite group commit before the answer: the least a durable ingest costs here.
- **ingest**: relay with a Tito source and no recipe: verify, commit, answer.
- **relay**: one recipe (a JMESPath field and a Jinja field) delivering to the sink.
  wrk loads it, then the run waits until every delivery is delivered: end-to-end
  events/s = accepted events / (from the start of the load to the last delivery),
  and lost = accepted events - delivered deliveries (must be 0).
- **backlog**: 10,000 deliveries already queued (events stored and routed with
  relay's own code before relay starts) drained to the sink: deliveries/s from the
  sink's first request to the last delivery recorded.
- **start-up**: ``relay serve`` with 100 recipes, from process start to a 200 from
  ``/healthz`` (median of three restarts, after a first start that made the database).
- **log**: bench/log_page.py's database of 1,000,000 events (built once; ``--log-db``
  keeps it for later runs), each of its log pages timed (median of 20).
- **http clients**: bench/http_clients.py: POSTs/s of httpx, httpx + httpx-aiohttp
  and aiohttp to the sink.

wrk (Debian package ``wrk``) sends the same 2.7 KB Tito ``ticket.completed`` payload,
signed, a new ticket slug per request (bench/tito_post.lua), with ``-t 2 -c 32`` for
``--duration`` seconds, ``--runs`` times; each figure is the median of the runs.
relay's peak memory is VmHWM from /proc/<pid>/status. The table is printed and
written to bench/results.md with the machine it ran on.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import http.client
import json
import os
import platform
import shutil
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(BENCH))

import http_clients  # noqa: E402
import log_page  # noqa: E402

SECRET = "bench-tito"
SAMPLE = ROOT / "tests" / "samples" / "tito" / "ticket.completed.json"
LUA = BENCH / "tito_post.lua"
SOURCES_YAML = f'tito: {{platform: tito, secrets: ["{SECRET}"]}}\n'
RECIPE = """\
source: tito
events: ["ticket.completed"]
fields:
  email: email                                 # JMESPath
  reference: registration.reference            # JMESPath
  name: "{{{{ first_name }}}} {{{{ last_name }}}}"     # Jinja
  ticket: "{{{{ release_title }}}} ({{{{ price }}}} {{{{ event.currency }}}})"
to:
  - type: http
    url: {url}
"""
TARGETS = {  # issue 7
    "ingest": 0.60, "ingest_p99_ms": 50.0, "relay": 0.25, "backlog": 1500.0,
    "log_ms": 200.0, "startup_s": 1.0, "rss_mb": 100.0,
}


# --- processes ---------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{proc.args!r} exited with {proc.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
            return
        time.sleep(0.02)
    raise SystemExit(f"nothing listens on port {port} after {timeout:g} s")


@contextlib.contextmanager
def process(args: list[str], port: int, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with open(log, "ab") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_port(port, proc)
        yield proc
    finally:
        stop(proc)


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def get_json(port: int, path: str) -> Any:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path)
        return json.loads(conn.getresponse().read())
    finally:
        conn.close()


def healthy(port: int) -> bool:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", "/healthz")
        return conn.getresponse().status == 200
    except OSError:
        return False
    finally:
        conn.close()


def peak_rss_mb(pid: int) -> float:
    """VmHWM: the most resident memory the process has had (MB)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of the process, all its threads."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextlib.contextmanager
def profiled(args: argparse.Namespace, pid: int, name: str, seconds: float) -> Iterator[None]:
    """With ``--profile DIR``: py-spy records the relay process (every thread) meanwhile,
    into DIR/<name>.txt (collapsed stacks: flamegraph.pl or speedscope.app read them)."""
    if not args.profile:
        yield
        return
    args.profile.mkdir(parents=True, exist_ok=True)
    out = args.profile / f"{name}.txt"
    spy = subprocess.Popen([args.py_spy, "record", "-p", str(pid), "-d", str(max(1, int(seconds))),
                            "-r", "250", "--threads", "--nonblocking", "--format", "raw", "-o", str(out)],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield
    finally:
        spy.wait()
        say(f"  profile: {out}")
        say(summary(out))


WRITER_JOBS = ("insert_event", "unrouted_events", "index_for_search", "record_routing", "claim",
               "due_by_lane", "record_attempt", "next_due_at", "hold_lane", "log_rejection", "writable")


def where(frames: list[str]) -> str:
    """What one sampled stack was doing, in relay's terms."""
    stack = ";".join(frames)
    if "relay-wal-flush" in frames[0]:
        return "WAL flush thread (fdatasync)"
    if "relay-search" in frames[0]:
        return "text search thread (index_for_search)"
    if "Writer._flush" in stack:  # on the event loop's thread
        job = next((j for j in WRITER_JOBS if f"Store.{j} " in stack), None)
        if job:
            return f"writer: {job}"
        return "writer: BEGIN / savepoints / COMMIT"
    if "route_event" in stack:
        return "router: recipes (worker thread)"
    if "MainThread" not in frames[0]:
        return "other threads"
    if "relay/ingest.py" in stack:
        return "ingest: receive() (verify, parse, store, answer)"
    if "httpx/" in stack or "httpcore/" in stack:
        return "delivery: HTTP client (httpx)"
    if "relay/delivery.py" in stack or "relay/destinations" in stack:
        return "delivery: worker"
    if "relay/routing.py" in stack:
        return "router: event loop side"
    if "starlette/" in stack or "uvicorn/protocols" in stack:
        return "HTTP server (uvicorn, starlette)"
    return "event loop (uvloop, C)"


def summary(path: Path) -> str:
    """Where the samples of a collapsed-stacks file went, grouped (``where``)."""
    import collections
    groups: collections.Counter[str] = collections.Counter()
    total = 0
    with contextlib.suppress(OSError):
        for line in path.read_text().splitlines():
            stack, _, count = line.rpartition(" ")
            groups[where(stack.split(";"))] += int(count)
            total += int(count)
    if not total:
        return "    (no samples: py-spy needs ptrace, e.g. root)"
    return "\n".join(f"    {n / total:5.0%}  {group}" for group, n in groups.most_common())


class Relay:
    """``relay serve`` on a folder of its own (recipes/, relay.db, data/)."""

    def __init__(self, folder: Path, **env: str) -> None:
        self.folder = folder
        self.env = env
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def db(self) -> Path:
        return self.folder / "relay.db"

    def start(self, timeout: float = 120) -> float:
        """Start relay and wait until /healthz answers 200; returns the seconds that took."""
        started = time.perf_counter()
        self.proc = log_page.start_relay(self.folder, self.port, **self.env)
        deadline = time.monotonic() + timeout
        while not healthy(self.port):
            if self.proc.poll() is not None:
                raise SystemExit(f"relay exited; see {self.folder / 'relay.log'}")
            if time.monotonic() > deadline:
                raise SystemExit(f"relay was not healthy within {timeout:g} s")
            time.sleep(0.005)
        return time.perf_counter() - started

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def stop(self) -> None:
        if self.proc is not None:
            stop(self.proc)

    def counts(self) -> dict[str, Any]:
        with contextlib.closing(sqlite3.connect(self.db, timeout=30)) as db:
            row = db.execute(
                "SELECT (SELECT COUNT(*) FROM events),"
                " (SELECT COUNT(*) FROM events WHERE status = 'accepted'),"
                " (SELECT COUNT(*) FROM events WHERE status = 'duplicate'),"
                " (SELECT COUNT(*) FROM events WHERE routed_at IS NULL),"
                " (SELECT COUNT(*) FROM deliveries WHERE status = 'delivered'),"
                " (SELECT COUNT(*) FROM deliveries WHERE status != 'delivered'),"
                " (SELECT MAX(delivered_at) FROM deliveries)").fetchone()
        keys = ["events", "accepted", "duplicates", "unrouted", "delivered", "undelivered", "last_delivered"]
        return dict(zip(keys, row, strict=True))

    def drained(self, sink_port: int, posts: int, timeout: float, label: str) -> dict[str, Any]:
        """Wait until the sink has had ``posts`` POSTs and relay has nothing left to route
        or deliver, at most ``timeout`` seconds; relay's counts then."""
        deadline = time.monotonic() + timeout
        while True:
            if get_json(sink_port, "/stats")["posts"] >= posts:
                counts = self.counts()
                if counts["unrouted"] == 0 and counts["undelivered"] == 0:
                    return counts
            if time.monotonic() > deadline:
                counts = self.counts()
                say(f"  {label}: not drained after {timeout:g} s: {counts}")
                return counts
            time.sleep(0.1)


def folder_for(base: Path, name: str, recipes: dict[str, str], installed: bool = True) -> Path:
    """A folder for ``relay serve``: sources.yaml and ``recipes``.

    ``installed``: with a database that already has its web UI account, as after
    relay's first start (which hashes the new password with argon2, 64 MiB of memory
    for a moment: that is not what a running relay needs).
    """
    folder = base / name
    shutil.rmtree(folder, ignore_errors=True)
    (folder / "recipes").mkdir(parents=True)
    (folder / "recipes" / "sources.yaml").write_text(SOURCES_YAML)
    for recipe, text in recipes.items():
        (folder / "recipes" / f"{recipe}.yaml").write_text(text)
    if installed:
        from relay.store import Store
        from relay.ui.auth import ensure_admin
        store = Store(folder / "relay.db")
        try:
            ensure_admin(store, log_page.PASSWORD, lambda message: None)
        finally:
            store.close()
    return folder


# --- load --------------------------------------------------------------------------


def body_template(path: Path) -> int:
    """The sample as Tito sends it (json.dumps spacing, 2.7 KB), its slug a placeholder."""
    payload = json.loads(SAMPLE.read_text())
    payload["slug"] = "@@SLUG@@"
    text = json.dumps(payload)
    path.write_text(text)
    return len(text) - len("@@SLUG@@") + 13


def wrk(args: argparse.Namespace, url: str, tag: str) -> dict[str, Any]:
    """One wrk run; its figures (rps, p50/p99 in ms, errors = non-2xx + socket errors)."""
    command = ["wrk", "-t", str(args.threads), "-c", str(args.connections), "-d", f"{args.duration}s",
               "-s", str(LUA), url, "--", str(args.body_file), SECRET, tag]
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    last = [line for line in done.stdout.splitlines() if line.startswith("{")][-1]
    r = json.loads(last)
    return {
        "requests": r["requests"],
        "rps": r["requests"] / (r["duration_us"] / 1e6),
        "p50_ms": r["p50_us"] / 1000, "p99_ms": r["p99_us"] / 1000, "max_ms": r["max_us"] / 1000,
        "errors": r["status"] + r["connect"] + r["read"] + r["write"] + r["timeout"],
        "non2xx": r["status"],
    }


def median_of(runs: list[dict[str, Any]], sums: tuple[str, ...] = ("errors", "non2xx", "lost")) -> dict[str, Any]:
    """Per figure, the median over the runs (or the sum, for counts of failures)."""
    out: dict[str, Any] = {}
    for key in runs[0]:
        values = [r[key] for r in runs if r.get(key) is not None]
        if not values or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            out[key] = values[0] if values else None
        elif key in sums:
            out[key] = sum(values)
        else:
            out[key] = statistics.median(values)
    out["runs"] = len(runs)
    return out


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# --- scenarios ---------------------------------------------------------------------


def bench_plain(args: argparse.Namespace, name: str, url: str, pid: int) -> dict[str, Any]:
    runs = []
    for i in range(args.runs):
        cpu = cpu_seconds(pid)
        r = wrk(args, url, f"{name[0]}{i}")
        r["cpu"] = (cpu_seconds(pid) - cpu) / args.duration
        r["cpu_us"] = (cpu_seconds(pid) - cpu) / r["requests"] * 1e6
        runs.append(r)
        say(f"  {name} run {i + 1}: {r['rps']:,.0f} req/s, p99 {r['p99_ms']:.1f} ms, "
            f"CPU {r['cpu']:.0%} of a core, {r['cpu_us']:.0f} us a request")
    return median_of(runs)


def bench_ingest(args: argparse.Namespace) -> dict[str, Any]:
    runs = []
    for i in range(args.runs):
        relay = Relay(folder_for(args.work, f"ingest{i}", {}))
        try:
            relay.start()
            cpu = cpu_seconds(relay.pid)
            with profiled(args, relay.pid, "ingest", args.duration - 1) if i == 0 else contextlib.nullcontext():
                r = wrk(args, f"http://127.0.0.1:{relay.port}/hooks/tito", f"i{i}")
            r["cpu"] = (cpu_seconds(relay.pid) - cpu) / args.duration
            r["cpu_us"] = (cpu_seconds(relay.pid) - cpu) / r["requests"] * 1e6
            time.sleep(0.3)
            counts = relay.counts()
            r["rss_mb"] = peak_rss_mb(relay.pid)
        finally:
            relay.stop()
        ok = r["requests"] - r["non2xx"]
        # Every 2xx is a committed event (wrk may stop before reading an answer, not after).
        r["uncommitted"] = max(0, ok - counts["events"])
        r["duplicates"] = counts["duplicates"]
        runs.append(r)
        say(f"  ingest run {i + 1}: {r['rps']:,.0f} req/s, p50 {r['p50_ms']:.1f} ms, p99 {r['p99_ms']:.1f} ms, "
            f"{counts['events']:,} events stored, relay CPU {r['cpu']:.0%} of a core ({r['cpu_us']:.0f} us "
            f"a request), peak RSS {r['rss_mb']:.0f} MB")
    return median_of(runs, sums=("errors", "non2xx", "uncommitted", "duplicates"))


def bench_relay(args: argparse.Namespace) -> dict[str, Any]:
    runs = []
    for i in range(args.runs):
        get_json(args.sink_port, "/reset")
        recipe = RECIPE.format(url=f"http://127.0.0.1:{args.sink_port}/relay")
        relay = Relay(folder_for(args.work, f"relay{i}", {"tito-crm": recipe}), RELAY_ALLOW_NETWORKS="loopback")
        try:
            relay.start()
            cpu = cpu_seconds(relay.pid)
            started = time.time()
            with profiled(args, relay.pid, "relay", args.duration - 1) if i == 0 else contextlib.nullcontext():
                r = wrk(args, f"http://127.0.0.1:{relay.port}/hooks/tito", f"r{i}")
            load_end = time.time()
            r["cpu"] = (cpu_seconds(relay.pid) - cpu) / args.duration
            time.sleep(0.3)
            accepted = relay.counts()["accepted"]
            counts = relay.drained(args.sink_port, accepted, args.drain_timeout, f"relay run {i + 1}")
            r["rss_mb"] = peak_rss_mb(relay.pid)
            r["cpu_us_event"] = (cpu_seconds(relay.pid) - cpu) / max(1, counts["accepted"]) * 1e6
        finally:
            relay.stop()
        sink = get_json(args.sink_port, "/stats")
        last = counts["last_delivered"] or time.time()
        r.update({
            "accepted": counts["accepted"], "delivered": counts["delivered"],
            "lost": counts["accepted"] - counts["delivered"],
            "sent_twice": max(0, sink["posts"] - counts["delivered"]),
            "e2e": counts["accepted"] / (last - started),
            "drain_after_load_s": max(0.0, last - load_end),
            "delivery_rate": counts["delivered"] / (last - sink["first"]) if sink["first"] else 0.0,
        })
        runs.append(r)
        say(f"  relay run {i + 1}: ingest {r['rps']:,.0f} req/s (p99 {r['p99_ms']:.1f} ms), "
            f"{r['accepted']:,} accepted, {r['delivered']:,} delivered, end-to-end {r['e2e']:,.0f} events/s, "
            f"queue drained {r['drain_after_load_s']:.1f} s after the load, peak RSS {r['rss_mb']:.0f} MB")
    return median_of(runs, sums=("errors", "non2xx", "lost", "sent_twice"))


def queue_backlog(folder: Path, count: int) -> None:
    """``count`` Tito events stored and routed with relay's own code: ``count`` deliveries queued."""
    from relay.destinations import DestinationContext
    from relay.recipes import load_recipes
    from relay.routing import route_event
    from relay.settings import Settings
    from relay.sources import load_sources
    from relay.store import Store

    def lookup(name: str) -> str | None:
        return None

    sources = load_sources(folder / "recipes", lookup)
    recipes = load_recipes(folder / "recipes", sources, lookup,
                           DestinationContext(data_dir=folder / "data", settings=Settings()))
    template = json.loads(SAMPLE.read_text())
    store = Store(folder / "relay.db")
    store.db.conn.execute("PRAGMA synchronous = OFF")  # a throwaway database
    try:
        with store.db.atomic():
            for n in range(count):
                body = json.dumps({**template, "slug": f"backlog{n:08d}"}).encode()
                status, event_id = store.insert_event(
                    source="tito", platform="tito", type="ticket.completed", dedup_key=f"b{n}",
                    is_test=False, headers={"content-type": "application/json"}, body=body, matched=True)
                assert status == "accepted"
            events = store.unrouted_events(limit=count)
            for event in events:
                routed = route_event(recipes, event)
                store.record_routing(event["id"], routed.routes, routed.deliveries)
            while store.index_for_search():
                pass
    finally:
        store.close()


def bench_backlog(args: argparse.Namespace) -> dict[str, Any]:
    runs = []
    for i in range(args.runs):
        recipe = RECIPE.format(url=f"http://127.0.0.1:{args.sink_port}/backlog")
        folder = folder_for(args.work, f"backlog{i}", {"tito-crm": recipe})
        queue_backlog(folder, args.backlog)
        get_json(args.sink_port, "/reset")
        relay = Relay(folder, RELAY_ALLOW_NETWORKS="loopback")
        try:
            started = time.time()
            relay.start()
            cpu = cpu_seconds(relay.pid)
            with contextlib.ExitStack() as stack:
                if i == 0:
                    stack.enter_context(profiled(args, relay.pid, "backlog", args.backlog / 2000))
                counts = relay.drained(args.sink_port, args.backlog, args.drain_timeout,
                                       f"backlog run {i + 1}")
            sink = get_json(args.sink_port, "/stats")
            last = counts["last_delivered"]
            r = {"rate": counts["delivered"] / (last - sink["first"]),
                 "rate_from_start": counts["delivered"] / (last - started),
                 "delivered": counts["delivered"], "lost": args.backlog - counts["delivered"],
                 "cpu": (cpu_seconds(relay.pid) - cpu) / (last - sink["first"]),
                 "cpu_us": (cpu_seconds(relay.pid) - cpu) / max(1, counts["delivered"]) * 1e6,
                 "rss_mb": peak_rss_mb(relay.pid)}
        finally:
            relay.stop()
        runs.append(r)
        say(f"  backlog run {i + 1}: {r['delivered']:,} delivered at {r['rate']:,.0f}/s "
            f"({r['rate_from_start']:,.0f}/s counting start-up), relay CPU {r['cpu']:.0%}, "
            f"peak RSS {r['rss_mb']:.0f} MB")
    return median_of(runs, sums=("lost",))


def bench_startup(args: argparse.Namespace) -> dict[str, Any]:
    url = f"http://127.0.0.1:{args.sink_port}/startup"
    recipes = {f"recipe-{n:03d}": RECIPE.format(url=f"{url}/{n}").replace(
        'events: ["ticket.completed"]', f'events: ["ticket.completed"]\nwhen: "price != \'{n}.00\'"')
        for n in range(args.recipes)}
    folder = folder_for(args.work, "startup", recipes, installed=False)
    times = []
    for i in range(args.runs + 1):  # the first start makes the database; then restarts
        relay = Relay(folder, RELAY_ALLOW_NETWORKS="loopback")
        try:
            times.append(relay.start())
            health = get_json(relay.port, "/healthz")
            rss = peak_rss_mb(relay.pid)
        finally:
            relay.stop()
        say(f"  start-up {'(first, new database)' if i == 0 else f'run {i}'}: {times[-1]:.2f} s, "
            f"{health['recipes']} recipes ({health['errors']} with errors), RSS {rss:.0f} MB")
    assert health["recipes"] == args.recipes and health["errors"] == 0, health
    return {"first_s": times[0], "startup_s": statistics.median(times[1:]), "rss_mb": rss,
            "recipes": args.recipes}


def bench_log(args: argparse.Namespace) -> dict[str, Any]:
    folder = args.log_db or (args.work / "log")
    emails = log_page.ensure_built(folder, args.log_events)
    size = (folder / "relay.db").stat().st_size
    with contextlib.closing(sqlite3.connect(folder / "relay.db")) as db:
        events = db.execute("SELECT COUNT(*) FROM events").fetchone()[0]
    port = free_port()
    proc = log_page.start_relay(folder, port)
    pages: list[dict[str, Any]] = []
    try:
        log_page.wait_healthy(proc, f"http://127.0.0.1:{port}")
        with contextlib.closing(log_page.login(f"http://127.0.0.1:{port}")) as client:
            for name, path in log_page.cases(client, emails):
                median, p95, rows = log_page.timed(client, path, args.log_runs)
                pages.append({"name": name, "path": path, "median_ms": median, "p95_ms": p95, "rows": rows})
                say(f"  {name}: median {median:.1f} ms, p95 {p95:.1f} ms, {rows} rows")
        rss = peak_rss_mb(proc.pid)
    finally:
        stop(proc)
    by_name = {p["name"]: p for p in pages}
    slowest = max(pages, key=lambda p: p["median_ms"])
    return {"events": events, "db_gib": size / 2**30, "pages": pages, "rss_mb": rss,
            "newest_ms": by_name["log, newest events"]["median_ms"],
            "search_ms": by_name["search: the start of a name, in dead deliveries"]["median_ms"],
            "slowest_ms": slowest["median_ms"], "slowest": slowest["name"]}


# --- report ------------------------------------------------------------------------


def machine() -> dict[str, str]:
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    wrk_version = subprocess.run(["wrk", "-v"], capture_output=True, text=True).stdout.split("[")[0].strip()
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                            capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--", "relay"],
                           capture_output=True, text=True).stdout.strip()
    import starlette
    import uvicorn
    return {
        "cpu": cpu, "cores": str(os.cpu_count()), "kernel": platform.release(),
        "python": platform.python_version(),
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "load": " ".join(Path("/proc/loadavg").read_text().split()[:3]),
        "versions": f"uvicorn {uvicorn.__version__}, starlette {starlette.__version__}, {wrk_version}",
        "commit": commit + (" + uncommitted changes in relay/" if dirty else ""),
    }


def pct(value: float, of: float) -> str:
    return f"{value / of:.0%}" if of else "-"


def times(value: float, of: float) -> str:
    return f"{value / of:.1f}x" if of else "-"


def check(ok: bool) -> str:
    return "yes" if ok else "**no**"


def report(args: argparse.Namespace, r: dict[str, Any], box: dict[str, str]) -> str:
    ceiling = r.get("ceiling") or {}
    c_rps, c_p50, c_p99 = ceiling.get("rps", 0.0), ceiling.get("p50_ms", 0.0), ceiling.get("p99_ms", 0.0)
    rows: list[tuple[str, str, str, str, str]] = []  # measure, value, vs ceiling, target, met

    def add(measure: str, value: str, ratio: str = "-", target: str = "-", met: str = "-") -> None:
        rows.append((measure, value, ratio, target, met))

    if ceiling:
        add("ceiling (bare starlette, HMAC only): requests/s", f"{c_rps:,.0f}", "100%")
        add("ceiling: p50 / p99 latency", f"{c_p50:.1f} / {c_p99:.1f} ms", "1.0x")
    if "floor" in r:
        f = r["floor"]
        add("floor (the same + json.loads + SQLite group commit): requests/s", f"{f['rps']:,.0f}",
            pct(f["rps"], c_rps))
    if "sink" in r:
        s = r["sink"]
        add("sink (delivery target): requests/s", f"{s['rps']:,.0f}", pct(s["rps"], c_rps))
    if "ingest" in r:
        i = r["ingest"]
        add("ingest: requests/s", f"{i['rps']:,.0f}", pct(i["rps"], c_rps),
            f">= {TARGETS['ingest']:.0%}", check(i["rps"] >= TARGETS["ingest"] * c_rps))
        add("ingest: p50 / p99 latency", f"{i['p50_ms']:.1f} / {i['p99_ms']:.1f} ms",
            f"{times(i['p50_ms'], c_p50)} / {times(i['p99_ms'], c_p99)}",
            f"p99 < {TARGETS['ingest_p99_ms']:g} ms", check(i["p99_ms"] < TARGETS["ingest_p99_ms"]))
        add("ingest: errors (non-2xx, socket) / 2xx not committed", f"{i['errors']} / {i['uncommitted']}",
            "-", "0 / 0", check(i["errors"] == 0 and i["uncommitted"] == 0))
    if "relay" in r:
        x = r["relay"]
        add("relay: end-to-end events/s (accepted, delivered)", f"{x['e2e']:,.0f}", pct(x["e2e"], c_rps),
            f">= {TARGETS['relay']:.0%}", check(x["e2e"] >= TARGETS["relay"] * c_rps))
        add("relay: ingest requests/s meanwhile, p99", f"{x['rps']:,.0f}, {x['p99_ms']:.1f} ms",
            pct(x["rps"], c_rps))
        add("relay: lost (accepted - delivered) / errors", f"{x['lost']} / {x['errors']}", "-", "0",
            check(x["lost"] == 0 and x["errors"] == 0))
    if "backlog" in r:
        b = r["backlog"]
        add(f"backlog: {args.backlog:,} queued deliveries drained, deliveries/s", f"{b['rate']:,.0f}",
            pct(b["rate"], c_rps), f">= {TARGETS['backlog']:,.0f}/s", check(b["rate"] >= TARGETS["backlog"]))
    if "log" in r:
        lg = r["log"]
        target = f"< {TARGETS['log_ms']:g} ms"
        add(f"log page, newest events ({lg['events']:,} events)", f"{lg['newest_ms']:.0f} ms", "-",
            target, check(lg["newest_ms"] < TARGETS["log_ms"]))
        add("log: filtered search (a name, dead deliveries)", f"{lg['search_ms']:.0f} ms", "-",
            target, check(lg["search_ms"] < TARGETS["log_ms"]))
        add(f"log: slowest page ({lg['slowest']})", f"{lg['slowest_ms']:.0f} ms", "-",
            target, check(lg["slowest_ms"] < TARGETS["log_ms"]))
    if "startup" in r:
        st = r["startup"]
        add(f"start-up to a healthy /healthz, {st['recipes']} recipes", f"{st['startup_s']:.2f} s", "-",
            f"< {TARGETS['startup_s']:g} s", check(st["startup_s"] < TARGETS["startup_s"]))
    loaded = [r[k]["rss_mb"] for k in ("ingest", "relay", "backlog") if k in r]
    if loaded:
        peak = max(loaded)
        add("relay's peak memory under load (VmHWM)", f"{peak:.0f} MB", "-",
            f"< {TARGETS['rss_mb']:g} MB", check(peak < TARGETS["rss_mb"]))

    lines = [
        f"Machine: {box['cpu']}, {box['cores']} cores, Linux {box['kernel']}, Python {box['python']}; "
        f"{box['versions']}. {box['date']}, load average {box['load']} at the start, "
        f"{r.get('load_end', '?')} at the end; relay at {box['commit']}.",
        "",
        f"wrk -t {args.threads} -c {args.connections} -d {args.duration}s, {args.body_size:,}-byte signed "
        f"Tito payload; median of {args.runs} run(s). Ratios are to the ceiling measured in this run.",
        "",
        "| measure | value | vs ceiling | target | met |",
        "|---|---:|---:|---|---|",
        *[f"| {m} | {v} | {ra} | {t} | {ok} |" for m, v, ra, t, ok in rows],
    ]
    return "\n".join(lines)


def details(args: argparse.Namespace, r: dict[str, Any]) -> str:
    out = ["## Details", ""]
    if "ceiling" in r:
        c = r["ceiling"]
        out.append(f"- ceiling: {c['cpu_us']:.0f} us of CPU a request ({c['cpu']:.0%} of a core; wrk "
                   "takes the rest of the two).")
    if "floor" in r:
        f = r["floor"]
        out.append(f"- floor: {f['cpu_us']:.0f} us of CPU a request ({f['cpu']:.0%} of a core), p99 "
                   f"{f['p99_ms']:.1f} ms: the least a durable ingest costs in this stack (bench/ceiling.py "
                   "--durable).")
    if "ingest" in r:
        i = r["ingest"]
        out.append(f"- ingest: relay used {i['cpu']:.0%} of a core during the load, {i['cpu_us']:.0f} us of CPU "
                   f"a request (all its threads); peak RSS {i['rss_mb']:.0f} MB; {i['duplicates']} "
                   "redeliveries recognised (expected 0).")
    if "relay" in r:
        x = r["relay"]
        out.append(f"- relay: {x['accepted']:,.0f} events accepted and {x['delivered']:,.0f} delivered per run "
                   f"(median); the queue drained {x['drain_after_load_s']:.1f} s after the load ended; "
                   f"deliveries went out at {x['delivery_rate']:,.0f}/s; {x['sent_twice']} sent twice; "
                   f"relay used {x['cpu']:.0%} of a core during the load and {x['cpu_us_event']:.0f} us of CPU "
                   f"per event from receiving to delivered; peak RSS {x['rss_mb']:.0f} MB.")
    if "backlog" in r:
        b = r["backlog"]
        out.append(f"- backlog: {b['rate_from_start']:,.0f} deliveries/s counting relay's start-up; "
                   f"relay used {b['cpu']:.0%} of a core, {b['cpu_us']:.0f} us of CPU a delivery; "
                   f"peak RSS {b['rss_mb']:.0f} MB.")
    if "startup" in r:
        st = r["startup"]
        out.append(f"- start-up: the first start (new database, admin account made) took "
                   f"{st['first_s']:.2f} s; RSS after start {st['rss_mb']:.0f} MB.")
    if "log" in r:
        lg = r["log"]
        out += ["", f"The log with {lg['events']:,} events (database {lg['db_gib']:.2f} GiB), "
                f"{args.log_runs} requests each; relay's peak RSS {lg['rss_mb']:.0f} MB (logging in checks the "
                "password with argon2, which takes 64 MiB for a moment):", "",
                "| page | median | p95 | rows |", "|---|---:|---:|---:|"]
        out += [f"| {p['name']} | {p['median_ms']:.1f} ms | {p['p95_ms']:.1f} ms | {p['rows']} |"
                for p in lg["pages"]]
    if "clients" in r:
        out += ["", f"HTTP clients, POSTs/s of a small JSON to the sink ({args.client_duration:g} s each, "
                "one pooled client, uvloop; bench/http_clients.py):", "",
                http_clients.table(r["clients"], args.client_concurrency)]
    return "\n".join(out)


SCENARIOS = ("ceiling", "floor", "sink", "ingest", "relay", "backlog", "startup", "log", "clients")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=int, default=10, help="seconds of load per wrk run (10)")
    parser.add_argument("--runs", type=int, default=3, help="runs per scenario; figures are medians (3)")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--backlog", type=int, default=10_000, help="deliveries queued for the backlog")
    parser.add_argument("--recipes", type=int, default=100, help="recipes for the start-up")
    parser.add_argument("--log-events", type=int, default=1_000_000)
    parser.add_argument("--log-runs", type=int, default=20)
    parser.add_argument("--log-db", type=Path, help="build (or reuse) the log's database in this folder")
    parser.add_argument("--drain-timeout", type=float, default=600)
    parser.add_argument("--client-duration", type=float, default=3.0)
    parser.add_argument("--client-concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--only", nargs="+", choices=SCENARIOS, help="run only these (the ceiling always)")
    parser.add_argument("--quick", action="store_true", help="1 run of 5 s each, a 100,000-event log")
    parser.add_argument("--profile", type=Path, metavar="DIR",
                        help="record relay with py-spy during the first run of ingest, relay and backlog")
    parser.add_argument("--out", type=Path, default=BENCH / "results.md")
    args = parser.parse_args()
    args.py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if args.profile and not Path(args.py_spy).exists():
        raise SystemExit("--profile needs py-spy: pip install py-spy")
    if args.quick:
        args.duration, args.runs, args.log_events, args.log_runs = 5, 1, 100_000, 5
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed: apt-get install wrk")
    wanted = set(args.only or SCENARIOS) | {"ceiling"}
    box = machine()
    say(f"{box['cpu']}, {box['cores']} cores, load average {box['load']}")
    args.work = Path(tempfile.mkdtemp(prefix="relay-bench-"))
    args.body_file = args.work / "tito-body.json"
    args.body_size = body_template(args.body_file)
    results: dict[str, Any] = {}
    steps: list[tuple[str, Callable[[], Any]]] = []
    try:
        args.sink_port = free_port()
        with process([sys.executable, str(BENCH / "sink.py"), "--port", str(args.sink_port)],
                     args.sink_port, args.work / "sink.log") as sink:
            ceiling_port = free_port()

            def ceiling() -> dict[str, Any]:
                with process([sys.executable, str(BENCH / "ceiling.py"), "--port", str(ceiling_port),
                              "--secret", SECRET], ceiling_port, args.work / "ceiling.log") as proc:
                    return bench_plain(args, "ceiling", f"http://127.0.0.1:{ceiling_port}/hooks/tito", proc.pid)

            def floor() -> dict[str, Any]:
                floor_port = free_port()
                with process([sys.executable, str(BENCH / "ceiling.py"), "--port", str(floor_port),
                              "--secret", SECRET, "--durable", str(args.work / "floor.db")],
                             floor_port, args.work / "floor.log") as proc:
                    return bench_plain(args, "floor", f"http://127.0.0.1:{floor_port}/hooks/tito", proc.pid)

            steps = [
                ("ceiling", ceiling),
                ("floor", floor),
                ("sink", lambda: bench_plain(args, "sink", f"http://127.0.0.1:{args.sink_port}/load", sink.pid)),
                ("ingest", lambda: bench_ingest(args)),
                ("relay", lambda: bench_relay(args)),
                ("backlog", lambda: bench_backlog(args)),
                ("startup", lambda: bench_startup(args)),
                ("clients", lambda: http_clients.run(
                    f"http://127.0.0.1:{args.sink_port}/clients", args.client_concurrency, args.client_duration)),
            ]
            for name, step in steps:
                if name in wanted:
                    say(f"{name} ...")
                    results[name] = step()
        if "log" in wanted:  # last: its database takes a while to build
            say("log ...")
            results["log"] = bench_log(args)
    finally:
        shutil.rmtree(args.work, ignore_errors=True)
    results["load_end"] = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    table = report(args, results, box)
    text = "# relay benchmark results\n\nWritten by `bench/run.py`" + (" --quick" if args.quick else "") + \
        ".\n\n" + table + "\n\n" + details(args, results) + "\n"
    args.out.write_text(text)
    print(table)
    print()
    print(details(args, results))
    say(f"\nwritten to {args.out}")


if __name__ == "__main__":
    main()
