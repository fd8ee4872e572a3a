"""``POST /hooks/{source}[/{token}]``: from a platform's request to a stored event.

In order: find the source; read the body, refusing it as soon as it passes
``RELAY_MAX_BODY``; verify the raw bytes the platform's way; parse the JSON; work
out the event type and dedup key; commit the event to SQLite; only then answer
2xx. Refused requests are written to the (bounded) rejection log with their
reason, so "why didn't my webhook arrive?" has an answer.
"""

from __future__ import annotations

import asyncio
import codecs
import functools
import json
import logging
import math
import re
import time
from typing import TYPE_CHECKING, Any

from starlette.requests import ClientDisconnect
from starlette.requests import Request as HttpRequest
from starlette.responses import JSONResponse, Response

from .errors import BadBody, BodyTooLarge, RelayError, StorageUnavailable
from .metrics import UNKNOWN_SOURCE
from .recipes import redact
from .sources import Request, Source

if TYPE_CHECKING:
    from .app import Runtime

log = logging.getLogger("relay.ingest")

SECRETISH = re.compile(r"authorization|cookie|token|secret|signature|identifier|hmac|api-key|apikey",
                       re.IGNORECASE)


@functools.lru_cache(maxsize=1024)
def _secretish(name: str) -> bool:
    # Platforms send the same few names on every webhook: match each name once.
    return SECRETISH.search(name) is not None


def redact_headers(headers: dict[str, str], source: Source | None) -> dict[str, str]:
    """Headers safe to store and show: anything that may carry a secret is masked."""
    secret = source.platform.secret_headers if source and source.platform else ()
    out = {}
    for name, value in headers.items():
        if name in secret or _secretish(name):
            out[name] = "[redacted]"
        else:
            out[name] = value[:1000]
    return out


def read_headers(request: HttpRequest) -> tuple[dict[str, str], frozenset[str]]:
    """Lower-cased header names with their first value, and the names that repeat.

    A verifier that reads a repeated header refuses the request (``Request.header``):
    the first copy is only a guess at what the platform sent.
    """
    first: dict[str, str] = {}
    repeated: set[str] = set()
    for raw_name, raw_value in request.headers.raw:
        name = raw_name.decode("latin-1").lower()
        if name in first:
            repeated.add(name)
        else:
            first[name] = raw_value.decode("latin-1")
    return first, frozenset(repeated)


class BodyTimeout(BadBody):
    status = 408


#: Seconds the whole body may take to arrive. Without a bound, a Content-Length
#: larger than what is sent (or a sender that stalls) would hold the request forever.
BODY_TIMEOUT = 30.0


async def read_body(request: HttpRequest, limit: int, headers: dict[str, str],
                    repeated: frozenset[str] = frozenset()) -> bytes:
    """The whole body, refused as soon as it passes ``limit`` bytes.

    ``headers`` and ``repeated`` are the request's, as ``read_headers`` gives them.

    :raises BodyTooLarge: from Content-Length alone when it says too much, or
        while reading, without buffering more than ``limit`` bytes.
    :raises BadBody: for a malformed Content-Length or a compressed body.
    :raises BodyTimeout: when the body has not all arrived within ``BODY_TIMEOUT``.
    """
    too_large = BodyTooLarge(
        f"The body is larger than this relay accepts ({limit} bytes). If these webhooks "
        "are genuine, raise RELAY_MAX_BODY.")
    declared = headers.get("content-length")
    if declared is not None:
        text = declared.strip()
        if not (text.isascii() and text.isdigit()):
            raise BadBody("The Content-Length header is not a number.")
        if len(text) > 18:  # more than any body could be, and int() would refuse 4300+ digits
            raise too_large
        if int(text) > limit:
            raise too_large
    # Every Content-Encoding header, each a list: "identity, gzip" is compressed too.
    encodings = ([e.strip().lower() for value in request.headers.getlist("content-encoding")
                  for e in value.split(",")] if "content-encoding" in repeated
                 else [e.strip().lower() for e in headers.get("content-encoding", "").split(",")])
    for encoding in encodings:
        if encoding not in ("", "identity"):
            raise BadBody(f"Compressed bodies ({encoding[:40]}) are not accepted; send plain JSON.")
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(BODY_TIMEOUT):
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise too_large
                chunks.append(chunk)
    except TimeoutError:
        said = f" of the {declared.strip()} bytes its Content-Length announced" if declared else ""
        raise BodyTimeout(
            f"Only {size} bytes{said} arrived within {BODY_TIMEOUT:g} seconds. Send the "
            "whole body at once, with a Content-Length that matches it.") from None
    return b"".join(chunks)


#: Longest number (in characters) a body may hold: far beyond any real id or amount,
#: and short enough that converting it costs nothing.
MAX_NUMBER_LENGTH = 1000


class _Refused(ValueError):
    """A JSON text relay will not take, with the plain reason why."""


def _no_constants(name: str) -> Any:
    raise _Refused(f"The JSON holds {name}, which is not a JSON number; send it as a string "
                   "or null.")


def _int(text: str) -> int:
    if len(text) > MAX_NUMBER_LENGTH:
        raise _Refused(f"The JSON holds a number {len(text)} digits long; relay takes numbers "
                       f"of at most {MAX_NUMBER_LENGTH} characters.")
    return int(text)


def _float(text: str) -> float:
    if len(text) > MAX_NUMBER_LENGTH:
        raise _Refused(f"The JSON holds a number {len(text)} characters long; relay takes "
                       f"numbers of at most {MAX_NUMBER_LENGTH} characters.")
    value = float(text)
    if math.isinf(value):
        raise _Refused(f"The JSON number {text[:40]} is too large to be represented; "
                       "send it as a string.")
    return value


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _Refused(f"The JSON has the key {key[:40]!r} twice in one object, so "
                               "relay cannot tell which value is meant. Send each key once.")
            seen.add(key)
    return obj


#: Deepest nesting a body may have. Python's own limit (about a thousand, less the
#: stack already in use) differs between ingest and the router, the recipes and the
#: store; a fixed, lower one means whatever ingest accepts, every later step can handle.
MAX_DEPTH = 100


def _too_deep(payload: Any) -> bool:
    """Is ``payload`` nested more than ``MAX_DEPTH`` levels? (Level by level, no recursion.)"""
    level = [payload] if isinstance(payload, (dict, list)) else []
    for _ in range(MAX_DEPTH):
        level = [child for node in level
                 for child in (node.values() if isinstance(node, dict) else node)
                 if isinstance(child, (dict, list))]
        if not level:
            return False
    return True


#: A \u escape of a UTF-16 surrogate: only these make text that is not UTF-8 (a lone
#: half cannot be stored or sent on), so only then is the parsed payload checked.
LONE_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


def _encodable(payload: Any) -> bool:
    """Is every string in ``payload`` valid Unicode (no lone surrogate)?"""
    try:
        json.dumps(payload, ensure_ascii=False).encode("utf-8")
    except (UnicodeEncodeError, RecursionError):
        return False
    return True


def parse_json(body: bytes) -> Any:
    """:raises BadBody: unless the body is a UTF-8 JSON object or array, in plain JSON.

    Refused with a plain reason: a byte-order mark or another encoding than UTF-8,
    nesting deeper than ``MAX_DEPTH``, numbers that are not finite or are
    over ``MAX_NUMBER_LENGTH`` characters, a key repeated within one object, and a
    ``\\u`` escape of a lone surrogate (text that cannot be stored as UTF-8).
    """
    if not body.strip():
        raise BadBody("The body is empty; relay expects a JSON object.")
    too_deep = BadBody(f"The JSON is nested too deeply (relay takes up to {MAX_DEPTH} levels); "
                       "send a flatter document.")
    if body.startswith(codecs.BOM_UTF8):
        raise BadBody("The body starts with a byte-order mark (BOM); send the JSON as UTF-8 "
                      "without one.")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as e:
        raise BadBody(f"The body is not UTF-8 text (byte {e.start} is not valid UTF-8); "
                      "send the JSON as UTF-8.") from None
    try:
        payload = json.loads(text, parse_constant=_no_constants, parse_int=_int,
                             parse_float=_float, object_pairs_hook=_object)
    except RecursionError:
        raise too_deep from None
    except _Refused as e:
        raise BadBody(str(e)) from None
    except ValueError as e:
        raise BadBody(f"The body is not valid JSON: {e}. relay expects the platform's JSON "
                      "object, sent as it is.") from None
    # At most one level per bracket: only a body with many can be too deep.
    if text.count("[") + text.count("{") > MAX_DEPTH and _too_deep(payload):
        raise too_deep
    if LONE_SURROGATE_ESCAPE.search(text) and not _encodable(payload):
        raise BadBody("The JSON holds a \\u escape of half a UTF-16 surrogate pair, which is "
                      "not text; send the character itself, or both halves of the pair.")
    if not isinstance(payload, (dict, list)):
        raise BadBody("The body is JSON but not an object or a list; relay expects the "
                      "platform's JSON object.")
    return payload


def error_response(error: RelayError, status: int | None = None) -> JSONResponse:
    return JSONResponse({"error": error.message}, status_code=status or error.status)


async def receive(request: HttpRequest) -> Response:
    runtime: Runtime = request.state.runtime
    name = request.path_params["source"]
    token = request.path_params.get("token")
    headers, repeated = read_headers(request)
    client = request.client.host if request.client else None
    source: Source | None = None
    body = b""
    body_size = 0
    # Only names from sources.yaml become labels: anyone can post to any path.
    label = name if name in runtime.config.sources else UNKNOWN_SOURCE
    count = runtime.metrics.received

    async def reject(error: RelayError, status: int | None = None) -> JSONResponse:
        code = status or error.status
        count(label, "rejected", code)
        # An unknown name may be a secret pasted into the wrong part of the URL.
        shown = name if label != UNKNOWN_SOURCE else redact(name, runtime.secret_values)
        reason = redact(error.message, runtime.secret_values)
        log.info("refused a webhook for %r: %s %s", shown, code, reason)
        try:
            await runtime.writer.run(lambda s: s.log_rejection(
                source=shown, status_code=code, reason=reason,
                headers=redact_headers(headers, source), body=body, body_size=body_size,
                client=client))
        except RelayError:
            pass  # the log is best effort; the answer below is what matters
        return error_response(error, code)

    try:
        config = runtime.config
        source = config.sources.get_source(name)
        platform = source.ready()
    except RelayError as e:
        return await reject(e, e.status if e.status != 503 or source is None
                            else source.retry_status)
    try:
        body = await read_body(request, runtime.settings.max_body, headers, repeated)
        body_size = len(body)
    except ClientDisconnect:
        count(label, "rejected", BadBody.status)
        return error_response(BadBody("The client went away before sending the whole body."))
    except RelayError as e:
        declared = headers.get("content-length", "").strip()
        body_size = (int(declared) if e.status == 413 and declared.isascii()
                     and declared.isdigit() and len(declared) <= 18 else 0)
        return await reject(e)
    now = time.time()
    try:
        described_request = Request(headers, body, token, repeated)
        platform.verify(described_request, now=now, tolerance=runtime.settings.timestamp_tolerance)
        payload = parse_json(body)
        described = platform.describe(described_request, payload)
    except RelayError as e:
        return await reject(e)

    wanting = [r for r in config.recipes.for_source(name)
               if r.wants(described.type, described.is_test)]
    matched = any(r.active for r in wanting)
    stored_headers = redact_headers(headers, source)
    if token:
        stored_headers["x-relay-path-token"] = "[redacted]"
    try:
        status, event_id = await runtime.writer.run(lambda s: s.insert_event(
            source=name, platform=source.platform_name, type=described.type,
            dedup_key=described.dedup_key, is_test=described.is_test, headers=stored_headers,
            body=body, matched=matched, wanted=bool(wanting), now=now), savepoint=False)
    except RelayError as e:
        # Not stored, so not accepted: ask the platform to send it again. OpenTicket
        # only retries on a 4xx, so its sources answer 429 instead of 503.
        log.error("could not store a webhook for %r: %s", name, e.message)
        count(label, "rejected", source.retry_status)
        return error_response(StorageUnavailable(
            "relay could not store this event right now; send it again later."),
            source.retry_status)
    if status != "duplicate" and wanting:  # else stored as routed: nothing to route
        runtime.router.wake.set()
    count(label, status, 200)
    log.info("%s webhook %r from %r: event %d", status, described.type, name, event_id)
    # What JSONResponse would send, without encoding a dict for every webhook.
    return Response(b'{"status":"%s","event":%d}' % (status.encode(), event_id),
                    media_type="application/json")
