"""relay refuses to deliver to addresses it should not reach (SSRF), checked at connect time."""

from __future__ import annotations

import asyncio
import datetime
import gzip
import ipaddress
import json
import re
import socket
import ssl
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp.abc
import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from conftest import RawServer, Sink, free_port, read_request, sample, wait_until, write_recipe, write_sources
from relay.destinations.base import transport_detail
from relay.errors import ConfigError
from relay.outbound import AddressRefused, AiohttpTransport, Answer, Policy, guarded_client, parse_networks
from relay.settings import Settings


def refused(address: str, allow: str = "") -> bool:
    return Policy(parse_networks(allow)).refusal(ipaddress.ip_address(address)) is not None


@pytest.mark.parametrize("address", [
    "127.0.0.1", "127.8.9.10", "::1", "10.1.2.3", "172.16.0.1", "172.31.255.255", "192.168.1.1",
    "100.64.0.1", "fc00::1", "fd12:3456::1", "169.254.169.254", "169.254.0.1", "fd00:ec2::254",
    "fe80::1", "0.0.0.0", "::", "224.0.0.1", "255.255.255.255", "::ffff:169.254.169.254",
    "::ffff:127.0.0.1", "198.18.0.1",
])
def test_non_public_addresses_are_refused_by_default(address: str) -> None:
    assert refused(address)


@pytest.mark.parametrize("address", ["93.184.215.14", "8.8.8.8", "2606:4700::1111", "1.1.1.1"])
def test_public_addresses_are_allowed(address: str) -> None:
    assert not refused(address)


def test_owner_opens_loopback_and_private_but_never_metadata_by_keyword() -> None:
    assert not refused("127.0.0.1", "loopback")
    assert refused("10.0.0.1", "loopback")
    assert not refused("10.0.0.1", "private")
    assert not refused("192.168.7.7", "192.168.7.0/24")
    assert refused("192.168.8.1", "192.168.7.0/24")
    for metadata in ("169.254.169.254", "fd00:ec2::254", "::ffff:169.254.169.254"):
        assert refused(metadata, "loopback, private")
    assert not refused("169.254.169.254", "169.254.169.254/32")


def test_a_bad_setting_is_a_plain_error() -> None:
    with pytest.raises(ConfigError, match="RELAY_ALLOW_NETWORKS: 'intranet' is not"):
        Settings.from_env(environ={"RELAY_ALLOW_NETWORKS": "loopback,intranet"})


def deliver_to(make_relay: Any, tmp_path: Path, url: str, allow: str) -> dict[str, Any]:
    write_sources(tmp_path / "recipes")
    write_recipe(tmp_path / "recipes", "out", f"""\
source: quicket
events: ["checkout_completed"]
fields:
  email: email
to:
  - type: http
    url: {url}
""")
    relay = make_relay(allow_networks=allow)
    assert relay.send("quicket", "quicket", sample("quicket/checkout_completed.json")).status_code == 200
    [delivery] = relay.settled(1)
    return delivery


def test_loopback_sink_is_refused_by_default(make_relay: Any, sink: Sink, tmp_path: Path) -> None:
    delivery = deliver_to(make_relay, tmp_path, sink.url + "/in", "")
    assert delivery["status"] == "dead"
    assert "this machine (loopback)" in delivery["last_error"]
    assert "RELAY_ALLOW_NETWORKS" in delivery["last_error"]
    assert sink.received == []


def test_a_name_is_checked_after_it_resolves(make_relay: Any, sink: Sink, tmp_path: Path) -> None:
    delivery = deliver_to(make_relay, tmp_path, sink.url.replace("127.0.0.1", "localhost") + "/in",
                          "private")
    assert delivery["status"] == "dead"
    assert "loopback" in delivery["last_error"]
    assert sink.received == []


def test_loopback_sink_is_reached_when_allowed(make_relay: Any, sink: Sink, tmp_path: Path) -> None:
    delivery = deliver_to(make_relay, tmp_path, sink.url.replace("127.0.0.1", "localhost") + "/in",
                          "loopback")
    assert delivery["status"] == "delivered"
    assert sink.bodies()[0]["email"]


@pytest.mark.parametrize("url", ["http://169.254.169.254/latest/meta-data/", "http://[fd00:ec2::254]/",
                                 "http://[::ffff:169.254.169.254]/"])
def test_metadata_addresses_are_refused_even_with_private_allowed(
        make_relay: Any, tmp_path: Path, url: str) -> None:
    delivery = deliver_to(make_relay, tmp_path, url, "loopback,private")
    assert delivery["status"] == "dead"
    assert "metadata" in delivery["last_error"]


# --- templated urls: event data fills the path, never the scheme or host ------------------


def templated(tmp_path: Path, url: str, email_field: str = "email") -> None:
    write_sources(tmp_path / "recipes")
    write_recipe(tmp_path / "recipes", "out", f"""\
source: quicket
events: ["checkout_completed"]
fields:
  email: {email_field}
to:
  - type: http
    url: "{url}"
""")


def test_a_templated_url_takes_percent_encoded_values(make_relay: Any, sink: Sink, tmp_path: Path) -> None:
    # An address crafted to escape the path: every special character stays data.
    templated(tmp_path, sink.url + "/contacts/{{ email }}?src=relay",
              "\"'x@evil.example/../../admin?#'\"")
    relay = make_relay()
    assert relay.send("quicket", "quicket", sample("quicket/checkout_completed.json")).status_code == 200
    [delivery] = relay.settled(1)
    assert delivery["status"] == "delivered", delivery
    [received] = sink.received
    assert received.path == "/contacts/x%40evil.example%2F..%2F..%2Fadmin%3F%23?src=relay"


@pytest.mark.parametrize("url", [
    "http://{{ email }}/x", "https://crm.example.com{{ email }}", "{{ email }}", "http{{ email }}://x/",
    "https://crm.example.com:{{ email }}/",
])
def test_the_scheme_and_host_cannot_be_templated(make_relay: Any, tmp_path: Path, url: str) -> None:
    templated(tmp_path, url)
    relay = make_relay()
    assert relay.client.get("/healthz").json()["errors"] == 1
    from relay.recipes import load_recipes  # the message names the line and says what to do
    from relay.sources import load_sources
    folder = tmp_path / "recipes"
    from relay.destinations import DestinationContext
    [error] = load_recipes(folder, load_sources(folder, lambda n: None), lambda n: None,
                           DestinationContext(tmp_path / "data")).errors()
    assert "only the part of the url after the host can use {{ }}" in error.located()
    assert "out.yaml:7: to[0].url:" in error.located(), error.located()


def test_a_missing_url_field_is_a_plain_dead_delivery(make_relay: Any, sink: Sink, tmp_path: Path) -> None:
    templated(tmp_path, sink.url + "/contacts/{{ contact_id }}")
    relay = make_relay()
    assert relay.send("quicket", "quicket", sample("quicket/checkout_completed.json")).status_code == 200
    [delivery] = relay.settled(1)
    assert delivery["status"] == "dead"
    assert "the url uses a field the delivery does not have" in delivery["last_error"]
    assert sink.received == []


# --- the client itself: httpx's API, sent by aiohttp, every connection checked ------------


OK_ANSWER = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 11\r\n\r\n{\"ok\":true}"


class Wire(RawServer):
    """A raw HTTP/1.1 server on 127.0.0.1 that keeps what came over the wire: how many
    connections were opened (and the most open at once), and each request's bytes.

    Every request gets ``answer`` (after ``delay`` seconds); connections stay open for
    more requests (keep-alive) until the client closes them. With ``tls``, it speaks
    HTTPS with that context.
    """

    def __init__(self, answer: bytes = OK_ANSWER, delay: float = 0.0,
                 tls: ssl.SSLContext | None = None) -> None:
        self.answer = answer
        self.delay = delay
        self.tls = tls
        self.requests: list[bytes] = []
        self.connections = 0
        self.open = 0
        self.most_open = 0
        super().__init__("https" if tls else "http")

    def accepted(self, conn: socket.socket) -> Callable[[], None]:
        with self.lock:
            self.connections += 1
            self.open += 1
            self.most_open = max(self.most_open, self.open)
        return lambda: self._serve(conn)

    def _serve(self, conn: socket.socket) -> None:
        buffer = b""
        try:
            conn.settimeout(30)
            if self.tls is not None:
                conn = self.tls.wrap_socket(conn, server_side=True)
            while True:
                request = read_request(conn, buffer)
                if request is None:
                    return
                head, body, buffer = request
                with self.lock:
                    self.requests.append(head + b"\r\n\r\n" + body)
                time.sleep(self.delay)
                conn.sendall(self.answer)
        except OSError:
            pass
        finally:
            with self.lock:
                self.open -= 1
            conn.close()


@pytest.fixture
def wire() -> Iterator[Wire]:
    server = Wire()
    yield server
    server.close()


async def post(client: httpx.AsyncClient, url: str) -> httpx.Response:
    return await client.request("POST", url, content=b'{"email":"a@example.com"}', timeout=5,
                                headers={"Content-Type": "application/json", "Idempotency-Key": "k1"})


class FakeDNS(aiohttp.abc.AbstractResolver):
    """Name -> addresses from a table, as a name server in someone else's hands answers."""

    def __init__(self, table: dict[str, list[str]]) -> None:
        self.table = table

    async def resolve(self, host: str, port: int = 0,
                      family: socket.AddressFamily = socket.AF_INET) -> list[aiohttp.abc.ResolveResult]:
        if host not in self.table:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return [{"hostname": host, "host": address, "port": port, "proto": 0, "flags": 0,
                 "family": socket.AF_INET6 if ":" in address else socket.AF_INET}
                for address in self.table[host]]

    async def close(self) -> None:
        pass


def dns_client(allow: str, table: dict[str, list[str]]) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=AiohttpTransport(Policy(parse_networks(allow)), httpx.Limits(),
                                                        resolver=FakeDNS(table)))


@pytest.mark.parametrize(("host", "words"), [
    ("127.0.0.1", "127.0.0.1 is this machine"), ("[::ffff:127.0.0.1]", "127.0.0.1 is this machine"),
    ("localhost", "is this machine"),
    ("127.1", "127.1 is not an address relay can check"),
    ("2130706433", "2130706433 is not an address relay can check"),
])
def test_every_way_of_naming_this_machine_is_refused_before_connecting(
        wire: Wire, host: str, words: str) -> None:
    """IP literals never reach a resolver (aiohttp skips it for them), so this is the
    check on the socket aiohttp connects; legacy forms (127.1) are refused outright."""
    url = wire.url.replace("127.0.0.1", host) + "/in"

    async def attempt() -> None:
        async with guarded_client(Policy(parse_networks("private"))) as client:
            await post(client, url)

    with pytest.raises(AddressRefused, match=re.escape(words)):
        asyncio.run(attempt())
    assert wire.connections == 0


@pytest.mark.parametrize(("method", "content", "headers"), [
    ("POST", b'{"email":"a@example.com"}', {"Content-Type": "application/json", "Idempotency-Key": "k1"}),
    ("PUT", b"a=1", {"Authorization": "Bearer t"}),  # no Content-Type given: none added
    ("PATCH", b"", {}),
    # (A DELETE without a body gains "Content-Length: 0" from aiohttp; relay's carry one.)
    ("DELETE", b'{"id":1}', {"Content-Type": "application/json"}),
    ("GET", b"", {}),
])
def test_an_allowed_address_gets_the_request_httpx_would_send_on_one_connection(
        wire: Wire, method: str, content: bytes, headers: dict[str, str]) -> None:
    """What a destination receives is byte for byte what httpx's own transport sent;
    the connection is kept alive and reused."""
    url = wire.url + "/in?x=%41&to=a%40b"  # percent-encoding as httpx left it

    async def attempt() -> tuple[list[httpx.Response], list[Answer]]:
        async with httpx.AsyncClient(headers={"User-Agent": "relay"}) as client:
            await client.request(method, url, content=content, headers=headers)
        async with guarded_client(Policy(parse_networks("loopback")), headers={"User-Agent": "relay"},
                                  limits=httpx.Limits(max_connections=10)) as client:
            responses = [await client.request(method, url, content=content, headers=headers,
                                              timeout=5) for _ in range(3)]
            # What every delivery goes through (destinations/base.py), on the same connection.
            answers = [await client.send_bytes(method, url, content=content, headers=headers,
                                               timeout=5) for _ in range(2)]
            return responses, answers

    responses, answers = asyncio.run(attempt())
    assert [(a.status_code, a.json(), a.http_version) for a in responses] == [
        (200, {"ok": True}, "HTTP/1.1")] * 3
    assert [(a.status_code, json.loads(a.text), a.headers) for a in answers] == [
        (200, {"ok": True}, dict(responses[0].headers))] * 2
    by_httpx, *by_relay = wire.requests
    assert by_httpx.startswith(f"{method} /in?x=%41&to=a%40b HTTP/1.1\r\n".encode())
    assert by_relay == [by_httpx] * 5
    assert wire.connections == 2  # one for httpx's client, one (reused) for relay's


def test_a_name_is_refused_when_every_address_it_has_is(wire: Wire) -> None:
    async def attempt() -> None:
        async with dns_client("", {"crm.example": ["10.1.2.3", "127.0.0.1"]}) as client:
            await post(client, wire.url.replace("127.0.0.1", "crm.example"))

    with pytest.raises(AddressRefused, match=r"^10\.1\.2\.3 is a private network address"):
        asyncio.run(attempt())
    assert wire.connections == 0


def test_a_name_skips_its_refused_addresses_for_an_allowed_one(wire: Wire) -> None:
    async def attempt() -> int:
        async with dns_client("loopback", {"crm.example": ["169.254.169.254", "127.0.0.1"]}) as client:
            return (await post(client, wire.url.replace("127.0.0.1", "crm.example"))).status_code

    assert asyncio.run(attempt()) == 200
    [request] = wire.requests
    assert b"\r\nHost: crm.example:" in request


def test_a_name_that_does_not_resolve_is_a_connect_error() -> None:
    async def attempt() -> None:
        async with dns_client("loopback", {}) as client:
            await post(client, "http://crm.example/")

    with pytest.raises(httpx.ConnectError, match="^cannot resolve crm.example: "):
        asyncio.run(attempt())


def self_signed(folder: Path) -> ssl.SSLContext:
    """A server context with a certificate for 127.0.0.1 that no authority signed."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .sign(key, hashes.SHA256()))
    (folder / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (folder / "key.pem").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(folder / "cert.pem", folder / "key.pem")
    return context


def test_tls_certificates_are_verified(tmp_path: Path) -> None:
    server = Wire(tls=self_signed(tmp_path))
    try:
        async def attempt() -> None:
            async with guarded_client(Policy(parse_networks("loopback"))) as client:
                await post(client, server.url)

        with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            asyncio.run(attempt())
        assert server.requests == []
    finally:
        server.close()


def test_the_connection_limit_holds(wire: Wire) -> None:
    wire.delay = 0.2

    async def attempt() -> list[int]:
        async with guarded_client(Policy(parse_networks("loopback")),
                                  limits=httpx.Limits(max_connections=2)) as client:
            answers = await asyncio.gather(*(post(client, wire.url) for _ in range(6)))
            return [a.status_code for a in answers]

    assert asyncio.run(attempt()) == [200] * 6
    assert wire.most_open == 2 and wire.connections == 2


def test_closing_the_client_closes_its_connections(wire: Wire) -> None:
    client = guarded_client(Policy(parse_networks("loopback")))  # built outside any event loop

    async def attempt() -> None:
        await post(client, wire.url)
        assert wire.open == 1
        await client.aclose()

    asyncio.run(attempt())
    wait_until(lambda: wire.open == 0, timeout=5)


def answered(head: bytes, body: bytes) -> tuple[httpx.Response, Answer]:
    """The same answer, as httpx's own client reads it and as relay's ``send_bytes`` does."""
    wire = Wire(head + b"\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
    try:
        async def attempt() -> tuple[httpx.Response, Answer]:
            async with httpx.AsyncClient() as plain:
                by_httpx = await plain.post(wire.url, content=b"{}")
            async with guarded_client(Policy(parse_networks("loopback"))) as client:
                return by_httpx, await client.send_bytes("POST", wire.url, headers={},
                                                         content=b"{}", timeout=5)
        return asyncio.run(attempt())
    finally:
        wire.close()


@pytest.mark.parametrize(("head", "body"), [
    (b"HTTP/1.1 200 OK\r\nContent-Type: application/json", b'{"id": "caf\xc3\xa9"}'),
    # A charset is honoured; a body that is not in it has its bad bytes replaced.
    (b"HTTP/1.1 201 Created\r\nContent-Type: text/plain; charset=latin-1", "d\u00e9j\u00e0".encode("latin-1")),
    (b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain", b"not utf-8: \xff\xfe"),
    (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain; charset=no-such-charset", b"plain"),
    # Compressed, as relay asks for (gzip, deflate), and repeated headers.
    (b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nX-Seen: 1\r\nX-Seen: 2",
     gzip.compress('{"ok": "s\u00ed"}'.encode())),
    (b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 7\r\nX-Note: caf\xc3\xa9", b""),
])
def test_an_answer_reads_as_httpx_reads_it(head: bytes, body: bytes) -> None:
    by_httpx, answer = answered(head, body)
    assert answer == Answer(by_httpx.status_code, dict(by_httpx.headers), by_httpx.text)


def test_redirects_are_not_followed(wire: Wire) -> None:
    elsewhere = Wire()
    wire.answer = (b"HTTP/1.1 302 Found\r\nLocation: %s/elsewhere\r\nContent-Length: 0\r\n\r\n"
                   % elsewhere.url.encode())
    try:
        async def attempt() -> httpx.Response:
            async with guarded_client(Policy(parse_networks("loopback"))) as client:
                return await post(client, wire.url)

        answer = asyncio.run(attempt())
        assert answer.status_code == 302
        assert answer.headers["location"] == elsewhere.url + "/elsewhere"
        assert elsewhere.connections == 0
    finally:
        elsewhere.close()


def test_no_cookie_goes_from_one_delivery_to_the_next(wire: Wire) -> None:
    wire.answer = OK_ANSWER.replace(b"\r\n\r\n", b"\r\nSet-Cookie: session=abc; Path=/\r\n\r\n", 1)

    async def attempt() -> None:
        async with guarded_client(Policy(parse_networks("loopback"))) as client:
            for _ in range(2):  # by name: aiohttp's own cookie jar ignores IP addresses
                await post(client, wire.url.replace("127.0.0.1", "localhost"))

    asyncio.run(attempt())
    assert len(wire.requests) == 2
    assert not any(b"\r\ncookie:" in r.lower() for r in wire.requests)


def test_proxy_settings_in_the_environment_are_ignored(wire: Wire, monkeypatch: pytest.MonkeyPatch) -> None:
    """A proxy would connect instead of relay, to an address relay never checked."""
    proxy = Wire()
    try:
        for name in ("HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
            monkeypatch.setenv(name, proxy.url)
        monkeypatch.delenv("NO_PROXY", raising=False)
        monkeypatch.delenv("no_proxy", raising=False)

        async def attempt() -> int:
            async with guarded_client(Policy(parse_networks("loopback"))) as client:
                return (await post(client, wire.url)).status_code

        assert asyncio.run(attempt()) == 200
        assert len(wire.requests) == 1 and proxy.connections == 0
    finally:
        proxy.close()


def test_a_closed_port_is_a_connect_error_that_says_so() -> None:
    async def attempt() -> None:
        async with guarded_client(Policy(parse_networks("loopback"))) as client:
            await post(client, f"http://127.0.0.1:{free_port()}/")

    with pytest.raises(httpx.ConnectError) as error:
        asyncio.run(attempt())
    assert transport_detail(error.value) == "the connection was refused (is the destination running?)"
