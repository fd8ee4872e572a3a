"""``POST /hooks/{source}[/{token}]``: from a platform's request to a stored event.

In order: find the source; read the body, refusing it as soon as it passes
``RELAY_MAX_BODY``; verify the raw bytes the platform's way; parse the JSON; work
out the event type and dedup key; commit the event to SQLite; only then answer
2xx. Refused requests are written to the (bounded) rejection log with their
reason, so "why didn't my webhook arrive?" has an answer.
"""

from __future__ import annotations

import json
import logging
import re
import time
from typing import TYPE_CHECKING, Any

from starlette.requests import ClientDisconnect
from starlette.requests import Request as HttpRequest
from starlette.responses import JSONResponse

from .errors import BadBody, BodyTooLarge, RelayError, StorageUnavailable
from .metrics import UNKNOWN_SOURCE
from .recipes import redact
from .sources import Request, Source

if TYPE_CHECKING:
    from .app import Runtime

log = logging.getLogger("relay.ingest")

SECRETISH = re.compile(r"authorization|cookie|token|secret|signature|identifier|hmac|api-key|apikey",
                       re.IGNORECASE)


def redact_headers(headers: dict[str, str], source: Source | None) -> dict[str, str]:
    """Headers safe to store and show: anything that may carry a secret is masked."""
    secret = set(source.platform.secret_headers) if source and source.platform else set()
    out = {}
    for name, value in headers.items():
        if name in secret or SECRETISH.search(name):
            out[name] = "[redacted]"
        else:
            out[name] = value[:1000]
    return out


def first_headers(request: HttpRequest) -> dict[str, str]:
    """Lower-cased header names; when a header repeats, its first value."""
    out: dict[str, str] = {}
    for raw_name, raw_value in request.headers.raw:
        out.setdefault(raw_name.decode("latin-1").lower(), raw_value.decode("latin-1"))
    return out


async def read_body(request: HttpRequest, limit: int) -> bytes:
    """The whole body, refused as soon as it passes ``limit`` bytes.

    :raises BodyTooLarge: from Content-Length alone when it says too much, or
        while reading, without buffering more than ``limit`` bytes.
    :raises BadBody: for a malformed Content-Length or a compressed body.
    """
    too_large = BodyTooLarge(
        f"The body is larger than this relay accepts ({limit} bytes). If these webhooks "
        "are genuine, raise RELAY_MAX_BODY.")
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.strip().isdigit():
            raise BadBody("The Content-Length header is not a number.")
        if int(declared) > limit:
            raise too_large
    encoding = request.headers.get("content-encoding", "identity").strip().lower()
    if encoding not in ("", "identity"):
        raise BadBody(f"Compressed bodies ({encoding}) are not accepted; send plain JSON.")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large
        chunks.append(chunk)
    return b"".join(chunks)


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def parse_json(body: bytes) -> Any:
    """:raises BadBody: unless the body is a JSON object or array."""
    if not body.strip():
        raise BadBody("The body is empty; relay expects a JSON object.")
    try:
        payload = json.loads(body, parse_constant=_no_constants)
    except RecursionError:
        raise BadBody("The JSON is nested too deeply.") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise BadBody(f"The body is not valid JSON: {e}") from None
    if not isinstance(payload, (dict, list)):
        raise BadBody("The body is JSON but not an object or a list.")
    return payload


def error_response(error: RelayError, status: int | None = None) -> JSONResponse:
    return JSONResponse({"error": error.message}, status_code=status or error.status)


async def receive(request: HttpRequest) -> JSONResponse:
    runtime: Runtime = request.state.runtime
    name = request.path_params["source"]
    token = request.path_params.get("token")
    headers = first_headers(request)
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
        body = await read_body(request, runtime.settings.max_body)
        body_size = len(body)
    except ClientDisconnect:
        count(label, "rejected", BadBody.status)
        return error_response(BadBody("The client went away before sending the whole body."))
    except RelayError as e:
        body_size = int(headers.get("content-length", "0") or 0) if e.status == 413 else 0
        return await reject(e)
    now = time.time()
    try:
        described_request = Request(headers, body, token)
        platform.verify(described_request, now=now, tolerance=runtime.settings.timestamp_tolerance)
        payload = parse_json(body)
        described = platform.describe(described_request, payload)
    except RelayError as e:
        return await reject(e)

    matched = any(r.active and r.wants(described.type, described.is_test)
                  for r in config.recipes.for_source(name))
    stored_headers = redact_headers(headers, source)
    if token:
        stored_headers["x-relay-path-token"] = "[redacted]"
    try:
        status, event_id = await runtime.writer.run(lambda s: s.insert_event(
            source=name, platform=source.platform_name, type=described.type,
            dedup_key=described.dedup_key, is_test=described.is_test, headers=stored_headers,
            body=body, matched=matched, now=now))
    except RelayError as e:
        # Not stored, so not accepted: ask the platform to send it again. OpenTicket
        # only retries on a 4xx, so its sources answer 429 instead of 503.
        log.error("could not store a webhook for %r: %s", name, e.message)
        count(label, "rejected", source.retry_status)
        return error_response(StorageUnavailable(
            "relay could not store this event right now; send it again later."),
            source.retry_status)
    if status != "duplicate":
        runtime.router.wake.set()
    count(label, status, 200)
    log.info("%s webhook %r from %r: event %d", status, described.type, name, event_id)
    return JSONResponse({"status": status, "event": event_id}, status_code=200)
