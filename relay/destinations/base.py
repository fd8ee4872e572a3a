"""The interface every destination implements, and the HTTP rules they share.

A destination is built once per recipe from its ``to:`` entry (secrets already
resolved) and then asked to ``send`` mapped payloads. It raises ``DeliveryFailed``
with ``retryable`` set the way the delivery worker needs: connection errors,
timeouts, 408, 425, 429 and 5xx are worth retrying; any other 4xx is permanent
and needs a person to fix the recipe. ``preview`` says what would be sent without
sending it (``relay try``, and later the editor's live preview).
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import email.utils
import functools
import json
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import httpx

from ..errors import ConfigError, DeliveryFailed
from ..outbound import AddressRefused, Answer, GuardedClient
from ..settings import Settings
from .pacing import Pacer, Pacers

RETRYABLE_STATUS = frozenset({408, 425, 429})
USER_AGENT = "relay/0.1 (+self-hosted webhook relay)"
RESPONSE_TEXT_KEPT = 65536


class OptionError(ConfigError):
    """A destination option is wrong; ``key`` lets the recipe loader find its line."""

    def __init__(self, message: str, key: str | None = None) -> None:
        super().__init__(message)
        self.key = key


@dataclasses.dataclass(frozen=True)
class DestinationContext:
    """What a destination may know about the relay when it is built."""

    data_dir: Path
    settings: Settings = dataclasses.field(default_factory=Settings)
    pacers: Pacers = dataclasses.field(default_factory=Pacers)


@dataclasses.dataclass(frozen=True)
class DeliveryContext:
    """One attempt of one delivery."""

    client: httpx.AsyncClient
    delivery_id: int
    event_id: int
    idempotency_key: str
    attempt: int
    timeout: float


@dataclasses.dataclass(frozen=True)
class Sent:
    """What the destination answered when it accepted the delivery."""

    status_code: int | None = None
    headers: dict[str, str] = dataclasses.field(default_factory=dict)
    body: str | None = None
    note: str | None = None


Outcome = Sent | DeliveryFailed


class Destination:
    """Base of every destination type. Subclasses set ``type`` and ``options``.

    Delivery goes through lanes: the deliveries of one recipe's destination are
    sent in order of arrival, at most ``max_in_flight`` requests at a time, in
    batches of up to ``batch_size`` (``send_batch``) where the vendor's API takes
    several records in one request. When the destination asks for a wait (a
    failure with ``retry_after``, e.g. a 429) the whole lane waits, so that order
    holds. ``pacer`` (if set) keeps requests inside the vendor's rate
    limit for the whole account.
    """

    type: ClassVar[str]
    options: ClassVar[frozenset[str]] = frozenset()
    required: ClassVar[frozenset[str]] = frozenset()
    batch_size: int = 1
    max_in_flight: int = 8
    pacer: Pacer | None = None

    def __init__(self, config: Mapping[str, Any], context: DestinationContext) -> None:
        unknown = set(config) - set(self.options) - {"type", "name"}
        if unknown:
            key = sorted(unknown)[0]
            raise OptionError(
                f"unknown option {key!r} for a {self.type} destination; "
                f"allowed: {', '.join(sorted(self.options | {'name'}))}", key)
        for key in sorted(self.required):
            if config.get(key) in (None, ""):
                raise OptionError(f"a {self.type} destination needs `{key}:`", None)
        self.config = dict(config)
        self.context = context
        self.name = str(config.get("name") or self.type)

    def preview(self, payload: Any) -> dict[str, Any]:
        """What ``send`` would do with ``payload``, as plain data. Sends nothing."""
        raise NotImplementedError

    async def send(self, payload: Any, ctx: DeliveryContext) -> Sent:
        """Deliver ``payload``. :raises DeliveryFailed: retryable or permanent."""
        raise NotImplementedError

    async def send_batch(self, payloads: list[Any], ctxs: list[DeliveryContext]) -> list[Outcome]:
        """Deliver several payloads; one outcome per payload, in the same order.

        The default sends them one by one. A destination whose API takes several
        records per request overrides this (and sets ``batch_size``). Raising
        ``DeliveryFailed`` fails every payload of the batch alike.
        """
        outcomes: list[Outcome] = []
        for payload, ctx in zip(payloads, ctxs, strict=True):
            try:
                outcomes.append(await self.send(payload, ctx))
            except DeliveryFailed as failure:
                outcomes.append(failure)
        return outcomes


def rate_limit_option(value: Any, default: tuple[int, float],
                      example: tuple[int, float] | None = None) -> tuple[int, float]:
    """The ``rate_limit: {requests: N, per: S}`` option of a vendor destination.

    :raises OptionError: on the ``rate_limit`` key, showing ``example`` (default: ``default``).
    """
    if value is None:
        return default
    ex_requests, ex_per = example or default
    message = (f"rate_limit must look like {{requests: {ex_requests}, per: {ex_per:g}}} "
               "(requests per that many seconds)")
    if not isinstance(value, Mapping) or set(value) - {"requests", "per"} or "requests" not in value:
        raise OptionError(message, "rate_limit")
    requests, per = value["requests"], value.get("per", default[1])
    if isinstance(requests, bool) or not isinstance(requests, int) or requests < 1:
        raise OptionError(message, "rate_limit")
    if isinstance(per, bool) or not isinstance(per, (int, float)) or per <= 0:
        raise OptionError(message, "rate_limit")
    return requests, float(per)


def flat_value(value: Any) -> str:
    """A field value as text for a form, a header or a CSV cell (nested -> JSON)."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (dict, list)):
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    return str(value)


class BatchDestination(Destination):
    """A destination whose API takes several records per request: it implements
    ``send_batch``, and a single delivery is a batch of one."""

    async def send(self, payload: Any, ctx: DeliveryContext) -> Sent:
        [outcome] = await self.send_batch([payload], [ctx])
        if isinstance(outcome, DeliveryFailed):
            raise outcome
        return outcome

    async def send_batch(self, payloads: list[Any], ctxs: list[DeliveryContext]) -> list[Outcome]:
        raise NotImplementedError


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header: delta-seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(int(value)))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    if when.tzinfo is None:  # "-0000" and asctime dates are UTC by RFC 9110, not local time
        when = when.replace(tzinfo=datetime.UTC)
    now = time.time() if now is None else now
    return max(0.0, when.timestamp() - now)


@functools.lru_cache(maxsize=1024)
def _host(url: str) -> str:
    return httpx.URL(url).host


def response_text(response: httpx.Response) -> str:
    try:
        text = response.text
    except (UnicodeDecodeError, LookupError):
        text = response.content.decode("utf-8", "replace")
    return text[:RESPONSE_TEXT_KEPT]


def describe_status(code: int) -> str:
    if code in (401, 403):
        return "the destination refused the credentials: check the token or key in the recipe's secret"
    if code == 404:
        return "the destination says this URL does not exist: check the recipe's URL"
    if code == 429:
        return "the destination is rate limiting; relay will wait and retry"
    if code >= 500:
        return "the destination had an error of its own; relay will retry"
    if code in (408, 425):
        return "the destination asked relay to try again later"
    if 300 <= code < 400:
        return "the destination answered with a redirect; put the final URL in the recipe"
    return "the destination refused the request: check the recipe's fields against what it expects"


def transport_detail(error: BaseException) -> str:
    """What went wrong on the wire, in the plainest words found in ``error``'s chain."""
    texts: list[str] = []
    found: BaseException | None = error
    for _ in range(8):  # relay/outbound.py's httpx error wraps aiohttp's, which wraps the OSError
        if found is None:
            break
        if isinstance(found, ConnectionResetError):
            return "the destination reset the connection"
        if isinstance(found, ConnectionRefusedError):
            return "the connection was refused (is the destination running?)"
        texts.append(str(found))
        found = found.__cause__ or found.__context__
    text = next((t for t in texts if t), "connection failed")
    return f"{type(error).__name__}: {text}"


async def send_http(
    ctx: DeliveryContext, method: str, url: str, *, headers: dict[str, str], content: bytes,
    pacer: Pacer | None = None, rate_limit_wait: float | None = None,
) -> Sent:
    """Send one request and classify the answer.

    ``pacer`` spaces requests to the account; after a 429 it is paused for the
    ``Retry-After`` the vendor sent, else for ``rate_limit_wait`` (the vendor's
    documented window, for vendors that send no Retry-After), and that wait
    becomes the delivery's ``retry_after``.

    :raises DeliveryFailed: retryable for transport errors, timeouts, 408, 425, 429
        and 5xx; permanent for other non-2xx answers (with the response kept).
    """
    if pacer is not None:
        await pacer.acquire()
    try:
        return await _send_http(ctx, method, url, headers=headers, content=content)
    except DeliveryFailed as failure:
        if failure.status_code == 429:
            if failure.retry_after is None and rate_limit_wait is not None:
                failure.retry_after = rate_limit_wait
            if pacer is not None and failure.retry_after is not None:
                pacer.pause(failure.retry_after)
        raise


async def _send_http(
    ctx: DeliveryContext, method: str, url: str, *, headers: dict[str, str], content: bytes,
) -> Sent:
    host = _host(url)
    try:
        # httpx's timeout bounds each connect, read and write; this bounds the whole
        # request, so that an answer trickling in a byte a second ends too.
        async with asyncio.timeout(ctx.timeout):
            if isinstance(ctx.client, GuardedClient):  # relay's own (relay/outbound.py)
                answer = await ctx.client.send_bytes(
                    method, url, headers=headers, content=content, timeout=ctx.timeout)
            else:  # any other httpx client
                response = await ctx.client.request(
                    method, url, headers=headers, content=content, timeout=ctx.timeout,
                    follow_redirects=False,
                )
                answer = Answer(response.status_code, dict(response.headers), response_text(response))
    except (httpx.TimeoutException, TimeoutError):
        raise DeliveryFailed(
            f"no answer within {ctx.timeout:g} s; relay will retry", retryable=True) from None
    except AddressRefused as e:
        raise DeliveryFailed(f"not sent to {host}: {e}", retryable=False) from None
    except httpx.ConnectError as e:
        raise DeliveryFailed(
            f"could not connect to {host}: {transport_detail(e)}; relay will retry",
            retryable=True) from None
    except httpx.TransportError as e:
        # Connected, but the answer never came whole: the request may have been acted on,
        # so the retry carries the same Idempotency-Key.
        raise DeliveryFailed(
            f"the connection to {host} broke before a whole answer came back: "
            f"{transport_detail(e)}; relay will retry", retryable=True) from None
    text = answer.text[:RESPONSE_TEXT_KEPT]
    kept_headers = answer.headers
    code = answer.status_code
    if 200 <= code < 300:
        return Sent(code, kept_headers, text)
    retryable = code in RETRYABLE_STATUS or code >= 500
    message = f"HTTP {code}: {describe_status(code)}"
    if 300 <= code < 400 and kept_headers.get("location"):
        message += f" (it points to {kept_headers['location'][:200]})"
    raise DeliveryFailed(
        message,
        retryable=retryable,
        retry_after=parse_retry_after(kept_headers.get("retry-after")) if retryable else None,
        status_code=code,
        response_body=text,
        response_headers=kept_headers,
    )
