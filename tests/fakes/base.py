"""The common part of every fake vendor API: a real HTTP server on 127.0.0.1.

A vendor's fake subclasses ``FakeAPI`` and implements ``handle(request)``, which
checks the request against the vendor's documented contract (auth, path, body
shape) and answers the way the vendor does. The base records every request, can
be told to answer the next requests with scripted failures (``fail_next``), and
can enforce a rolling-window rate limit (``rate_limit``), counting how many
requests ever arrived over it.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit


@dataclasses.dataclass
class Request:
    method: str
    path: str  # without the query string
    query: dict[str, list[str]]
    headers: dict[str, str]  # lower-case names
    body: bytes
    at: float

    def json(self) -> Any:
        return json.loads(self.body)


@dataclasses.dataclass
class Answer:
    status: int = 200
    body: Any = None  # dict/list -> JSON; str/bytes as they are
    headers: dict[str, str] = dataclasses.field(default_factory=dict)
    content_type: str = "application/json"

    def encoded(self) -> bytes:
        if self.body is None:
            return b""
        if isinstance(self.body, bytes):
            return self.body
        if isinstance(self.body, str):
            return self.body.encode()
        return json.dumps(self.body).encode()


class FakeAPI:
    """Subclass and implement ``handle``; ``url`` is where the fake listens."""

    def __init__(self) -> None:
        self.requests: list[Request] = []
        self.scripted: list[Answer] = []
        self.lock = threading.RLock()
        self.limit: tuple[int, float] | None = None
        self.window: collections.deque[float] = collections.deque()
        self.over_limit = 0  # requests that arrived while the window was full
        self.max_in_window = 0
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _serve(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length) if length else b""
                parts = urlsplit(self.path)
                request = Request(self.command, parts.path, parse_qs(parts.query),
                                  {k.lower(): v for k, v in self.headers.items()}, body, time.time())
                answer = fake._answer(request)
                data = answer.encoded()
                self.send_response(answer.status)
                for k, v in answer.headers.items():
                    self.send_header(k, v)
                if data or answer.status != 204:
                    self.send_header("Content-Type", answer.content_type)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _serve

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    # --- what tests use ---------------------------------------------------------

    def fail_next(self, *answers: Answer) -> None:
        """Answer the next requests (that pass auth) with these, in order."""
        with self.lock:
            self.scripted.extend(answers)

    def rate_limit(self, limit: int, per: float) -> None:
        """Refuse (with ``rate_limited()``) requests beyond ``limit`` in any ``per`` s."""
        self.limit = (limit, per)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    # --- what a vendor's fake implements ----------------------------------------

    def authorized(self, request: Request) -> Answer | None:
        """None when the request's credentials are right, else the vendor's 401/403."""
        return None

    def handle(self, request: Request) -> Answer:
        raise NotImplementedError

    def rate_limited(self, request: Request) -> Answer:
        return Answer(429, {"error": "rate limited"})

    # --- the common flow ---------------------------------------------------------

    def _answer(self, request: Request) -> Answer:
        with self.lock:
            self.requests.append(request)
            if self.limit is not None:
                limit, per = self.limit
                while self.window and self.window[0] <= request.at - per:
                    self.window.popleft()
                if len(self.window) >= limit:
                    self.over_limit += 1
                    return self.rate_limited(request)
                self.window.append(request.at)
                self.max_in_window = max(self.max_in_window, len(self.window))
            refused = self.authorized(request)
            if refused is not None:
                return refused
            if self.scripted:
                return self.scripted.pop(0)
            try:
                return self.handle(request)
            except Exception as e:  # a bug in the fake shows as a 500 the test will see
                return Answer(500, {"fake_error": f"{type(e).__name__}: {e}"})
