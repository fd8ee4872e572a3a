"""Bad bodies, over real HTTP to relay on loopback: each gets a plain 4xx, relay stays small
and keeps serving everyone else.

The bodies here are correctly signed (Webconnex, an HMAC of the body), so that they get
past verification and reach the reading and parsing they are meant to break; an unsigned
bad body never gets that far (401, see test_unsigned_bad_body_is_never_parsed). Requests
httpx will not send (a lying Content-Length, a slow chunked upload, two requests in one
write) are written on a raw socket.
"""

from __future__ import annotations

import contextlib
import json
import re
import select
import socket
import threading
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from conftest import RelayServer, Sink, sign, wait_until, write_recipe, write_sources
from relay import ingest
from relay.settings import Settings

MAX_BODY = 1024 * 1024
MiB = 1024 * 1024
SOCKET_TIMEOUT = 30.0
WHAT_TO_DO = re.compile(r"\b(send|Send|relay expects|relay takes|raise)\b")


@pytest.fixture(scope="module")
def sink() -> Iterator[Sink]:
    s = Sink()
    yield s
    s.close()


@pytest.fixture(scope="module")
def relay(tmp_path_factory: pytest.TempPathFactory, sink: Sink) -> Iterator[RelayServer]:
    tmp: Path = tmp_path_factory.mktemp("bad-bodies")
    write_sources(tmp / "recipes")
    write_recipe(tmp / "recipes", "webconnex", f"""\
source: webconnex
fields:
  id: eventId
to:
  - type: http
    url: {sink.url}/webconnex
""")
    server = RelayServer(Settings.from_env(
        environ={}, recipes=tmp / "recipes", db=tmp / "relay.db", data=tmp / "data",
        max_body=MAX_BODY, allow_networks="loopback", retry_base=0.2, delivery_timeout=5.0))
    yield server
    server.stop()


def show(capsys: pytest.CaptureFixture[str], text: str) -> None:
    """Print past pytest's capture: these numbers are part of what the tests show."""
    with capsys.disabled():
        print(f"\n    {text}")


def events(relay: RelayServer) -> int:
    return int(relay.rows("SELECT count(*) AS n FROM events")[0]["n"])


def last_rejection(relay: RelayServer) -> dict[str, Any]:
    return relay.rows("SELECT status_code, reason, body_size FROM rejections ORDER BY id DESC LIMIT 1")[0]


def post_signed(relay: RelayServer, body: bytes, **headers: str) -> httpx.Response:
    path, signed = sign("webconnex", "webconnex", body)
    return relay.post(path, body, {**signed, **headers})


def assert_plain_error(response: httpx.Response, status: int, says: str) -> str:
    """A 4xx whose body is ``{"error": "<one plain sentence or two>"}`` saying what to do."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    payload = response.json()
    assert list(payload) == ["error"], payload
    message = payload["error"]
    assert says in message, message
    assert WHAT_TO_DO.search(message), f"does not say what to do: {message}"
    assert len(message) < 400 and "Traceback" not in message and "sys." not in message, message
    return str(message)


def normal_event(relay: RelayServer, n: str) -> tuple[httpx.Response, float]:
    """A genuine Webconnex event, from a client of its own; (response, seconds it took)."""
    body = json.dumps({"eventId": n, "eventType": "registration"}).encode()
    path, headers = sign("webconnex", "webconnex", body)
    with httpx.Client(base_url=relay.url, timeout=SOCKET_TIMEOUT) as client:
        started = time.monotonic()
        response = client.post(path, content=body, headers=headers)
        return response, time.monotonic() - started


# --- raw HTTP ----------------------------------------------------------------------------


class Conn:
    """One raw HTTP/1.1 connection to relay, reading answers as they come."""

    def __init__(self, relay: RelayServer) -> None:
        self.sock = socket.create_connection(("127.0.0.1", relay.port), timeout=SOCKET_TIMEOUT)
        self.buffer = b""

    def __enter__(self) -> Conn:
        return self

    def __exit__(self, *exc: object) -> None:
        self.sock.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def answered(self) -> bool:
        """Has anything come back yet (without waiting)?"""
        return bool(self.buffer) or bool(select.select([self.sock], [], [], 0)[0])

    def _fill(self) -> bool:
        chunk = self.sock.recv(65536)
        self.buffer += chunk
        return bool(chunk)

    def response(self) -> tuple[int, dict[str, str], bytes] | None:
        """The next answer; None when the connection closed first."""
        try:
            while b"\r\n\r\n" not in self.buffer:
                if not self._fill():
                    return None
        except ConnectionResetError:
            return None
        head, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        headers = {k.lower(): v for k, _, v in (line.partition(": ") for line in lines[1:])}
        length = int(headers.get("content-length", "0"))
        while len(self.buffer) < length:
            if not self._fill():
                break
        body, self.buffer = self.buffer[:length], self.buffer[length:]
        return int(lines[0].split()[1]), headers, body


def request_head(path: str, headers: dict[str, str], **extra: str) -> bytes:
    lines = [f"POST {path} HTTP/1.1", "Host: 127.0.0.1"]
    lines += [f"{k}: {v}" for k, v in {**headers, **extra}.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def chunk(data: bytes) -> bytes:
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


def signed_head(body: bytes, **extra: str) -> bytes:
    path, headers = sign("webconnex", "webconnex", body)
    return request_head(path, headers, **extra)


# --- bodies that parse badly ---------------------------------------------------------------

BAD_BODIES = {
    # name: (body, substring of the error)
    "100k [ nested": (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
    "100k [ never closed": (b"[" * 100_000, "nested too deeply"),
    "100k { nested": (b'{"a":' * 100_000 + b"1" + b"}" * 100_000, "nested too deeply"),
    "101 levels": (b"[" * 101 + b"]" * 101, "nested too deeply"),
    "1e999999": (b'{"n": 1e999999}', "too large"),
    "-1e999999": (b'{"n": [-1e999999]}', "too large"),
    "10**100000": (b'{"n": 1' + b"0" * 100_000 + b"}", "digits long"),
    "a float 5000 digits long": (b'{"n": 0.' + b"3" * 5000 + b"}", "characters long"),
    "NaN": (b'{"n": NaN}', "not a JSON number"),
    "Infinity": (b'{"n": -Infinity}', "not a JSON number"),
    "invalid UTF-8": (b'{"name": "Jos\xe9"}', "not UTF-8"),
    "overlong UTF-8": (b'{"name": "\xc0\xaf"}', "not UTF-8"),
    "UTF-8 surrogate bytes": (b'{"name": "\xed\xa0\x80"}', "not UTF-8"),
    "UTF-16 with its BOM": ('{"eventId": "u16"}'.encode("utf-16"), "not UTF-8"),
    "UTF-8 with a BOM": (b'\xef\xbb\xbf{"eventId": "bom"}', "byte-order mark"),
    "bare string": (b'"a string"', "not an object or a list"),
    "bare number": (b"12345", "not an object or a list"),
    "null": (b"null", "not an object or a list"),
    "true": (b"true", "not an object or a list"),
    "duplicate keys": (b'{"eventId": "d1", "eventId": "d2"}', "twice"),
    "duplicate keys, nested": (b'{"data": [{"email": "a@x", "email": "b@x"}]}', "twice"),
    "lone surrogate escape": (b'{"name": "\\ud800"}', "surrogate"),
    "empty": (b"", "empty"),
    "only white space": (b" \r\n\t ", "empty"),
    "truncated": (b'{"eventId": "t1", "name": "Jo', "not valid JSON"),
    "trailing garbage": (b'{"eventId": "t2"} {"eventId": "t3"}', "not valid JSON"),
    "NUL bytes": (b'{"eventId": "n1"\x00}', "not valid JSON"),
}


@pytest.mark.parametrize("name", list(BAD_BODIES))
def test_bad_body_gets_a_plain_400(relay: RelayServer, sink: Sink, name: str) -> None:
    body, says = BAD_BODIES[name]
    before = events(relay)
    response = post_signed(relay, body)
    assert_plain_error(response, 400, says)
    assert events(relay) == before
    rejection = last_rejection(relay)
    assert rejection["status_code"] == 400 and says in rejection["reason"]
    assert rejection["body_size"] == len(body)
    # and the next genuine event is taken as usual
    ok, _ = normal_event(relay, f"after-{name}")
    assert ok.status_code == 200 and ok.json()["status"] == "accepted", ok.text


def test_unsigned_bad_body_is_never_parsed(relay: RelayServer) -> None:
    """Without a valid signature the body is not even parsed: 401, whatever it holds."""
    for body, _ in BAD_BODIES.values():
        path, headers = sign("webconnex", "webconnex", body, secret="not-the-secret")
        response = relay.post(path, body, headers)
        assert response.status_code == 401, response.text


@pytest.mark.parametrize("depth", [1, 50, 100])
def test_nesting_up_to_the_limit_is_accepted_and_delivered(relay: RelayServer, sink: Sink,
                                                           depth: int) -> None:
    assert ingest.MAX_DEPTH == 100
    inner = "[" * (depth - 1) + "]" * (depth - 1) or "0"  # inside the object: depth levels
    body = f'{{"eventId": "deep-{depth}", "deep": {inner}}}'.encode()
    response = post_signed(relay, body)
    assert response.status_code == 200, response.text
    wait_until(lambda: any(r.json() == {"id": f"deep-{depth}"} for r in sink.received))


def test_big_but_reasonable_numbers_are_accepted(relay: RelayServer) -> None:
    body = (b'{"eventId": "numbers", "big": ' + b"9" * ingest.MAX_NUMBER_LENGTH
            + b', "small": 1e-999999, "f": 1.7976931348623157e308}')
    response = post_signed(relay, body)
    assert response.status_code == 200, response.text


# --- compressed bodies ---------------------------------------------------------------------


def gzip_bomb(size: int = 100 * MiB, wbits: int = 31) -> bytes:
    """``size`` zero bytes, gzip-compressed (wbits 31) or zlib (15), built a MiB at a time."""
    packer = zlib.compressobj(9, zlib.DEFLATED, wbits)
    zeros = bytes(MiB)
    return b"".join([*(packer.compress(zeros) for _ in range(size // MiB)), packer.flush()])


def test_compressed_bodies_are_refused_unread(relay: RelayServer) -> None:
    """relay takes no compressed bodies, so a compression bomb is never inflated."""
    bomb = gzip_bomb()
    assert len(bomb) < MAX_BODY < 100 * MiB
    before = events(relay)
    for encoding in ["gzip", "deflate", "br", "GZIP", "identity, gzip", "x-gzip"]:
        response = post_signed(relay, bomb, **{"Content-Encoding": encoding})
        assert_plain_error(response, 400, "Compressed bodies")
    # the same header twice, the first one harmless
    path, headers = sign("webconnex", "webconnex", bomb)
    response = relay.client.post(path, content=bomb, headers=[
        *headers.items(), ("Content-Encoding", "identity"), ("Content-Encoding", "gzip")])
    assert_plain_error(response, 400, "Compressed bodies")
    # without the header the bomb is just bytes that are not JSON
    assert_plain_error(post_signed(relay, bomb), 400, "not UTF-8")
    assert_plain_error(post_signed(relay, gzip_bomb(wbits=15)), 400, "not")
    # an honest "identity" is fine
    response = post_signed(relay, b'{"eventId": "plain"}', **{"Content-Encoding": "identity"})
    assert response.status_code == 200, response.text
    assert events(relay) == before + 1


# --- too large -------------------------------------------------------------------------------


def send_slowly(conn: Conn, head: bytes, *, total: int, piece: int, chunked: bool,
                pause: float = 0.005, hold: threading.Event | None = None,
                halfway: threading.Event | None = None) -> int:
    """Send ``head`` then up to ``total`` body bytes in ``piece``s; stop at relay's answer.

    Returns how many body bytes were sent when the answer was there. With ``hold``, stop
    after ``MAX_BODY // 2`` bytes, set ``halfway`` and wait for ``hold`` before going on.
    """
    conn.send(head)
    data = b"x" * piece
    sent = 0
    for _ in range(total // piece):  # bounded: at most ``total`` bytes
        if conn.answered():
            break
        if hold is not None and halfway is not None and not halfway.is_set() and sent >= MAX_BODY // 2:
            halfway.set()
            assert hold.wait(timeout=60), "the main thread never let the slow sender go on"
        try:
            conn.send(chunk(data) if chunked else data)
        except OSError:  # relay closed the connection: its answer is in the buffer
            break
        sent += piece
        time.sleep(pause)
    return sent


def test_chunked_body_over_the_limit_is_refused_while_it_arrives(
        relay: RelayServer, capsys: pytest.CaptureFixture[str]) -> None:
    """No Content-Length: relay counts while reading and answers 413 long before the end."""
    total = 64 * MiB
    with Conn(relay) as conn:
        started = time.monotonic()
        sent = send_slowly(conn, signed_head(b"{}", **{"Transfer-Encoding": "chunked"}),
                           total=total, piece=64 * 1024, chunked=True)
        answer = conn.response()
    assert answer is not None
    status, headers, body = answer
    assert status == 413, body
    assert "RELAY_MAX_BODY" in json.loads(body)["error"]
    show(capsys, f"chunked upload of up to {total >> 20} MiB, limit {MAX_BODY >> 20} MiB: "
                 f"413 after {sent:,} bytes sent ({time.monotonic() - started:.2f} s)")
    assert MAX_BODY < sent < total
    assert last_rejection(relay)["status_code"] == 413


def test_declared_oversize_body_is_refused_before_it_is_read(
        relay: RelayServer, capsys: pytest.CaptureFixture[str]) -> None:
    """A Content-Length over the limit is answered at once, before the body."""
    total = 64 * MiB
    with Conn(relay) as conn:
        sent = send_slowly(conn, signed_head(b"{}", **{"Content-Length": str(total)}),
                           total=total, piece=64 * 1024, chunked=False, pause=0.02)
        answer = conn.response()
    assert answer is not None and answer[0] == 413, answer
    show(capsys, f"Content-Length {total:,}: 413 after {sent:,} body bytes sent")
    assert sent < MAX_BODY
    assert last_rejection(relay)["body_size"] == total


def test_chunked_over_the_limit_from_httpx(relay: RelayServer) -> None:
    """httpx sends a generator chunked: over the limit 413, under it accepted."""
    def pieces(n: int) -> Iterator[bytes]:
        for _ in range(n):
            yield b" " * 65536
    path, headers = sign("webconnex", "webconnex", b"")  # the signature does not matter here
    response = relay.client.post(path, content=pieces(32), headers=headers)
    assert_plain_error(response, 413, "RELAY_MAX_BODY")

    body = b'{"eventId": "chunked"}' + b" " * 300_000
    path, headers = sign("webconnex", "webconnex", body)
    response = relay.client.post(path, content=iter([body[:100_000], body[100_000:]]), headers=headers)
    assert response.status_code == 200, response.text


# --- a Content-Length that lies ----------------------------------------------------------


def test_content_length_longer_than_the_body_times_out(
        relay: RelayServer, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """The rest never comes: relay answers 408 after BODY_TIMEOUT instead of waiting forever."""
    assert 0 < ingest.BODY_TIMEOUT <= 60
    monkeypatch.setattr(ingest, "BODY_TIMEOUT", 1.5)
    body = b'{"eventId": "short"}'
    before = events(relay)
    with Conn(relay) as conn:
        started = time.monotonic()
        conn.send(signed_head(body, **{"Content-Length": str(len(body) + 100)}) + body)
        answer = conn.response()
        waited = time.monotonic() - started
    assert answer is not None, "relay closed the connection without an answer"
    status, _, content = answer
    assert status == 408, content
    message = json.loads(content)["error"]
    assert f"Only {len(body)} bytes of the {len(body) + 100}" in message and "Send" in message
    assert waited >= 1.4
    show(capsys, f"Content-Length 100 bytes too long: 408 after {waited:.2f} s")
    assert events(relay) == before
    assert last_rejection(relay)["status_code"] == 408


def test_stalled_uploads_do_not_hold_up_others(relay: RelayServer,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    """Twenty connections each waiting for a body that never comes; a genuine event passes."""
    with contextlib.ExitStack() as stack:
        for i in range(20):
            conn = stack.enter_context(Conn(relay))
            body = b'{"eventId": "stalled"}'
            conn.send(signed_head(body, **{"Content-Length": str(len(body) + 1000)}) + body[:i])
        response, took = normal_event(relay, "beside-stalled")
        assert response.status_code == 200 and response.json()["status"] == "accepted", response.text
        show(capsys, f"genuine event beside 20 stalled uploads: accepted in {took * 1000:.0f} ms")


def test_content_length_shorter_than_the_body(relay: RelayServer) -> None:
    """The bytes past the Content-Length are read as the next request, which stands or falls
    on its own: never glued to the first body, never stored because the first one was."""
    before = events(relay)
    # The rest is not a request: the first is refused (its signature covers the whole
    # body) and the rest gets the HTTP server's 400, which closes the connection. When
    # both arrive in one packet, uvicorn's 400 may come first and the 401 never: either
    # way nothing is stored.
    body = b'{"eventId": "cl-short", "name": "Ann"}'
    with Conn(relay) as conn:
        conn.send(signed_head(body, **{"Content-Length": str(len(body) - 10)}) + body)
        statuses = [a[0] for a in (conn.response(), conn.response()) if a]
    assert statuses in ([401, 400], [400]), statuses
    assert events(relay) == before

    # The rest is a whole forged request, hidden in a "body" signed as a whole.
    forged = b'{"eventId": "smuggled"}'
    path, headers = sign("webconnex", "webconnex", forged, secret="not-the-secret")
    smuggled = request_head(path, {**headers, "Content-Length": str(len(forged))}) + forged
    outer = b'{"eventId": "outer"}'
    with Conn(relay) as conn:
        conn.send(signed_head(outer + smuggled, **{"Content-Length": str(len(outer))})
                  + outer + smuggled)
        answers = [conn.response(), conn.response()]
    assert [a[0] if a else None for a in answers] == [401, 401], answers
    assert events(relay) == before

    # The rest is a whole genuine request: it is taken as itself, byte for byte.
    first_body = b'{"eventId": "pipelined-1"}'
    genuine = b'{"eventId": "pipelined-2", "name": "Bo"}'
    path, headers = sign("webconnex", "webconnex", genuine)
    second_request = request_head(path, {**headers, "Content-Length": str(len(genuine))}) + genuine
    with Conn(relay) as conn:
        conn.send(signed_head(first_body, **{"Content-Length": str(len(first_body))})
                  + first_body + second_request)
        answers = [conn.response(), conn.response()]
    assert [a[0] if a else None for a in answers] == [200, 200], answers
    stored = relay.rows("SELECT body FROM events ORDER BY id DESC LIMIT 2")
    assert sorted(bytes(r["body"]) for r in stored) == sorted([first_body, genuine])
    assert events(relay) == before + 2


# --- relay keeps serving, and stays small ------------------------------------------------


def test_a_genuine_event_is_taken_while_an_oversize_body_trickles_in(
        relay: RelayServer, capsys: pytest.CaptureFixture[str]) -> None:
    halfway, go = threading.Event(), threading.Event()
    result: dict[str, Any] = {}

    def slow_client() -> None:
        with Conn(relay) as conn:
            result["sent"] = send_slowly(
                conn, signed_head(b"{}", **{"Transfer-Encoding": "chunked"}), total=16 * MiB,
                piece=16 * 1024, chunked=True, pause=0.01, hold=go, halfway=halfway)
            result["answer"] = conn.response()

    thread = threading.Thread(target=slow_client, daemon=True)
    thread.start()
    try:
        assert halfway.wait(timeout=60), "the slow client never got halfway"
        response, took = normal_event(relay, "beside-slow-upload")
        assert response.status_code == 200 and response.json()["status"] == "accepted", response.text
    finally:
        go.set()
        thread.join(timeout=120)
    assert not thread.is_alive()
    assert result["answer"] is not None and result["answer"][0] == 413, result
    show(capsys, f"genuine event while a {MAX_BODY >> 10} KiB+ body trickled in: accepted in "
                 f"{took * 1000:.0f} ms; the slow body got 413 after {result['sent']:,} bytes")


def rss_kib(field: str = "VmRSS") -> int:
    found = re.search(rf"^{field}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.M)
    assert found, field
    return int(found.group(1))


@contextlib.contextmanager
def peak_growth() -> Iterator[dict[str, int]]:
    """The process's peak RSS growth (KiB) over the block: VmHWM reset, plus sampling."""
    result: dict[str, int] = {}
    reset = False
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
        reset = True
    start = rss_kib()
    peak = [start]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.005):
            peak[0] = max(peak[0], rss_kib())

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        yield result
    finally:
        done.set()
        sampler.join(timeout=10)
        top = max(peak[0], rss_kib("VmHWM") if reset else 0)
        result["growth"] = top - start
        result["start"] = start


def test_memory_stays_bounded(relay: RelayServer, capsys: pytest.CaptureFixture[str]) -> None:
    """relay runs in this process (a thread): its peak RSS grows little under all of this."""
    bomb = gzip_bomb()
    with peak_growth() as measured:
        for _ in range(3):
            for body, _ in BAD_BODIES.values():
                assert post_signed(relay, body).status_code == 400
            assert post_signed(relay, bomb, **{"Content-Encoding": "gzip"}).status_code == 400
            assert post_signed(relay, bomb).status_code == 400
            with Conn(relay) as conn:  # 64 MiB chunked, as fast as it goes
                send_slowly(conn, signed_head(b"{}", **{"Transfer-Encoding": "chunked"}),
                            total=64 * MiB, piece=256 * 1024, chunked=True, pause=0)
                answer = conn.response()
                assert answer is not None and answer[0] == 413
            big = b'{"eventId": "big", "pad": "' + b"p" * (MAX_BODY - 40) + b'"}'
            assert post_signed(relay, big).status_code == 200  # accepted, then duplicates
    show(capsys, f"peak RSS growth under bad bodies: {measured['growth'] / 1024:.1f} MiB "
                 f"(from {measured['start'] / 1024:.0f} MiB)")
    assert measured["growth"] < 200 * 1024
    response, _ = normal_event(relay, "after-memory")
    assert response.status_code == 200, response.text
    assert relay.client.get("/healthz").json()["status"] == "ok"


def test_an_event_that_cannot_be_routed_does_not_hold_up_the_others(
        make_relay: Any, tmp_path: Path) -> None:
    """A row stored before ingest refused such bodies (a lone surrogate cannot be
    stored as a delivery's payload) is marked failed, and routing goes on."""
    from conftest import Sink as FreshSink
    from relay.store import Store
    own_sink = FreshSink()
    try:
        write_sources(tmp_path / "recipes")
        write_recipe(tmp_path / "recipes", "all", f"""\
source: tikkl
fields:
  name: registrantName
to:
  - type: http
    url: {own_sink.url}/in
""")
        store = Store(tmp_path / "relay.db")
        store.insert_event(source="tikkl", platform="tikkl", type="ticket", dedup_key="old-1",
                           is_test=False, headers={}, body=b'{"registrantName": "\\ud800"}', matched=True)
        store.close()
        relay = make_relay()
        body = json.dumps({"objectType": "ticket", "ticketId": "t-2", "registrantName": "Ann"}).encode()
        path, headers = sign("tikkl", "tikkl", body)
        assert relay.post(path, body, headers).status_code == 200
        wait_until(lambda: own_sink.bodies() == [{"name": "Ann"}])
        [bad] = relay.rows("SELECT * FROM routes WHERE event_id = 1")
        assert bad["outcome"] == "error" and "could not queue" in bad["message"], bad
    finally:
        own_sink.close()
