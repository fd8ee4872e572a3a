"""How many POSTs a second each Python HTTP client sends to a fast local server.

Delivery throughput depends on the client relay sends with, so this compares, on
loopback against bench/sink.py (started here unless ``--url`` is given):

- httpx's own async transport (``httpx.AsyncClient()``, what relay used before);
- relay's own client (``guarded_client`` of relay/outbound.py, as relay/app.py builds
  it): httpx's API over relay's own aiohttp transport, with the connect-time address
  check;
- what relay's deliveries send with: the same client's ``send_bytes``, the same bytes
  on the wire without httpx's request and response objects;
- httpx with the aiohttp transport of the ``httpx-aiohttp`` package;
- aiohttp directly.

Each sends the same small JSON POST (the size of a mapped delivery) for
``--duration`` seconds, with 1, 8 (relay's requests in flight per destination) and
32 requests in flight, on one pooled keep-alive client, under uvloop as relay runs.

    python bench/http_clients.py
    python bench/http_clients.py --duration 3 --concurrency 1 8 32

The last row needs ``httpx-aiohttp`` (``pip install httpx-aiohttp``), which relay
itself does not use; a client whose package is missing is reported as such and skipped.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

BODY = json.dumps({"email": "winter@example.com", "name": "Peter Winter",
                   "reference": "1i5nfwf2t", "ticket": "Early Bird"}).encode()
HEADERS = {"Content-Type": "application/json", "Idempotency-Key": "0123456789abcdef0123456789abcdef"}

Post = Callable[[], Awaitable[int]]


async def load(post: Post, concurrency: int, duration: float) -> tuple[float, int]:
    """(POSTs per second, errors) with ``concurrency`` requests in flight for ``duration``."""
    for _ in range(min(concurrency, 8)):  # open connections and warm up first
        await post()
    done = errors = 0
    deadline = time.perf_counter() + duration

    async def worker() -> None:
        nonlocal done, errors
        while time.perf_counter() < deadline:
            try:
                status = await post()
                if 200 <= status < 300:
                    done += 1
                else:
                    errors += 1
            except Exception:
                errors += 1

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return done / (time.perf_counter() - started), errors


@contextlib.asynccontextmanager
async def httpx_default(url: str, limit: int) -> Any:
    import httpx
    async with httpx.AsyncClient(limits=httpx.Limits(max_connections=limit)) as client:
        async def post() -> int:
            return (await client.post(url, content=BODY, headers=HEADERS)).status_code
        yield post


def _relay(limit: int) -> Any:
    """relay's client, as relay/app.py builds it, for loopback."""
    import httpx

    from relay.outbound import Policy, guarded_client, parse_networks
    return guarded_client(Policy(parse_networks("loopback")),
                          limits=httpx.Limits(max_connections=max(limit, 10)),
                          headers={"User-Agent": "relay"})


@contextlib.asynccontextmanager
async def relay_client(url: str, limit: int) -> Any:
    async with _relay(limit) as client:
        async def post() -> int:
            response = await client.request("POST", url, content=BODY, headers=HEADERS, timeout=30,
                                            follow_redirects=False)
            return response.status_code
        yield post


@contextlib.asynccontextmanager
async def relay_send_bytes(url: str, limit: int) -> Any:
    async with _relay(limit) as client:
        async def post() -> int:
            answer = await client.send_bytes("POST", url, content=BODY, headers=HEADERS, timeout=30)
            return answer.status_code
        yield post


@contextlib.asynccontextmanager
async def httpx_aiohttp(url: str, limit: int) -> Any:
    import aiohttp
    import httpx
    from httpx_aiohttp import AiohttpTransport
    transport = AiohttpTransport(client=lambda: aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=limit)))
    async with httpx.AsyncClient(transport=transport) as client:
        async def post() -> int:
            return (await client.post(url, content=BODY, headers=HEADERS)).status_code
        yield post


@contextlib.asynccontextmanager
async def aiohttp_direct(url: str, limit: int) -> Any:
    import aiohttp
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=limit)) as session:
        async def post() -> int:
            async with session.post(url, data=BODY, headers=HEADERS) as response:
                await response.read()
                return response.status
        yield post


CLIENTS = [
    ("httpx (its own async transport)", httpx_default),
    ("relay's client (httpx API, aiohttp, address check)", relay_client),
    ("relay's deliveries (send_bytes: the same, without httpx's objects)", relay_send_bytes),
    ("httpx + httpx-aiohttp transport", httpx_aiohttp),
    ("aiohttp directly", aiohttp_direct),
]


async def measure(url: str, concurrency: list[int], duration: float) -> list[dict[Any, Any]]:
    rows = []
    for name, make in CLIENTS:
        row: dict[Any, Any] = {"client": name}
        for c in concurrency:
            try:
                async with make(url, max(c, 1)) as post:
                    rate, errors = await load(post, c, duration)
                row[c] = round(rate)
                if errors:
                    row[f"errors {c}"] = errors
            except ImportError as e:
                row["missing"] = str(e)
                break
        rows.append(row)
    return rows


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def sink() -> Iterator[str]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, str(ROOT / "bench" / "sink.py"), "--port", str(port)])
    try:
        for _ in range(200):
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
                break
            time.sleep(0.05)
        yield f"http://127.0.0.1:{port}/post"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def run(url: str | None, concurrency: list[int], duration: float) -> list[dict[Any, Any]]:
    """Measure every client (starting a sink unless ``url`` is given); one row per client."""
    import uvloop
    if url:
        return uvloop.run(measure(url, concurrency, duration))
    with sink() as sink_url:
        return uvloop.run(measure(sink_url, concurrency, duration))


def table(rows: list[dict[Any, Any]], concurrency: list[int]) -> str:
    head = "| client | " + " | ".join(f"{c} in flight" for c in concurrency) + " |"
    lines = [head, "|---|" + "---:|" * len(concurrency)]
    for row in rows:
        if "missing" in row:
            lines.append(f"| {row['client']} | " + " | ".join(["not installed"] * len(concurrency)) + " |")
            continue
        cells = [f"{row[c]:,}/s" + (f" ({row[f'errors {c}']} errors)" if f"errors {c}" in row else "")
                 for c in concurrency]
        lines.append(f"| {row['client']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", help="POST here instead of a sink started for the run")
    parser.add_argument("--duration", type=float, default=3.0, help="seconds per client and concurrency")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--json", action="store_true", help="print the rows as JSON")
    args = parser.parse_args()
    rows = run(args.url, args.concurrency, args.duration)
    print(json.dumps(rows) if args.json else table(rows, args.concurrency))


if __name__ == "__main__":
    main()
