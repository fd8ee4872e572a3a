"""Which addresses relay may send to (no server-side request forgery).

Recipes choose where deliveries go, and anyone who can edit a recipe, or shape
an event that a recipe turns into a URL, could otherwise point relay at the
machine's own services or at a cloud's metadata address (which hands out the
server's credentials). So every connection relay opens for a delivery is checked
*after* DNS resolution, at connect time, on every attempt: a name that resolves
to a refused address is refused, and relay connects to the very address it
checked (a second lookup cannot swap it). The check sits where aiohttp makes each
connection's socket (``_socket_factory``); ``guarded_client`` wraps that in httpx's
API, and adds ``GuardedClient.send_bytes``, through which every destination sends.

By default only public internet addresses are allowed. ``RELAY_ALLOW_NETWORKS``
opens more: ``loopback`` (this machine), ``private`` (home and office networks,
e.g. a CRM on the NAS) and any CIDR such as ``192.168.1.0/24``. Cloud metadata
addresses are refused even under ``private``; only a CIDR naming them opens them.
"""

from __future__ import annotations

import codecs
import email.message
import functools
import http.cookiejar
import ipaddress
import socket
from collections.abc import AsyncIterator, Iterable, Sequence
from typing import Any, NamedTuple

import aiohttp
import aiohttp.abc
import httpx
import yarl

from .errors import ConfigError

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address

LOOPBACK = [ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128")]
SHARED = ipaddress.ip_network("100.64.0.0/10")  # carrier-grade NAT: not is_private, still not public
PRIVATE = [*(ipaddress.ip_network(n) for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16")),
           SHARED, ipaddress.ip_network("fc00::/7")]
METADATA = [ipaddress.ip_network(n) for n in ("169.254.0.0/16", "fd00:ec2::254/128", "fe80::/10")]


class AddressRefused(Exception):
    """relay will not connect to this address; the message says why and what to do."""


def parse_networks(text: str) -> tuple[Network, ...]:
    """``loopback``, ``private`` and CIDRs, comma-separated.

    :raises ConfigError: naming the part that is neither.
    """
    networks: list[Network] = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        if part.lower() == "loopback":
            networks.extend(LOOPBACK)
        elif part.lower() == "private":
            networks.extend(PRIVATE)
        else:
            try:
                networks.append(ipaddress.ip_network(part, strict=False))
            except ValueError:
                raise ConfigError(
                    f"RELAY_ALLOW_NETWORKS: {part!r} is not loopback, private or a network "
                    "such as 192.168.1.0/24") from None
    return tuple(networks)


class Policy:
    """Decides whether relay may connect to one IP address."""

    def __init__(self, allowed: Iterable[Network] = ()) -> None:
        self.allowed = tuple(allowed)

    def refusal(self, address: Address) -> str | None:
        """Why ``address`` is refused, or None when relay may connect to it."""
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        if any(address in net for net in METADATA):
            # Only a network given by address (not the word "private") opens these.
            if any(address in net and net not in PRIVATE for net in self.allowed):
                return None
            return (f"{address} is a link-local or cloud metadata address, which could hand "
                    "out this server's own credentials; relay never sends there")
        if address.is_global and not address.is_multicast:
            return None
        if any(address in net for net in self.allowed):
            return None
        kind = ("this machine (loopback)" if address.is_loopback else
                "a private network address" if address.is_private or address in SHARED else
                "not a public internet address")
        return (f"{address} is {kind}; relay only sends to public addresses unless "
                "RELAY_ALLOW_NETWORKS allows it (e.g. RELAY_ALLOW_NETWORKS=private)")


class _Refused(OSError):
    """A refusal at connect time, raised where aiohttp expects a failed connect.

    An OSError, so that aiohttp treats it as that one address failing (and wraps it in
    ClientConnectorError); ``AiohttpTransport`` turns it back into ``AddressRefused``.
    """


def _refusal(policy: Policy, address: str) -> str | None:
    try:
        return policy.refusal(ipaddress.ip_address(address.split("%")[0]))  # "fe80::1%eth0": no scope
    except ValueError:  # not an address this can read: refuse rather than guess
        return f"{address} is not an IP address relay can check"


def _socket_factory(policy: Policy) -> aiohttp.SocketFactoryType:
    """The socket for one address aiohttp is about to connect to, if the policy allows it.

    aiohttp calls this with the very address it then connects the socket to, on every
    connection attempt, whether that address came from DNS or was written in the URL
    (aiohttp skips the resolver for an IP literal). This is the check that holds.
    """
    def make_socket(addr_info: aiohttp.AddrInfoType) -> socket.socket:
        family, type_, proto, _name, sockaddr = addr_info
        why = _refusal(policy, str(sockaddr[0]))
        if why is not None:
            raise _Refused(why)
        return socket.socket(family, type_, proto)

    return make_socket


class GuardedResolver(aiohttp.abc.AbstractResolver):
    """``inner``'s answers, keeping only the addresses the policy allows.

    Not the guarantee (``_socket_factory`` is), but what makes a name behave as it
    always did: refused addresses are skipped and the allowed ones tried, and a name
    with no allowed address is refused, permanently, with the reason for its first one
    (without this, aiohttp would report several refusals as one failed connect, which
    relay retries).
    """

    def __init__(self, policy: Policy, inner: aiohttp.abc.AbstractResolver) -> None:
        self.policy = policy
        self.inner = inner

    async def resolve(self, host: str, port: int = 0,
                      family: socket.AddressFamily = socket.AF_INET) -> list[aiohttp.abc.ResolveResult]:
        allowed: list[aiohttp.abc.ResolveResult] = []
        refusals: list[str] = []
        for found in await self.inner.resolve(host, port, family):
            why = _refusal(self.policy, found["host"])
            if why is None:
                allowed.append(found)
            else:
                refusals.append(why)
        if not allowed:
            raise AddressRefused(refusals[0] if refusals else f"{host} has no address")
        return allowed

    async def close(self) -> None:
        await self.inner.close()


def _httpx_error(error: Exception) -> Exception:
    """The exception httpx's own transport raises where aiohttp raised ``error``.

    Destinations (relay/destinations/base.py's send_http) tell a refused address, a
    failed connect, a timeout and a broken answer apart by httpx's exception types, and
    find a reset or a refused connection by the OSError at the end of the chain, which
    ``raise ... from`` keeps.
    """
    cause = error.__cause__
    text = _one_line(str(error)) or type(error).__name__
    if isinstance(error, aiohttp.ClientConnectorError):
        if isinstance(cause, _Refused):
            return AddressRefused(str(cause))
        if isinstance(error, aiohttp.ClientConnectorDNSError):
            return httpx.ConnectError(f"cannot resolve {error.host}: {cause or error}")
        return httpx.ConnectError(_one_line(str(cause)) if cause else text)
    if isinstance(error, aiohttp.ConnectionTimeoutError):
        return httpx.ConnectTimeout(text)
    if isinstance(error, TimeoutError):  # aiohttp's read timeouts are TimeoutErrors too
        return httpx.ReadTimeout(text)
    if isinstance(error, aiohttp.ServerDisconnectedError):
        return httpx.RemoteProtocolError("the destination closed the connection without answering")
    if isinstance(error, aiohttp.ClientPayloadError):
        # The parser's own words ("Not enough data ... (received 10 of 100 bytes)"), not
        # aiohttp's repr of them.
        detail = _one_line(str(getattr(cause, "message", "") or error))
        return httpx.RemoteProtocolError(f"the answer ended before all of it came: {detail}")
    if isinstance(error, aiohttp.ClientResponseError):  # what came back is not HTTP
        return httpx.RemoteProtocolError(f"the answer is not valid HTTP: {_one_line(error.message)}")
    if isinstance(error, aiohttp.InvalidURL):
        # aiohttp will not connect to an IP address written in a legacy form (127.1).
        return AddressRefused(f"{error.url} is not an address relay can check; write the IP "
                              "address in full (like 127.0.0.1) or use a name")
    if isinstance(error, aiohttp.NonHttpUrlClientError):
        return httpx.UnsupportedProtocol(text)
    if isinstance(error, OSError):  # connected, then the connection broke
        return httpx.ReadError(text)
    if isinstance(error, aiohttp.ClientError):
        return httpx.TransportError(text)
    if isinstance(error, ValueError):  # a header aiohttp will not send (say, with a newline)
        return httpx.LocalProtocolError(text)
    return error


def _one_line(text: str) -> str:
    """aiohttp's parser errors span lines, with a caret under the bad byte: one line,
    as relay records and shows errors."""
    return " ".join(word for word in text.split() if word != "^")


_ERRORS = (aiohttp.ClientError, OSError, ValueError)  # what _httpx_error translates


class _Body(httpx.AsyncByteStream):
    """An aiohttp response's body as httpx reads it, with aiohttp's errors translated."""

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self.response = response

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self.response.content.iter_any():
                yield chunk
        except _ERRORS as e:
            raise _httpx_error(e) from e

    async def aclose(self) -> None:
        # Back to the pool when read to the end; a connection with unread body is closed.
        self.response.release()


class AiohttpTransport(httpx.AsyncBaseTransport):
    """httpx's requests, sent by aiohttp: two to four times as many a second as httpx's
    own transport (bench/http_clients.py), and delivery throughput is bound by it.

    HTTP/1.1, as httpx sent it too: the headers httpx built (aiohttp adds none of its
    own), the body as given, the answer's body undecoded (httpx decodes it, as before).
    aiohttp follows no redirect, reads no proxy settings from the environment, keeps no
    cookies and verifies TLS against httpx's certificates. Every connection goes
    through ``policy``; ``resolver`` answers DNS (default: the system's, in a thread,
    as httpx did).
    """

    # httpx (h11) reads up to 100 KiB of response headers; aiohttp's 8 KiB default per
    # line would turn a long header (a big cookie, a policy) into a broken answer.
    MAX_HEADER_BYTES = 100 * 1024

    def __init__(self, policy: Policy, limits: httpx.Limits,
                 resolver: aiohttp.abc.AbstractResolver | None = None) -> None:
        self.policy = policy
        self.limits = limits
        self.resolver = resolver
        self.ssl_context = httpx.create_ssl_context(trust_env=False)
        self.session: aiohttp.ClientSession | None = None

    def _open(self) -> aiohttp.ClientSession:
        # aiohttp binds a session to the running event loop, so it is made on first use,
        # inside the loop, not when the client is built.
        connector = aiohttp.TCPConnector(
            limit=self.limits.max_connections or 0,  # 0: no limit, as httpx's None
            keepalive_timeout=self.limits.keepalive_expiry,
            ssl=self.ssl_context,
            resolver=GuardedResolver(self.policy, self.resolver or aiohttp.ThreadedResolver()),
            socket_factory=_socket_factory(self.policy),
        )
        self.session = aiohttp.ClientSession(
            connector=connector,
            trust_env=False,
            cookie_jar=aiohttp.DummyCookieJar(),
            auto_decompress=False,
            skip_auto_headers=("Accept", "Accept-Encoding", "Content-Type", "User-Agent"),
            timeout=aiohttp.ClientTimeout(),  # each request brings its own
            max_line_size=self.MAX_HEADER_BYTES,
            max_field_size=self.MAX_HEADER_BYTES,
            max_headers=1000,
        )
        return self.session

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        session = self.session or self._open()
        timeout = request.extensions.get("timeout", {})
        connect, pool = timeout.get("connect"), timeout.get("pool")
        encoding = request.headers.encoding
        headers = [(k.decode(encoding), v.decode(encoding)) for k, v in request.headers.raw]
        try:
            content: Any = request.content or None
        except httpx.RequestNotRead:  # a streamed body (relay sends bytes): aiohttp chunks it
            content = request.stream  # and says so itself
            headers = [(k, v) for k, v in headers if k.lower() != "transfer-encoding"]
        try:
            response = await session.request(
                request.method,
                yarl.URL(str(request.url), encoded=True),  # as httpx encoded it, not re-quoted
                headers=headers,
                data=content,
                allow_redirects=False,
                server_hostname=request.extensions.get("sni_hostname"),
                timeout=aiohttp.ClientTimeout(
                    # aiohttp's "connect" covers waiting for the pool and connecting.
                    connect=None if connect is None or pool is None else connect + pool,
                    sock_connect=connect, sock_read=timeout.get("read")),
            )
        except _ERRORS as e:
            raise _httpx_error(e) from e
        version = response.version or aiohttp.HttpVersion11
        return httpx.Response(
            response.status, headers=response.raw_headers, stream=_Body(response),
            extensions={"http_version": f"HTTP/{version.major}.{version.minor}".encode(),
                        "reason_phrase": (response.reason or "").encode("ascii", "replace")},
        )

    async def send_bytes(self, method: str, url: yarl.URL, headers: list[tuple[str, str]],
                         content: bytes, timeout: float) -> Answer:
        """One request with exactly these headers, its whole answer read; httpx's
        exceptions, as ``handle_async_request`` raises them."""
        session = self.session or self._open()
        try:
            response = await session.request(
                method, url, headers=headers, data=content or None, allow_redirects=False,
                # As httpx's timeout=...: connect and pool, then connect, then each read.
                timeout=aiohttp.ClientTimeout(connect=2 * timeout, sock_connect=timeout,
                                              sock_read=timeout))
            try:
                body = await response.read()
            except BaseException:
                response.close()  # a connection with an unread answer is not reused
                raise
        except _ERRORS as e:
            raise _httpx_error(e) from e
        return _answer(response.status, response.raw_headers, body)

    async def aclose(self) -> None:
        if self.session is not None:
            # And its connector, with every connection. The resolver is not the
            # connector's to close: the system's holds nothing, a given one is its maker's.
            await self.session.close()


class Answer(NamedTuple):
    """A destination's whole answer, as relay keeps it."""

    status_code: int
    #: Lower-cased names; a repeated header's values joined by ", " (httpx's dict(headers)).
    headers: dict[str, str]
    #: The body as text: decompressed, decoded by its charset (else UTF-8), bad bytes replaced.
    text: str


def _header_encoding(raw: Sequence[tuple[bytes, bytes]]) -> str:
    """The encoding httpx reads a response's headers in: ASCII, else UTF-8, else Latin-1."""
    for encoding in ("ascii", "utf-8"):
        try:
            for name, value in raw:
                name.decode(encoding)
                value.decode(encoding)
        except UnicodeDecodeError:
            continue
        return encoding
    return "iso-8859-1"


@functools.lru_cache(maxsize=256)
def _charset(content_type: str | None) -> str:
    """The charset a Content-Type names, when Python knows it; else UTF-8 (as httpx)."""
    if content_type:
        message = email.message.Message()
        message["content-type"] = content_type
        charset = message.get_content_charset(failobj=None)
        if charset:
            try:
                codecs.lookup(charset)
            except LookupError:
                pass
            else:
                return charset
    return "utf-8"


def _answer(status: int, raw: Sequence[tuple[bytes, bytes]], body: bytes) -> Answer:
    encoding = _header_encoding(raw)
    headers: dict[str, str] = {}
    for raw_name, raw_value in raw:
        name, value = raw_name.decode(encoding).lower(), raw_value.decode(encoding)
        headers[name] = f"{headers[name]}, {value}" if name in headers else value
    if headers.get("content-encoding", "").strip().lower() not in ("", "identity"):
        # Compressed (relay asks for gzip and deflate, as httpx does): httpx's decoders.
        return Answer(status, headers, httpx.Response(status, headers=raw, content=body).text)
    return Answer(status, headers, body.decode(_charset(headers.get("content-type")), "replace"))


@functools.lru_cache(maxsize=1024)
def _target(url: str) -> tuple[yarl.URL, str]:
    """``url`` as httpx encodes it, and its Host header. :raises httpx.InvalidURL:"""
    parsed = httpx.URL(url)
    return yarl.URL(str(parsed), encoded=True), parsed.netloc.decode("ascii")


class GuardedClient(httpx.AsyncClient):
    """httpx's client on an ``AiohttpTransport``, with a quicker way to send bytes.

    ``send_bytes`` sends what ``request(method, url, headers=..., content=...)`` would,
    byte for byte (tests/test_outbound.py), and answers what relay keeps of the
    response, without httpx's request and response objects, cookie handling and
    redirect machinery: those took more of a delivery's time than the sending
    (bench/http_clients.py).
    """

    def __init__(self, transport: AiohttpTransport, **kwargs: Any) -> None:
        super().__init__(transport=transport, **kwargs)
        self.aiohttp = transport

    async def send_bytes(self, method: str, url: str, *, headers: dict[str, str],
                         content: bytes, timeout: float) -> Answer:
        target, netloc = _target(url)
        given = {name.lower() for name in headers}
        sized = "content-length" in given or "transfer-encoding" in given
        # In httpx's order: Host first (and an empty body's length), then the client's
        # headers less those the request gives, then the request's, then the length.
        wire = [] if "host" in given else [("Host", netloc)]
        if not content and not sized and method in ("POST", "PUT", "PATCH"):
            wire.append(("Content-Length", "0"))
        encoding = self.headers.encoding
        defaults = [(name.decode(encoding), value.decode(encoding)) for name, value in self.headers.raw]
        wire += [(name, value) for name, value in defaults if name.lower() not in given]
        for name, value in headers.items():
            value.encode("ascii")  # httpx refuses any other header value, so this does too
            wire.append((name, value))
        if content and not sized:
            wire.append(("Content-Length", str(len(content))))
        return await self.aiohttp.send_bytes(method, target, wire, content, timeout)


def guarded_client(policy: Policy, **kwargs: Any) -> GuardedClient:
    """An httpx client whose every connection goes through ``policy``, sent by aiohttp.

    Takes httpx.AsyncClient's arguments; of ``limits``, aiohttp keeps
    ``max_connections`` and ``keepalive_expiry``. It may be built outside an event
    loop; it must be used, and closed (``aclose``), inside one.
    """
    transport = AiohttpTransport(policy, kwargs.pop("limits", httpx.Limits()))
    # No cookies kept either (httpx keeps its own, above aiohttp's): one delivery's
    # answer must not change what the next delivery sends.
    no_cookies = http.cookiejar.CookieJar(http.cookiejar.DefaultCookiePolicy(allowed_domains=[]))
    # No proxy from the environment: relay checks the address it really connects to.
    return GuardedClient(transport, trust_env=False, cookies=no_cookies, **kwargs)
