"""Each platform end to end: its sample, signed its way, reaches a real HTTP sink.

And each way a request can fail to prove itself (wrong secret, changed byte,
missing header, stale timestamp) gets 401, is logged as a rejection, and
delivers nothing.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from conftest import (
    SECRETS,
    RelayServer,
    Sink,
    sample,
    sign,
    wait_until,
    write_recipe,
    write_sources,
)


def recipes_for(folder: Path, sink: Sink) -> None:
    write_sources(folder)
    write_recipe(folder, "tikkl", f"""\
source: tikkl
events: ["ticket"]
fields:
  ticket: ticketId
  email: registrantEmail
  name: registrantName
to:
  - type: http
    url: {sink.url}/tikkl
""")
    write_recipe(folder, "tito", f"""\
source: tito
events: ["ticket.*"]
when: "registration.receipt.paid"
fields:
  email: email
  name: "{{{{ first_name }}}} {{{{ last_name }}}}"
  tshirt: responses."t-shirt-size"
  origin: "'tito'"
to:
  - type: http
    url: {sink.url}/tito
""")
    write_recipe(folder, "tito-new", f"""\
source: tito
events: ["ticket.completed"]
when: "data"
fields:
  email: data.email
to:
  - type: http
    url: {sink.url}/tito-new
""")
    write_recipe(folder, "quicket", f"""\
source: quicket
events: ["checkout_completed"]
for_each: tickets
fields:
  order: _event.reference
  ticket: id
  name: attendee_name
  email: attendee_email
  index: _index
to:
  - type: http
    url: {sink.url}/quicket
""")
    write_recipe(folder, "openticket", f"""\
source: openticket
events: ["order.*"]
fields:
  order: guid
  email: email
  total: "{{{{ '%.2f' | format(price / 100) }}}}"
to:
  - type: http
    url: {sink.url}/openticket
    body: form
""")
    write_recipe(folder, "webconnex", f"""\
source: webconnex
events: ["registration"]
for_each: data.registrants
fields:
  order: _event.data.orderNumber
  first: "field(data, 'name').first.value"
  email: "field(data, 'email')"
to:
  - type: http
    url: {sink.url}/webconnex
""")


@pytest.fixture
def relay(make_relay: Any, tmp_path: Path, sink: Sink) -> RelayServer:
    recipes_for(tmp_path / "recipes", sink)
    return make_relay()


def delivered_to(sink: Sink, path: str, count: int = 1) -> list[Any]:
    wait_until(lambda: len([r for r in sink.received if r.path == path]) >= count)
    time.sleep(0.2)  # give a wrong extra delivery the chance to show up too
    return [r for r in sink.received if r.path == path]


def test_no_recipe_errors(relay: RelayServer) -> None:
    health = relay.client.get("/healthz").json()
    assert health == {"status": "ok", "sources": 7, "recipes": 6, "errors": 0}


def test_tikkl(relay: RelayServer, sink: Sink) -> None:
    body = sample("tikkl/ticket.json")
    response = relay.send("tikkl", "tikkl", body)
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "accepted"
    [got] = delivered_to(sink, "/tikkl")
    assert got.json() == {"ticket": "123-45678901-2345678-001", "email": "john@example.com",
                          "name": "John Smith"}
    assert got.headers["idempotency-key"]
    assert got.headers["content-type"] == "application/json"


def test_tikkl_transaction_is_stored_but_ignored(relay: RelayServer, sink: Sink) -> None:
    response = relay.send("tikkl", "tikkl", sample("tikkl/transaction.json"))
    assert response.status_code == 200
    assert response.json()["status"] == "ignored"  # no recipe takes "transaction"
    [event] = relay.rows("SELECT type, status FROM events")
    assert event == {"type": "transaction", "status": "ignored"}


def test_tito_classic(relay: RelayServer, sink: Sink) -> None:
    body = sample("tito/ticket.completed.json")
    path, headers = sign("tito", "tito", body)
    headers["X-Webhook-Name"] = "ticket.completed"
    response = relay.post(path, body, headers)
    assert response.status_code == 200, response.text
    [got] = delivered_to(sink, "/tito")
    assert got.json() == {"email": "winter@example.com", "name": "Peter Winter",
                          "tshirt": "Women's S", "origin": "tito"}
    assert not [r for r in sink.received if r.path == "/tito-new"]


def test_tito_timestamped(relay: RelayServer, sink: Sink) -> None:
    body = sample("tito/timestamped.json")
    path, headers = sign("tito", "tito", body, config={"scheme": "timestamped"})
    assert "X-Tito-Signature" in headers
    headers["X-Tito-Webhook-Event"] = "ticket.completed"
    response = relay.post(path, body, headers)
    assert response.status_code == 200, response.text
    [got] = delivered_to(sink, "/tito-new")
    assert got.json() == {"email": json.loads(body)["data"]["email"]}


def test_quicket_one_delivery_per_ticket(relay: RelayServer, sink: Sink) -> None:
    body = sample("quicket/checkout_completed.json")
    response = relay.send("quicket", "quicket", body)
    assert response.status_code == 200, response.text
    got = delivered_to(sink, "/quicket", 2)
    payload = json.loads(body)
    assert sorted((r.json()["ticket"], r.json()["index"]) for r in got) == [
        (t["id"], i) for i, t in enumerate(payload["tickets"])]
    assert {r.json()["order"] for r in got} == {payload["reference"]}
    assert len({r.headers["idempotency-key"] for r in got}) == 2


def test_quicket_send_test_is_logged_not_forwarded(relay: RelayServer, sink: Sink) -> None:
    test_body = sample("quicket/send_test.json")
    response = relay.send("quicket", "quicket", test_body)
    assert response.status_code == 200
    assert response.json()["status"] == "ignored"
    # a real delivery afterwards proves the router ran past the test event
    relay.send("quicket", "quicket", sample("quicket/checkout_completed.json"))
    delivered_to(sink, "/quicket", 2)
    assert all(r.json()["order"] != "REF00123456" for r in sink.received)
    [test_event] = relay.rows("SELECT is_test FROM events WHERE id = ?", [response.json()["event"]])
    assert test_event["is_test"] == 1


def test_openticket_form_body(relay: RelayServer, sink: Sink) -> None:
    body = sample("openticket/order.paid.json")
    response = relay.send("openticket", "openticket", body)
    assert response.status_code == 200, response.text
    [got] = delivered_to(sink, "/openticket")
    payload = json.loads(body)
    assert got.headers["content-type"] == "application/x-www-form-urlencoded"
    from urllib.parse import parse_qs
    form = parse_qs(got.body.decode())
    assert form == {"order": [payload["guid"]], "email": [payload["email"]],
                    "total": [f"{payload['price'] / 100:.2f}"]}


def test_webconnex_registrants(relay: RelayServer, sink: Sink) -> None:
    body = sample("webconnex/registration.json")
    path, headers = sign("webconnex", "webconnex", body)
    headers["X-Webconnex-Event"] = "registration"
    headers["X-Webconnex-Delivery"] = "d1"
    response = relay.post(path, body, headers)
    assert response.status_code == 200, response.text
    got = delivered_to(sink, "/webconnex", 2)
    payload = json.loads(body)
    expected = []
    for registrant in payload["data"]["registrants"]:
        fields = {f["key"]: f for f in registrant["data"]}
        expected.append({"order": payload["data"]["orderNumber"],
                         "first": fields["name"]["first"]["value"],
                         "email": fields["email"]["value"]})
    assert sorted([r.json() for r in got], key=str) == sorted(expected, key=str)


def test_webconnex_test_event_not_forwarded(relay: RelayServer, sink: Sink) -> None:
    body = sample("webconnex/test.json")
    path, headers = sign("webconnex", "webconnex", body)
    headers["X-Webconnex-Event"] = "test"
    response = relay.post(path, body, headers)
    assert response.status_code == 200
    assert response.json()["status"] == "ignored"
    time.sleep(1.0)
    assert sink.received == []


def test_redelivery_is_duplicate(relay: RelayServer, sink: Sink) -> None:
    body = sample("tikkl/ticket.json")
    first = relay.send("tikkl", "tikkl", body)
    second = relay.send("tikkl", "tikkl", body)
    assert first.json()["status"] == "accepted"
    assert second.status_code == 200
    assert second.json() == {"status": "duplicate", "event": first.json()["event"]}
    delivered_to(sink, "/tikkl")
    time.sleep(0.5)
    assert len([r for r in sink.received if r.path == "/tikkl"]) == 1


# --- refusals -------------------------------------------------------------------

CASES = {
    "tikkl": ("tikkl", "tikkl/ticket.json", "X-Tikkl-Signature", None),
    "tito": ("tito", "tito/ticket.completed.json", "Tito-Signature", None),
    "quicket": ("quicket", "quicket/checkout_completed.json", None, None),
    "openticket": ("openticket", "openticket/order.paid.json", "OpenTicket-Identifier", None),
    "webconnex": ("webconnex", "webconnex/registration.json", "X-Webconnex-Signature", None),
    "tito-timestamped": ("tito", "tito/timestamped.json", "X-Tito-Signature", {"scheme": "timestamped"}),
    "svix": ("standard_webhooks", None, "webhook-signature", None),
}


def _case(name: str) -> tuple[str, str, bytes, str | None, dict[str, Any] | None]:
    platform, sample_name, header, config = CASES[name]
    source = "svix" if name == "svix" else platform
    body = sample(sample_name) if sample_name else b'{"type":"order.created","id":"o1"}'
    return source, platform, body, header, config


def assert_refused(relay: RelayServer, sink: Sink, response: Any, reason: str) -> None:
    assert response.status_code == 401, response.text
    assert response.json()["error"]
    rejections = relay.rows("SELECT status_code, reason FROM rejections")
    assert rejections and rejections[-1]["status_code"] == 401
    assert reason.lower() in rejections[-1]["reason"].lower()
    assert relay.rows("SELECT * FROM events") == []
    time.sleep(0.3)
    assert sink.received == []


@pytest.mark.parametrize("name", list(CASES))
def test_wrong_secret(relay: RelayServer, sink: Sink, name: str) -> None:
    source, platform, body, header, config = _case(name)
    wrong = "whsec_" + "QUJD" * 8 if platform == "standard_webhooks" else "not-the-secret"
    path, headers = sign(source, platform, body, secret=wrong, config=config)
    response = relay.post(path, body, headers)
    assert_refused(relay, sink, response, "not" if platform in ("quicket", "openticket") else "match")
    # the secret itself never lands in the log
    for row in relay.rows("SELECT headers, reason FROM rejections"):
        assert SECRETS.get(platform, "-") not in row["headers"] + row["reason"]


@pytest.mark.parametrize("name", [n for n in CASES if n not in ("quicket", "openticket")])
def test_changed_byte(relay: RelayServer, sink: Sink, name: str) -> None:
    source, platform, body, header, config = _case(name)
    path, headers = sign(source, platform, body, config=config)
    changed = bytearray(body)
    changed[len(changed) // 2] ^= 0x01
    response = relay.post(path, bytes(changed), headers)
    assert_refused(relay, sink, response, "match")


@pytest.mark.parametrize("name", list(CASES))
def test_missing_header(relay: RelayServer, sink: Sink, name: str) -> None:
    source, platform, body, header, config = _case(name)
    path, headers = sign(source, platform, body, config=config)
    if header is None:  # Quicket: the token in the URL is the "header"
        path = f"/hooks/{source}"
    else:
        headers.pop(header)
    response = relay.post(path, body, headers)
    assert_refused(relay, sink, response, "token" if header is None else header)


@pytest.mark.parametrize("name", ["tito-timestamped", "svix"])
# 5 s past the 300 s window: a clock second may tick between signing and checking.
@pytest.mark.parametrize("offset", [-305, 305])
def test_stale_timestamp(relay: RelayServer, sink: Sink, name: str, offset: int) -> None:
    source, platform, body, header, config = _case(name)
    path, headers = sign(source, platform, body, config=config, now=time.time() + offset)
    response = relay.post(path, body, headers)
    assert_refused(relay, sink, response, "seconds away")


def test_unknown_source_is_404_and_logged(relay: RelayServer) -> None:
    response = relay.post("/hooks/nope", b"{}", {"Content-Type": "application/json"})
    assert response.status_code == 404
    assert "no source named 'nope'" in response.json()["error"]
    assert relay.rows("SELECT source, status_code FROM rejections") == [
        {"source": "nope", "status_code": 404}]


def test_not_json_is_400(relay: RelayServer, sink: Sink) -> None:
    body = b"this is not json"
    response = relay.send("tikkl", "tikkl", body)
    assert response.status_code == 400
    assert "not valid JSON" in response.json()["error"]
    assert relay.rows("SELECT status_code FROM rejections") == [{"status_code": 400}]


def test_too_large_is_413(make_relay: Any, tmp_path: Path, sink: Sink) -> None:
    recipes_for(tmp_path / "recipes", sink)
    relay = make_relay(max_body=1000)
    body = json.dumps({"objectType": "ticket", "pad": "x" * 2000}).encode()
    response = relay.send("tikkl", "tikkl", body)
    assert response.status_code == 413
    assert "RELAY_MAX_BODY" in response.json()["error"]


def test_unconfigured_source_asks_for_a_retry(make_relay: Any, tmp_path: Path, sink: Sink) -> None:
    recipes_for(tmp_path / "recipes", sink)
    write_sources(tmp_path / "recipes", extra="later:\n  platform: webconnex\n  secrets: [\"${NOT_SET_YET}\"]\n"
                  "ot2:\n  platform: openticket\n  nonce: ${NOT_SET_EITHER}\n")
    relay = make_relay()
    response = relay.post("/hooks/later", b"{}", {"Content-Type": "application/json"})
    assert response.status_code == 503
    assert "NOT_SET_YET" in response.json()["error"]
    # OpenTicket only retries after a 4xx, so its "try again" is 429
    response = relay.post("/hooks/ot2", b"{}", {"Content-Type": "application/json"})
    assert response.status_code == 429


def test_trailing_slash_url_is_accepted(relay: RelayServer, sink: Sink) -> None:
    """A webhook URL pasted with a trailing slash works (a redirect would drop the POST)."""
    body = sample("tikkl/ticket.json")
    path, headers = sign("tikkl", "tikkl", body)
    response = relay.post(path + "/", body, headers)
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "accepted"
    delivered_to(sink, "/tikkl")
