"""A fast local HTTP sink for the benchmarks: answers every POST ``200 {"ok":true}``.

A bare asyncio protocol on uvloop with httptools' parser (no framework), keep-alive,
one process: it answers tens of thousands of requests a second on one core, so it is
never what limits relay's deliveries. It counts the POSTs it receives and the time
of the first and last one; ``GET /stats`` returns them as JSON and ``GET /reset``
sets them back to zero.

    python bench/sink.py --port 9100
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from typing import Any

import httptools
import uvloop

OK = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 11\r\n\r\n{\"ok\":true}"
OK_CLOSE = OK.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n", 1)


class Stats:
    posts = 0
    first = 0.0
    last = 0.0

    @classmethod
    def reset(cls) -> None:
        cls.posts, cls.first, cls.last = 0, 0.0, 0.0

    @classmethod
    def as_json(cls) -> bytes:
        return json.dumps({"posts": cls.posts, "first": cls.first, "last": cls.last}).encode()


class Sink(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: Any = transport  # uvloop's transport is not an asyncio.Transport
        self.parser = httptools.HttpRequestParser(self)
        self.url = b""

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.transport.close()

    def on_url(self, url: bytes) -> None:
        self.url = url

    def on_message_complete(self) -> None:
        keep = self.parser.should_keep_alive()
        if self.parser.get_method() == b"POST":
            now = time.time()
            Stats.posts += 1
            Stats.last = now
            if not Stats.first:
                Stats.first = now
            self.transport.write(OK if keep else OK_CLOSE)
        else:
            if self.url.startswith(b"/reset"):
                Stats.reset()
            body = Stats.as_json()
            self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                                 b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
        if not keep:
            self.transport.close()


async def serve(host: str, port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Sink, host, port, backlog=1024)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9100)
    args = parser.parse_args()
    uvloop.run(serve(args.host, args.port))


if __name__ == "__main__":
    main()
