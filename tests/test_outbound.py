"""relay refuses to deliver to addresses it should not reach (SSRF), checked at connect time."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Any

import pytest

from conftest import Sink, sample, write_recipe, write_sources
from relay.errors import ConfigError
from relay.outbound import Policy, parse_networks
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


def test_a_connection_reset_as_it_opens_is_not_a_crash() -> None:
    """anyio's socket is gone when the peer resets at once, and asking it for details
    raised AttributeError inside httpcore (seen in CI as 'relay hit an internal error')."""
    import asyncio

    import httpcore

    from relay.outbound import _Stream

    class Gone(httpcore.AsyncNetworkStream):
        def get_extra_info(self, info: str) -> Any:
            raise AttributeError("'NoneType' object has no attribute 'getpeername'")

    assert _Stream(Gone()).get_extra_info("ssl_object") is None

    class Fine(httpcore.AsyncNetworkStream):
        def get_extra_info(self, info: str) -> Any:
            return ("127.0.0.1", 1) if info == "server_addr" else None

        async def aclose(self) -> None:
            self.closed = True

    fine = Fine()
    assert _Stream(fine).get_extra_info("server_addr") == ("127.0.0.1", 1)
    asyncio.run(_Stream(fine).aclose())
    assert fine.closed
