"""Arbitrary requests to every source, over real HTTP, never make relay answer 500."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import FUZZ_SCALE, SECRETS, RelayServer, sign, write_sources
from relay.settings import Settings

SOURCES = ["tikkl", "tito", "quicket", "openticket", "webconnex", "svix", "custom", "nope"]
HEADER_NAMES = [
    "X-Tikkl-Signature", "Tito-Signature", "X-Tito-Signature", "X-Tito-Timestamp",
    "X-Webhook-Name", "OpenTicket-Identifier", "OpenTicket-Trigger", "X-Webconnex-Signature",
    "X-Webconnex-Event", "webhook-id", "webhook-timestamp", "webhook-signature",
    "X-Custom-Signature", "Content-Type", "Content-Encoding",
]
# Header values must be sendable: visible ASCII and inner spaces (h11 refuses edge whitespace).
header_value = st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=200).map(str.strip)


@pytest.fixture(scope="module")
def relay(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RelayServer]:
    tmp: Path = tmp_path_factory.mktemp("fuzz")
    write_sources(tmp / "recipes")
    (tmp / "recipes" / "all.yaml").write_text(
        "source: quicket\nfields:\n  ref: reference\nto:\n  - type: csv\n    path: all.csv\n")
    server = RelayServer(Settings.from_env(
        environ={}, recipes=tmp / "recipes", db=tmp / "relay.db", data=tmp / "data",
        max_body=4096))
    yield server
    server.stop()


@settings(max_examples=150 * FUZZ_SCALE, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    source=st.sampled_from(SOURCES),
    token=st.one_of(st.none(), st.text(st.characters(min_codepoint=48, max_codepoint=122), min_size=1,
                                       max_size=40)),
    body=st.one_of(st.binary(max_size=6000), st.just(b'{"reference": "R1"}'), st.just(b"[]")),
    headers=st.dictionaries(st.sampled_from(HEADER_NAMES), header_value, max_size=6),
)
def test_arbitrary_requests_never_500(relay: RelayServer, source: str, token: str | None, body: bytes,
                                      headers: dict[str, str]) -> None:
    path = f"/hooks/{source}" + (f"/{token}" if token else "")
    response = relay.post(path, body, headers)
    assert response.status_code < 500 or response.status_code == 503, response.text
    assert response.headers["content-type"].startswith("application/json")
    assert "error" in response.json() or response.status_code == 200


@settings(max_examples=100 * FUZZ_SCALE, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=st.binary(max_size=3000))
def test_signed_garbage_is_400_not_500(relay: RelayServer, body: bytes) -> None:
    """Correctly signed, but not JSON: a plain 400, or accepted if it happens to be JSON."""
    path, headers = sign("webconnex", "webconnex", body, secret=SECRETS["webconnex"])
    response = relay.post(path, body, headers)
    assert response.status_code in (200, 400), response.text


def test_deeply_nested_json_is_400(relay: RelayServer) -> None:
    body = b"[" * 1500 + b"]" * 1500  # deeper than Python's recursion limit, under max_body
    path, headers = sign("webconnex", "webconnex", body)
    response = relay.post(path, body, headers)
    assert response.status_code == 400
    assert "nested too deeply" in response.json()["error"]


def test_huge_number_is_400(relay: RelayServer) -> None:
    body = b'{"n": ' + b"9" * 4400 + b"}"
    path, headers = sign("webconnex", "webconnex", body)
    relay_big = relay.post(path, body, headers)
    assert relay_big.status_code in (400, 413)


def test_compressed_body_is_refused_plainly(relay: RelayServer) -> None:
    body = b'{"reference": "R1"}'
    path, headers = sign("quicket", "quicket", body)
    headers["Content-Encoding"] = "gzip"
    response = relay.post(path, body, headers)
    assert response.status_code == 400
    assert "Compressed" in response.json()["error"]
