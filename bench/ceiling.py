"""The stack's ceiling: a bare starlette app that verifies a Tito signature and answers.

``POST /hooks/tito`` reads the body, checks ``Tito-Signature`` (base64 HMAC-SHA256 of
the body, as relay/sources/tito.py does) and answers ``200 {"status": "accepted"}``,
or 401. Nothing is parsed, stored or delivered. It runs under uvicorn exactly as
``relay serve`` does: uvloop, httptools, one worker, no access log.

With ``--durable DB`` it also does the least that "stored before the 2xx" takes in
this stack, the way relay's writer does it (relay/store.py ``Writer``): the body
parsed with ``json.loads``, inserted into SQLite (WAL, one table with a primary key)
on the event loop's thread, the bodies that arrived meanwhile in one transaction
(group commit), the WAL flushed to the disk (``fdatasync``) by a thread of its own,
and the answer only after that flush. No checks, no dedup, no routing, no log: what
bounds any durable ingest written this way, relay's included.

    python bench/ceiling.py --port 9200 --secret bench-tito
    python bench/ceiling.py --port 9201 --secret bench-tito --durable /tmp/floor.db
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import hmac
import json
import os
import queue
import sqlite3
import threading
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route


class GroupCommit:
    """Inserts on the event loop's thread, one transaction for what queued up meanwhile,
    one fdatasync of the WAL (on its own thread) before the callers are told."""

    def __init__(self, path: str) -> None:
        self.conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self.conn.execute("PRAGMA journal_mode = WAL")
        self.conn.execute("PRAGMA synchronous = NORMAL")  # the flush below makes it durable
        self.conn.execute("CREATE TABLE IF NOT EXISTS events (id INTEGER PRIMARY KEY,"
                          " received_at REAL, body BLOB)")
        self.wal = os.open(path + "-wal", os.O_RDONLY)
        self.pending: list[tuple[bytes, asyncio.Future[int]]] = []
        self.scheduled = False
        self.flushing = False
        self.flushes: queue.SimpleQueue[tuple[asyncio.AbstractEventLoop, list[Any]]] = queue.SimpleQueue()
        threading.Thread(target=self._flusher, daemon=True).start()

    async def store(self, body: bytes) -> int:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[int] = loop.create_future()
        self.pending.append((body, future))
        self._kick(loop)
        return await future

    def _kick(self, loop: asyncio.AbstractEventLoop) -> None:
        if self.pending and not self.scheduled and not self.flushing:
            self.scheduled = True
            loop.call_soon(self._commit, loop)

    def _commit(self, loop: asyncio.AbstractEventLoop) -> None:
        self.scheduled = False
        batch, self.pending = self.pending, []
        self.conn.execute("BEGIN IMMEDIATE")
        ids = [self.conn.execute("INSERT INTO events (received_at, body) VALUES (0, ?)",
                                 [body]).lastrowid for body, _ in batch]
        self.conn.execute("COMMIT")
        self.flushing = True
        self.flushes.put((loop, [(f, i) for (_, f), i in zip(batch, ids, strict=True)]))

    def _flusher(self) -> None:
        while True:
            loop, done = self.flushes.get()
            os.fdatasync(self.wal)
            loop.call_soon_threadsafe(self._flushed, loop, done)

    def _flushed(self, loop: asyncio.AbstractEventLoop, done: list[tuple[asyncio.Future[int], Any]]) -> None:
        self.flushing = False
        _settle(done)
        self._kick(loop)


def _settle(done: list[tuple[asyncio.Future[int], Any]]) -> None:
    for future, value in done:
        if not future.done():
            future.set_result(value)


def make_app(secret: str, durable: str | None = None) -> Starlette:
    key = secret.encode()
    writer = GroupCommit(durable) if durable else None

    async def hook(request: Request) -> JSONResponse:
        body = await request.body()
        expected = base64.b64encode(hmac.new(key, body, hashlib.sha256).digest()).decode()
        if not hmac.compare_digest(expected, request.headers.get("tito-signature", "")):
            return JSONResponse({"error": "signature"}, status_code=401)
        if writer is not None:
            json.loads(body)
            return JSONResponse({"status": "accepted", "event": await writer.store(body)})
        return JSONResponse({"status": "accepted"})

    async def healthz(request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok"})

    return Starlette(routes=[Route("/hooks/{source}", hook, methods=["POST"]),
                             Route("/healthz", healthz)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9200)
    parser.add_argument("--secret", default="bench-tito")
    parser.add_argument("--durable", metavar="DB", help="store each body in this SQLite file first")
    args = parser.parse_args()
    uvicorn.run(make_app(args.secret, args.durable), host=args.host, port=args.port, loop="uvloop",
                http="httptools", workers=1, access_log=False, log_level="warning", server_header=False)


if __name__ == "__main__":
    main()
