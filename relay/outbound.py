"""Which addresses relay may send to (no server-side request forgery).

Recipes choose where deliveries go, and anyone who can edit a recipe, or shape
an event that a recipe turns into a URL, could otherwise point relay at the
machine's own services or at a cloud's metadata address (which hands out the
server's credentials). So every connection relay opens for a delivery is checked
*after* DNS resolution, at connect time, on every attempt: a name that resolves
to a refused address is refused, and relay connects to the very address it
checked (a second lookup cannot swap it).

By default only public internet addresses are allowed. ``RELAY_ALLOW_NETWORKS``
opens more: ``loopback`` (this machine), ``private`` (home and office networks,
e.g. a CRM on the NAS) and any CIDR such as ``192.168.1.0/24``. Cloud metadata
addresses are refused even under ``private``; only a CIDR naming them opens them.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable
from typing import Any

import anyio
import httpcore
import httpx

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


class _Stream(httpcore.AsyncNetworkStream):
    """A connection as httpcore's backend made it, minus one crash.

    When the peer resets the connection the moment it is made, anyio's socket is
    already gone and asking it for details (httpcore asks for the TLS object before
    sending) raises AttributeError. The connection is then simply unusable: answer
    "nothing known", and the write that follows fails as the reset it is.
    """

    def __init__(self, inner: httpcore.AsyncNetworkStream) -> None:
        self.inner = inner

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return await self.inner.read(max_bytes, timeout)

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        await self.inner.write(buffer, timeout)

    async def aclose(self) -> None:
        await self.inner.aclose()

    async def start_tls(self, ssl_context: Any, server_hostname: str | None = None,
                        timeout: float | None = None) -> httpcore.AsyncNetworkStream:
        return _Stream(await self.inner.start_tls(ssl_context, server_hostname, timeout))

    def get_extra_info(self, info: str) -> Any:
        try:
            return self.inner.get_extra_info(info)
        except AttributeError:
            return None


class GuardedBackend(httpcore.AsyncNetworkBackend):
    """httpcore's network backend, resolving names itself and checking each address."""

    def __init__(self, inner: httpcore.AsyncNetworkBackend, policy: Policy) -> None:
        self.inner = inner
        self.policy = policy

    async def connect_tcp(self, host: str, port: int, timeout: float | None = None,
                          local_address: str | None = None, socket_options: Any = None,
                          ) -> httpcore.AsyncNetworkStream:
        try:
            with anyio.fail_after(timeout):
                infos = await anyio.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except TimeoutError:
            raise httpcore.ConnectTimeout(f"looking up {host} took longer than {timeout} s") from None
        except OSError as e:
            raise httpcore.ConnectError(f"cannot resolve {host}: {e}") from e
        addresses: list[str] = []
        refusals: list[str] = []
        for _family, _type, _proto, _name, sockaddr in infos:
            address = ipaddress.ip_address(str(sockaddr[0]).split("%")[0])
            why = self.policy.refusal(address)
            if why is None:
                if str(address) not in addresses:
                    addresses.append(str(address))
            else:
                refusals.append(why)
        if not addresses:
            raise AddressRefused(refusals[0] if refusals else f"{host} has no address")
        last: Exception | None = None
        for checked in addresses:  # the checked address itself, not the name again
            try:
                return _Stream(await self.inner.connect_tcp(checked, port, timeout=timeout,
                                                            local_address=local_address,
                                                            socket_options=socket_options))
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as e:
                last = e
        assert last is not None
        raise last

    async def connect_unix_socket(self, path: str, timeout: float | None = None,
                                  socket_options: Any = None) -> httpcore.AsyncNetworkStream:
        raise AddressRefused("relay does not deliver to unix sockets")

    async def sleep(self, seconds: float) -> None:
        await self.inner.sleep(seconds)


def guarded_client(policy: Policy, **kwargs: Any) -> httpx.AsyncClient:
    """An httpx client whose every connection goes through ``policy``."""
    limits = kwargs.pop("limits", httpx.Limits())
    # No proxy from the environment: relay checks the address it really connects to.
    transport = httpx.AsyncHTTPTransport(limits=limits, trust_env=False)
    pool = transport._pool  # httpx exposes no other way to set httpcore's backend
    pool._network_backend = GuardedBackend(pool._network_backend, policy)
    return httpx.AsyncClient(transport=transport, trust_env=False, **kwargs)
