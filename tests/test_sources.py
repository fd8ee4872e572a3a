"""The verifiers of relay.sources, one class per platform, plus loading sources.yaml.

Every "known good" signature here is computed in the test with hmac/hashlib/base64 by
the rule docs/platforms.md gives for the platform, never by the platform's own
``sign()``; ``sign()`` is tested separately (its output must verify).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import textwrap
from pathlib import Path
from typing import Any

import pytest

from relay.errors import (
    ConfigError,
    SecretMissing,
    SignatureMismatch,
    SignatureMissing,
    SourceNotConfigured,
    StaleTimestamp,
    UnknownSource,
)
from relay.sources import PLATFORMS, Described, Platform, Request, load_sources

SAMPLES = Path(__file__).parent / "samples"
NOW = 1_750_000_000.0
TOLERANCE = 300.0
T = int(NOW)


# --- helpers ---------------------------------------------------------------------


def sample(name: str) -> bytes:
    """A sample payload's raw bytes (signatures are over raw bytes)."""
    return (SAMPLES / name).read_bytes()


def payload(body: bytes) -> Any:
    return json.loads(body)


def make(platform: str, *secrets: str, **config: Any) -> Platform:
    return PLATFORMS[platform](list(secrets), config)


def request(
    headers: dict[str, str] | None = None, body: bytes = b"", token: str | None = None,
) -> Request:
    # Request expects lower-case header names, as the HTTP layer gives them.
    return Request({k.lower(): v for k, v in (headers or {}).items()}, body, token)


def verify(p: Platform, headers: dict[str, str] | None, body: bytes, token: str | None = None,
           now: float = NOW) -> None:
    p.verify(request(headers, body, token), now=now, tolerance=TOLERANCE)


def describe(p: Platform, headers: dict[str, str] | None, body: bytes) -> Described:
    return p.describe(request(headers, body), payload(body))


def digest(key: str | bytes, message: bytes, algorithm: Any = hashlib.sha256) -> bytes:
    if isinstance(key, str):
        key = key.encode("utf-8")
    return hmac.new(key, message, algorithm).digest()


def hex_mac(key: str | bytes, message: bytes, algorithm: Any = hashlib.sha256) -> str:
    return digest(key, message, algorithm).hex()


def b64_mac(key: str | bytes, message: bytes, algorithm: Any = hashlib.sha256) -> str:
    return base64.b64encode(digest(key, message, algorithm)).decode("ascii")


def flip(body: bytes, index: int = 10) -> bytes:
    """The body with one byte changed."""
    changed = bytearray(body)
    changed[index] ^= 0x01
    return bytes(changed)


def test_every_platform_has_a_test_class() -> None:
    covered = {
        "tikkl", "tito", "quicket", "openticket", "webconnex", "standard_webhooks", "hmac",
        "token", "stripe", "github", "shopify", "ticket_tailor",
    }
    assert set(PLATFORMS) == covered


# --- Tikkl -----------------------------------------------------------------------


class TestTikkl:
    SECRET = "tikkl-org-secret"
    OTHER = "tikkl-rotated-secret"
    HEADER = "X-Tikkl-Signature"

    @pytest.fixture(params=["tikkl/transaction.json", "tikkl/ticket.json"])
    def body(self, request: pytest.FixtureRequest) -> bytes:
        return sample(request.param)

    @pytest.mark.parametrize("form", [
        "hex", "HEX", "sha256=hex", "SHA256=HEX", "base64", "sha256=base64", "urlsafe_base64",
    ])
    def test_known_good_encodings(self, body: bytes, form: str) -> None:
        raw = digest(self.SECRET, body)
        encoded = {
            "hex": raw.hex(),
            "HEX": raw.hex().upper(),
            "sha256=hex": "sha256=" + raw.hex(),
            "SHA256=HEX": "SHA256=" + raw.hex().upper(),
            "base64": base64.b64encode(raw).decode(),
            "sha256=base64": "sha256=" + base64.b64encode(raw).decode(),
            "urlsafe_base64": base64.urlsafe_b64encode(raw).decode(),
        }[form]
        verify(make("tikkl", self.SECRET), {self.HEADER: encoded}, body)

    def test_sign_output_verifies(self, body: bytes) -> None:
        p = make("tikkl", self.SECRET)
        signed = p.sign(body, secret=self.SECRET, now=NOW)
        assert signed.token is None
        verify(p, signed.headers, body)

    def test_wrong_secret(self, body: bytes) -> None:
        with pytest.raises(SignatureMismatch):
            verify(make("tikkl", self.SECRET), {self.HEADER: hex_mac("not-the-secret", body)}, body)

    def test_one_changed_body_byte(self, body: bytes) -> None:
        with pytest.raises(SignatureMismatch):
            verify(make("tikkl", self.SECRET), {self.HEADER: hex_mac(self.SECRET, body)},
                   flip(body))

    @pytest.mark.parametrize("headers", [
        {}, {"X-Tikkl-Signature": ""}, {"X-Tikkl-Signature": "  "},
    ])
    def test_missing_header(self, body: bytes, headers: dict[str, str]) -> None:
        with pytest.raises(SignatureMissing):
            verify(make("tikkl", self.SECRET), headers, body)

    def test_garbage_header_is_a_mismatch(self, body: bytes) -> None:
        with pytest.raises(SignatureMismatch):
            verify(make("tikkl", self.SECRET), {self.HEADER: "not a signature"}, body)

    def test_second_secret_accepted(self, body: bytes) -> None:
        p = make("tikkl", self.SECRET, self.OTHER)
        verify(p, {self.HEADER: hex_mac(self.OTHER, body)}, body)
        verify(p, {self.HEADER: hex_mac(self.SECRET, body)}, body)

    def test_header_holding_the_secret_is_refused_with_a_hint(self, body: bytes) -> None:
        with pytest.raises(SignatureMismatch) as info:
            verify(make("tikkl", self.SECRET), {self.HEADER: self.SECRET}, body)
        assert "signature: secret" in info.value.message

    @pytest.mark.parametrize("value", ["hmac-of-other", SECRET + "x", SECRET[:-1], SECRET.upper()])
    def test_plain_mismatch_does_not_mention_secret_mode(self, body: bytes, value: str) -> None:
        if value == "hmac-of-other":
            value = hex_mac("other", body)
        with pytest.raises(SignatureMismatch) as info:
            verify(make("tikkl", self.SECRET), {self.HEADER: value}, body)
        assert "signature: secret" not in info.value.message

    def test_secret_mode_accepts_the_secret(self, body: bytes) -> None:
        p = make("tikkl", self.SECRET, self.OTHER, signature="secret")
        verify(p, {self.HEADER: self.SECRET}, body)
        verify(p, {self.HEADER: self.OTHER}, body)
        verify(p, p.sign(body, secret=self.SECRET, now=NOW).headers, body)

    def test_secret_mode_refuses_anything_else(self, body: bytes) -> None:
        p = make("tikkl", self.SECRET, signature="secret")
        with pytest.raises(SignatureMismatch):
            verify(p, {self.HEADER: "tikkl-org-secreT"}, body)
        with pytest.raises(SignatureMismatch):  # an HMAC is not the secret
            verify(p, {self.HEADER: hex_mac(self.SECRET, body)}, body)
        with pytest.raises(SignatureMissing):
            verify(p, {}, body)

    def test_bad_signature_option(self) -> None:
        with pytest.raises(ConfigError):
            make("tikkl", self.SECRET, signature="plaintext")

    def test_describe_transaction(self) -> None:
        body = sample("tikkl/transaction.json")
        assert describe(make("tikkl", self.SECRET), {}, body) == Described(
            type="transaction", dedup_key="transaction:123-45678901-2345678", is_test=False)

    def test_describe_ticket(self) -> None:
        body = sample("tikkl/ticket.json")
        assert describe(make("tikkl", self.SECRET), {}, body) == Described(
            type="ticket", dedup_key="ticket:123-45678901-2345678-001", is_test=False)


# --- Tito (classic) ----------------------------------------------------------------


class TestTitoClassic:
    TOKEN = "event-security-token-1"
    TOKEN2 = "event-security-token-2"

    @pytest.fixture(params=["tito/ticket.completed.json", "tito/registration.finished.json"])
    def body(self, request: pytest.FixtureRequest) -> bytes:
        return sample(request.param)

    def headers(self, sig: str, name: str = "ticket.completed") -> dict[str, str]:
        return {"Tito-Signature": sig, "X-Webhook-Name": name, "X-Webhook-Endpoint-Id": "42"}

    def test_known_good(self, body: bytes) -> None:
        verify(make("tito", self.TOKEN), self.headers(b64_mac(self.TOKEN, body)), body)

    def test_hex_is_not_the_classic_encoding(self, body: bytes) -> None:
        with pytest.raises(SignatureMismatch):
            verify(make("tito", self.TOKEN), self.headers(hex_mac(self.TOKEN, body)), body)

    def test_sign_output_verifies(self, body: bytes) -> None:
        p = make("tito", self.TOKEN)
        signed = p.sign(body, secret=self.TOKEN, now=NOW)
        assert "Tito-Signature" in signed.headers
        verify(p, signed.headers, body)

    def test_wrong_secret(self, body: bytes) -> None:
        with pytest.raises(SignatureMismatch):
            verify(make("tito", self.TOKEN), self.headers(b64_mac("nope", body)), body)

    def test_one_changed_body_byte(self, body: bytes) -> None:
        with pytest.raises(SignatureMismatch):
            verify(make("tito", self.TOKEN), self.headers(b64_mac(self.TOKEN, body)), flip(body))

    def test_missing_header(self, body: bytes) -> None:
        with pytest.raises(SignatureMissing):
            verify(make("tito", self.TOKEN), {"X-Webhook-Name": "ticket.completed"}, body)

    def test_second_secret_accepted(self, body: bytes) -> None:
        # One token per Tito event, several events on one endpoint.
        p = make("tito", self.TOKEN, self.TOKEN2)
        verify(p, self.headers(b64_mac(self.TOKEN2, body)), body)
        verify(p, self.headers(b64_mac(self.TOKEN, body)), body)

    def test_no_timestamp_so_age_does_not_matter(self, body: bytes) -> None:
        verify(make("tito", self.TOKEN), self.headers(b64_mac(self.TOKEN, body)), body,
               now=NOW + 10 * 365 * 86400)

    def test_describe_ticket_completed(self) -> None:
        body = sample("tito/ticket.completed.json")
        d = describe(make("tito", self.TOKEN), self.headers("x", "ticket.completed"), body)
        assert d == Described(
            type="ticket.completed",
            dedup_key="ticket.completed:1i5nfwf2t24:2017-08-27T13:07:47.000Z",
            is_test=False,
        )

    def test_describe_registration_finished(self) -> None:
        body = sample("tito/registration.finished.json")
        d = describe(make("tito", self.TOKEN), self.headers("x", "registration.finished"), body)
        assert d == Described(
            type="registration.finished",
            dedup_key="registration.finished:reg_q7Wm2xLpA9kC:2025-05-12T09:14:05.000Z",
            is_test=False,
        )

    def test_dedup_changes_with_updated_at(self) -> None:
        body = sample("tito/ticket.completed.json")
        changed = json.loads(body)
        changed["updated_at"] = "2017-08-28T09:00:00.000Z"
        changed_body = json.dumps(changed).encode()
        p = make("tito", self.TOKEN)
        assert (describe(p, self.headers("x"), body).dedup_key
                != describe(p, self.headers("x"), changed_body).dedup_key)


# --- Tito (timestamped, newer platform) ----------------------------------------------


class TestTitoTimestamped:
    SECRET = "tito-new-secret"
    OTHER = "tito-new-secret-2"

    @pytest.fixture
    def body(self) -> bytes:
        return sample("tito/timestamped.json")

    def headers(self, body: bytes, secret: str | None = None, ts: int = T) -> dict[str, str]:
        sig = hex_mac(secret or self.SECRET, f"{ts}.".encode() + body)
        return {"X-Tito-Signature": sig, "X-Tito-Timestamp": str(ts),
                "X-Tito-Webhook-Event": "ticket.completed"}

    def test_known_good(self, body: bytes) -> None:
        verify(make("tito", self.SECRET), self.headers(body), body)

    def test_body_alone_is_not_what_is_signed(self, body: bytes) -> None:
        h = self.headers(body)
        h["X-Tito-Signature"] = hex_mac(self.SECRET, body)
        with pytest.raises(SignatureMismatch):
            verify(make("tito", self.SECRET), h, body)

    def test_sign_output_verifies(self, body: bytes) -> None:
        p = make("tito", self.SECRET, scheme="timestamped")
        signed = p.sign(body, secret=self.SECRET, now=NOW)
        assert "X-Tito-Signature" in signed.headers
        verify(p, signed.headers, body)

    def test_wrong_secret(self, body: bytes) -> None:
        with pytest.raises(SignatureMismatch):
            verify(make("tito", self.SECRET), self.headers(body, "wrong"), body)

    def test_one_changed_body_byte(self, body: bytes) -> None:
        with pytest.raises(SignatureMismatch):
            verify(make("tito", self.SECRET), self.headers(body), flip(body))

    def test_changed_timestamp_header(self, body: bytes) -> None:
        h = self.headers(body)
        h["X-Tito-Timestamp"] = str(T + 1)
        with pytest.raises(SignatureMismatch):
            verify(make("tito", self.SECRET), h, body)

    @pytest.mark.parametrize("drop", ["X-Tito-Signature", "X-Tito-Timestamp"])
    def test_missing_header(self, body: bytes, drop: str) -> None:
        h = self.headers(body)
        del h[drop]
        with pytest.raises(SignatureMissing):
            verify(make("tito", self.SECRET), h, body)

    @pytest.mark.parametrize("offset", [-301, 301])
    def test_stale_timestamp(self, body: bytes, offset: int) -> None:
        with pytest.raises(StaleTimestamp):
            verify(make("tito", self.SECRET), self.headers(body, ts=T + offset), body)

    @pytest.mark.parametrize("offset", [-300, 300])
    def test_timestamp_at_the_edge_is_accepted(self, body: bytes, offset: int) -> None:
        verify(make("tito", self.SECRET), self.headers(body, ts=T + offset), body)

    @pytest.mark.parametrize("value", ["9" * 400, "-" + "9" * 400, "1" + "0" * 5000])
    def test_absurd_timestamp_is_stale_not_a_crash(self, body: bytes, value: str) -> None:
        # A float clock minus a huge int used to raise OverflowError (an HTTP 500).
        h = self.headers(body)
        h["X-Tito-Timestamp"] = value
        with pytest.raises(StaleTimestamp):
            verify(make("tito", self.SECRET), h, body, now=NOW + 0.5)

    def test_non_numeric_timestamp(self, body: bytes) -> None:
        h = self.headers(body)
        h["X-Tito-Timestamp"] = "yesterday"
        with pytest.raises(StaleTimestamp):
            verify(make("tito", self.SECRET), h, body)

    def test_second_secret_accepted(self, body: bytes) -> None:
        verify(make("tito", self.SECRET, self.OTHER), self.headers(body, self.OTHER), body)

    def test_describe(self, body: bytes) -> None:
        d = describe(make("tito", self.SECRET), self.headers(body), body)
        assert d == Described(type="ticket.completed",
                              dedup_key="ticket.completed:whe_8Hn2QpVx4LrT")

    def test_describe_type_from_body_when_header_absent(self, body: bytes) -> None:
        h = self.headers(body)
        del h["X-Tito-Webhook-Event"]
        d = describe(make("tito", self.SECRET), h, body)
        assert d.type == "ticket.completed"
        assert d.dedup_key == "ticket.completed:whe_8Hn2QpVx4LrT"


# --- Quicket -------------------------------------------------------------------------


class TestQuicket:
    TOKEN = "qk_7f3b9c1e5a2d4f6b8c0e"
    OTHER = "qk_second_token_1234567"

    @pytest.fixture
    def body(self) -> bytes:
        return sample("quicket/checkout_completed.json")

    def test_known_good_token(self, body: bytes) -> None:
        verify(make("quicket", self.TOKEN), {}, body, token=self.TOKEN)

    def test_sign_output_verifies(self, body: bytes) -> None:
        p = make("quicket", self.TOKEN)
        signed = p.sign(body, secret=self.TOKEN, now=NOW)
        assert signed.token == self.TOKEN
        verify(p, signed.headers, body, token=signed.token)

    def test_wrong_token(self, body: bytes) -> None:
        with pytest.raises(SignatureMismatch):
            verify(make("quicket", self.TOKEN), {}, body, token=self.TOKEN + "x")

    @pytest.mark.parametrize("token", [None, ""])
    def test_missing_token(self, body: bytes, token: str | None) -> None:
        with pytest.raises(SignatureMissing):
            verify(make("quicket", self.TOKEN), {}, body, token=token)

    def test_second_token_accepted(self, body: bytes) -> None:
        verify(make("quicket", self.TOKEN, self.OTHER), {}, body, token=self.OTHER)

    def test_token_in_path(self) -> None:
        assert PLATFORMS["quicket"].token_in_path is True

    def test_describe_real_purchase(self, body: bytes) -> None:
        d = describe(make("quicket", self.TOKEN), {}, body)
        assert d == Described(type="checkout_completed",
                              dedup_key="checkout_completed:QK-20250614-0042", is_test=False)

    def test_describe_send_test(self) -> None:
        body = sample("quicket/send_test.json")
        d = describe(make("quicket", self.TOKEN), {}, body)
        assert d == Described(type="checkout_started",
                              dedup_key="checkout_started:REF00123456", is_test=True)

    def test_sample_has_two_distinct_tickets(self, body: bytes) -> None:
        tickets = payload(body)["tickets"]
        assert [t["id"] for t in tickets] == [1001, 1002]
        assert len({t["barcode"] for t in tickets}) == 2
        assert all(t["attendee_name"] and t["attendee_email"] for t in tickets)


# --- OpenTicket ----------------------------------------------------------------------


class TestOpenTicket:
    NONCE = "5aK2HMgcUlDCWLuC3KWa"  # the nonce from the OpenTicket help page's example
    OTHER = "Zq81LmN0pRsTuVwXyZ12"

    @pytest.fixture
    def body(self) -> bytes:
        return sample("openticket/order.paid.json")

    def headers(self, nonce: str | None = None) -> dict[str, str]:
        return {
            "User-Agent": "OpenTicket/Webhook",
            "OpenTicket-Trigger": "order.paid",
            "OpenTicket-Identifier": nonce or self.NONCE,
            "OpenTicket-Dedupe-Key": "a3f1c9e07b5d",
        }

    def test_known_good_nonce(self, body: bytes) -> None:
        verify(make("openticket", self.NONCE), self.headers(), body)

    def test_sign_output_verifies(self, body: bytes) -> None:
        p = make("openticket", self.NONCE)
        verify(p, p.sign(body, secret=self.NONCE, now=NOW).headers, body)

    def test_wrong_nonce(self, body: bytes) -> None:
        with pytest.raises(SignatureMismatch):
            verify(make("openticket", self.NONCE), self.headers(self.NONCE[:-1]), body)

    def test_missing_header(self, body: bytes) -> None:
        h = self.headers()
        del h["OpenTicket-Identifier"]
        with pytest.raises(SignatureMissing):
            verify(make("openticket", self.NONCE), h, body)

    def test_second_nonce_accepted(self, body: bytes) -> None:
        verify(make("openticket", self.NONCE, self.OTHER), self.headers(self.OTHER), body)

    def test_retry_status_is_4xx(self) -> None:
        # OpenTicket retries only on 4xx: "try again" must be a 4xx for it.
        assert 400 <= PLATFORMS["openticket"].retry_status < 500

    def test_describe_uses_dedupe_key_header(self, body: bytes) -> None:
        d = describe(make("openticket", self.NONCE), self.headers(), body)
        assert d == Described(type="order.paid", dedup_key="a3f1c9e07b5d", is_test=False)

    def test_describe_without_dedupe_key(self, body: bytes) -> None:
        h = self.headers()
        del h["OpenTicket-Dedupe-Key"]
        d = describe(make("openticket", self.NONCE), h, body)
        assert d.type == "order.paid"
        assert d.dedup_key == "order.paid:3f9c2a7e-5b1d-4e8a-9c6f-1d2e3a4b5c6d:2025-06-14T18:03:47Z"


# --- Webconnex -----------------------------------------------------------------------


class TestWebconnex:
    SECRET = "wcx-signing-secret"
    OTHER = "wcx-signing-secret-new"

    @pytest.fixture(params=["webconnex/registration.json", "webconnex/test.json"])
    def body(self, request: pytest.FixtureRequest) -> bytes:
        return sample(request.param)

    def headers(self, sig: str, event: str = "registration",
                delivery: str = "d-1") -> dict[str, str]:
        return {"X-Webconnex-Signature": sig, "X-Webconnex-Event": event,
                "X-Webconnex-Delivery": delivery, "User-Agent": "Webconnex-Divvy"}

    def test_known_good(self, body: bytes) -> None:
        verify(make("webconnex", self.SECRET), self.headers(hex_mac(self.SECRET, body)), body)

    def test_sign_output_verifies(self, body: bytes) -> None:
        p = make("webconnex", self.SECRET)
        signed = p.sign(body, secret=self.SECRET, now=NOW)
        assert signed.headers["X-Webconnex-Signature"] == hex_mac(self.SECRET, body)
        verify(p, signed.headers, body)

    def test_wrong_secret(self, body: bytes) -> None:
        with pytest.raises(SignatureMismatch):
            verify(make("webconnex", self.SECRET), self.headers(hex_mac("x", body)), body)

    def test_one_changed_body_byte(self, body: bytes) -> None:
        with pytest.raises(SignatureMismatch):
            verify(make("webconnex", self.SECRET), self.headers(hex_mac(self.SECRET, body)),
                   flip(body))

    def test_missing_header(self, body: bytes) -> None:
        h = self.headers("x")
        del h["X-Webconnex-Signature"]
        with pytest.raises(SignatureMissing):
            verify(make("webconnex", self.SECRET), h, body)

    def test_second_secret_accepted(self, body: bytes) -> None:
        verify(make("webconnex", self.SECRET, self.OTHER), self.headers(hex_mac(self.OTHER, body)),
               body)

    def test_describe_registration(self) -> None:
        body = sample("webconnex/registration.json")
        d = describe(make("webconnex", self.SECRET), self.headers("x"), body)
        assert d == Described(type="registration", dedup_key="registration:55128734", is_test=False)

    def test_dedup_survives_a_new_delivery_header(self) -> None:
        body = sample("webconnex/registration.json")
        p = make("webconnex", self.SECRET)
        first = describe(p, self.headers("x", delivery="hash-of-first-delivery"), body)
        resend = describe(p, self.headers("x", delivery="hash-of-resend"), body)
        assert first.dedup_key == resend.dedup_key == "registration:55128734"

    def test_describe_type_from_body(self) -> None:
        body = sample("webconnex/registration.json")
        d = describe(make("webconnex", self.SECRET), {"X-Webconnex-Signature": "x"}, body)
        assert d.type == "registration"

    def test_describe_test_event(self) -> None:
        body = sample("webconnex/test.json")
        d = describe(make("webconnex", self.SECRET), self.headers("x", event="test"), body)
        assert d == Described(type="test", dedup_key="test:55128001", is_test=True)

    def test_delivery_header_stands_in_without_event_id(self) -> None:
        data = payload(sample("webconnex/registration.json"))
        del data["eventId"]
        body = json.dumps(data).encode()
        d = describe(make("webconnex", self.SECRET), self.headers("x", delivery="dlv-77"), body)
        assert d.dedup_key == "dlv-77"


# --- Standard Webhooks ---------------------------------------------------------------


class TestStandardWebhooks:
    KEY = b"standard-webhooks-test-key-32by"
    KEY2 = b"a-second-key-for-rotation!!"
    SECRET = "whsec_" + base64.b64encode(KEY).decode()
    SECRET2 = "whsec_" + base64.b64encode(KEY2).decode()
    BODY = b'{"type":"invoice.paid","data":{"id":"inv_123","amount":4200}}'

    def headers(self, key: bytes | None = None, ts: int = T,
                msg_id: str = "msg_2Zx9") -> dict[str, str]:
        sig = b64_mac(key or self.KEY, f"{msg_id}.{ts}.".encode() + self.BODY)
        return {"webhook-id": msg_id, "webhook-timestamp": str(ts),
                "webhook-signature": f"v1,{sig}"}

    def test_known_good(self) -> None:
        verify(make("standard_webhooks", self.SECRET), self.headers(), self.BODY)

    def test_several_signatures_in_one_header(self) -> None:
        h = self.headers()
        good = h["webhook-signature"]
        bad = self.headers(self.KEY2)["webhook-signature"]
        h["webhook-signature"] = f"{bad} {good}"
        verify(make("standard_webhooks", self.SECRET), h, self.BODY)

    def test_other_versions_are_ignored(self) -> None:
        h = self.headers()
        h["webhook-signature"] = h["webhook-signature"].replace("v1,", "v1a,")
        with pytest.raises(SignatureMismatch):
            verify(make("standard_webhooks", self.SECRET), h, self.BODY)

    def test_sign_output_verifies(self) -> None:
        p = make("standard_webhooks", self.SECRET)
        verify(p, p.sign(self.BODY, secret=self.SECRET, now=NOW, msg_id="msg_1").headers, self.BODY)

    def test_wrong_secret(self) -> None:
        with pytest.raises(SignatureMismatch):
            verify(make("standard_webhooks", self.SECRET), self.headers(b"wrong"), self.BODY)

    def test_one_changed_body_byte(self) -> None:
        with pytest.raises(SignatureMismatch):
            verify(make("standard_webhooks", self.SECRET), self.headers(), flip(self.BODY))

    def test_changed_id(self) -> None:
        h = self.headers()
        h["webhook-id"] = "msg_other"
        with pytest.raises(SignatureMismatch):
            verify(make("standard_webhooks", self.SECRET), h, self.BODY)

    @pytest.mark.parametrize("drop", ["webhook-id", "webhook-timestamp", "webhook-signature"])
    def test_missing_header(self, drop: str) -> None:
        h = self.headers()
        del h[drop]
        with pytest.raises(SignatureMissing):
            verify(make("standard_webhooks", self.SECRET), h, self.BODY)

    @pytest.mark.parametrize("offset", [-301, 301])
    def test_stale_timestamp(self, offset: int) -> None:
        with pytest.raises(StaleTimestamp):
            verify(make("standard_webhooks", self.SECRET), self.headers(ts=T + offset), self.BODY)

    @pytest.mark.parametrize("offset", [-300, 300])
    def test_timestamp_at_the_edge_is_accepted(self, offset: int) -> None:
        verify(make("standard_webhooks", self.SECRET), self.headers(ts=T + offset), self.BODY)

    def test_second_secret_accepted(self) -> None:
        verify(make("standard_webhooks", self.SECRET, self.SECRET2), self.headers(self.KEY2),
               self.BODY)

    def test_secret_must_be_base64(self) -> None:
        with pytest.raises(ConfigError):
            make("standard_webhooks", "whsec_not base64!")

    def test_describe(self) -> None:
        d = describe(make("standard_webhooks", self.SECRET), self.headers(), self.BODY)
        assert d == Described(type="invoice.paid", dedup_key="msg_2Zx9", is_test=False)


# --- generic HMAC --------------------------------------------------------------------


class TestHmacGeneric:
    SECRET = "generic-secret"
    OTHER = "generic-secret-2"
    BODY = b'{"event":{"type":"order.created","id":"ord_991"},"total":12.5}'

    # sha1 hex over the body, "sha1=" prefix
    SIMPLE = {"header": "X-Signature", "algorithm": "sha1", "prefix": "sha1="}
    # sha512 base64 over "{timestamp}.{body}", base64 key, type and dedup configured
    KEY = b"\x00\x01binary-key\xff"
    B64_SECRET = base64.b64encode(KEY).decode()
    TIMED = {
        "header": "X-Sig", "algorithm": "sha512", "encoding": "base64",
        "signed": "{timestamp}.{body}", "timestamp_header": "X-Sig-Timestamp",
        "key_encoding": "base64", "dedup_header": "X-Delivery", "type_path": "event.type",
        "test_types": ["ping"],
    }

    def simple_headers(self, secret: str | None = None) -> dict[str, str]:
        return {"X-Signature": "sha1=" + hex_mac(secret or self.SECRET, self.BODY, hashlib.sha1)}

    def timed_headers(self, key: bytes | None = None, ts: int = T) -> dict[str, str]:
        sig = b64_mac(key or self.KEY, f"{ts}.".encode() + self.BODY, hashlib.sha512)
        return {"X-Sig": sig, "X-Sig-Timestamp": str(ts), "X-Delivery": "dlv-1"}

    def test_known_good_simple(self) -> None:
        verify(make("hmac", self.SECRET, **self.SIMPLE), self.simple_headers(), self.BODY)

    def test_prefix_is_optional_unless_required(self) -> None:
        h = self.simple_headers()
        h["X-Signature"] = h["X-Signature"].removeprefix("sha1=")
        verify(make("hmac", self.SECRET, **self.SIMPLE), h, self.BODY)

    def test_known_good_timed(self) -> None:
        verify(make("hmac", self.B64_SECRET, **self.TIMED), self.timed_headers(), self.BODY)

    def test_sign_output_verifies(self) -> None:
        for secret, config in ((self.SECRET, self.SIMPLE), (self.B64_SECRET, self.TIMED)):
            p = make("hmac", secret, **config)
            verify(p, p.sign(self.BODY, secret=secret, now=NOW).headers, self.BODY)

    def test_wrong_secret(self) -> None:
        with pytest.raises(SignatureMismatch):
            verify(make("hmac", self.SECRET, **self.SIMPLE), self.simple_headers("nope"), self.BODY)
        with pytest.raises(SignatureMismatch):
            verify(make("hmac", self.B64_SECRET, **self.TIMED), self.timed_headers(b"nope"),
                   self.BODY)

    def test_wrong_algorithm(self) -> None:
        h = {"X-Signature": hex_mac(self.SECRET, self.BODY, hashlib.sha256)}
        with pytest.raises(SignatureMismatch):
            verify(make("hmac", self.SECRET, **self.SIMPLE), h, self.BODY)

    def test_one_changed_body_byte(self) -> None:
        with pytest.raises(SignatureMismatch):
            verify(make("hmac", self.SECRET, **self.SIMPLE), self.simple_headers(), flip(self.BODY))
        with pytest.raises(SignatureMismatch):
            verify(make("hmac", self.B64_SECRET, **self.TIMED), self.timed_headers(),
                   flip(self.BODY))

    def test_missing_header(self) -> None:
        with pytest.raises(SignatureMissing):
            verify(make("hmac", self.SECRET, **self.SIMPLE), {}, self.BODY)
        h = self.timed_headers()
        del h["X-Sig-Timestamp"]
        with pytest.raises(SignatureMissing):
            verify(make("hmac", self.B64_SECRET, **self.TIMED), h, self.BODY)

    @pytest.mark.parametrize("offset", [-301, 301])
    def test_stale_timestamp(self, offset: int) -> None:
        with pytest.raises(StaleTimestamp):
            verify(make("hmac", self.B64_SECRET, **self.TIMED), self.timed_headers(ts=T + offset),
                   self.BODY)

    def test_second_secret_accepted(self) -> None:
        p = make("hmac", self.SECRET, self.OTHER, **self.SIMPLE)
        verify(p, self.simple_headers(self.OTHER), self.BODY)

    @pytest.mark.parametrize("config", [
        {},  # no header
        {"header": "X-S", "algorithm": "md5"},
        {"header": "X-S", "encoding": "base32"},
        {"header": "X-S", "signed": "{body}.{timestamp}"},
        {"header": "X-S", "signed": "{timestamp}.{body}"},  # no timestamp source
        {"header": "X-S", "signed": "{id}.{timestamp}.{body}", "timestamp_header": "X-T"},  # no id
        {"header": "X-S", "type_path": "event[?"},
    ])
    def test_bad_config(self, config: dict[str, Any]) -> None:
        with pytest.raises(ConfigError):
            make("hmac", self.SECRET, **config)

    def test_secret_not_base64_with_base64_key(self) -> None:
        with pytest.raises(ConfigError):
            make("hmac", "not base64!", **self.TIMED)

    def test_describe(self) -> None:
        d = describe(make("hmac", self.B64_SECRET, **self.TIMED), self.timed_headers(), self.BODY)
        assert d == Described(type="order.created", dedup_key="dlv-1", is_test=False)

    def test_describe_test_type(self) -> None:
        body = b'{"event":{"type":"ping"}}'
        d = describe(make("hmac", self.B64_SECRET, **self.TIMED), {"X-Delivery": "p1"}, body)
        assert d == Described(type="ping", dedup_key="p1", is_test=True)

    def test_describe_default_is_body_hash(self) -> None:
        d = describe(make("hmac", self.SECRET, **self.SIMPLE), {}, self.BODY)
        assert d.type == "webhook"
        assert d.dedup_key == "sha256:" + hashlib.sha256(self.BODY).hexdigest()


# --- static token --------------------------------------------------------------------


class TestToken:
    TOKEN = "tok_4b8e1f0c9a7d"
    OTHER = "tok_second_2468"
    BODY = b'{"kind":"sale","sale":{"id":"S-77"}}'

    def test_known_good_header(self) -> None:
        verify(make("token", self.TOKEN, header="X-Token"), {"X-Token": self.TOKEN}, self.BODY)

    def test_known_good_path(self) -> None:
        verify(make("token", self.TOKEN), {}, self.BODY, token=self.TOKEN)

    def test_sign_output_verifies(self) -> None:
        for config in ({}, {"header": "X-Token"}):
            p = make("token", self.TOKEN, **config)
            signed = p.sign(self.BODY, secret=self.TOKEN, now=NOW)
            verify(p, signed.headers, self.BODY, token=signed.token)

    def test_wrong_token(self) -> None:
        with pytest.raises(SignatureMismatch):
            verify(make("token", self.TOKEN, header="X-Token"), {"X-Token": "tok_wrong"}, self.BODY)
        with pytest.raises(SignatureMismatch):
            verify(make("token", self.TOKEN), {}, self.BODY, token="tok_wrong")

    def test_token_in_header_is_not_read_from_path(self) -> None:
        with pytest.raises(SignatureMissing):
            verify(make("token", self.TOKEN, header="X-Token"), {}, self.BODY, token=self.TOKEN)

    def test_missing(self) -> None:
        with pytest.raises(SignatureMissing):
            verify(make("token", self.TOKEN, header="X-Token"), {}, self.BODY)
        with pytest.raises(SignatureMissing):
            verify(make("token", self.TOKEN), {}, self.BODY)

    def test_second_token_accepted(self) -> None:
        verify(make("token", self.TOKEN, self.OTHER, header="X-Token"), {"X-Token": self.OTHER},
               self.BODY)
        verify(make("token", self.TOKEN, self.OTHER), {}, self.BODY, token=self.OTHER)

    def test_describe(self) -> None:
        p = make("token", self.TOKEN, header="X-Token", type_header="X-Kind", dedup_path="sale.id")
        d = describe(p, {"X-Kind": "sale.created"}, self.BODY)
        assert d == Described(type="sale.created", dedup_key="S-77", is_test=False)

    def test_bad_jmespath(self) -> None:
        with pytest.raises(ConfigError):
            make("token", self.TOKEN, dedup_path="sale[?")


# --- Stripe --------------------------------------------------------------------------


class TestStripe:
    SECRET = "whsec_stripe_test_secret"
    OTHER = "whsec_stripe_rolled_secret"
    BODY = b'{"id":"evt_1PqR","type":"payment_intent.succeeded","data":{"object":{}}}'

    def header(self, secret: str | None = None, ts: int = T) -> dict[str, str]:
        sig = hex_mac(secret or self.SECRET, f"{ts}.".encode() + self.BODY)
        return {"Stripe-Signature": f"t={ts},v1={sig}"}

    def test_known_good(self) -> None:
        verify(make("stripe", self.SECRET), self.header(), self.BODY)

    def test_several_v1_values(self) -> None:
        good = hex_mac(self.SECRET, f"{T}.".encode() + self.BODY)
        bad = hex_mac(self.OTHER, f"{T}.".encode() + self.BODY)
        verify(make("stripe", self.SECRET), {"Stripe-Signature": f"t={T},v1={bad},v1={good},v0=zz"},
               self.BODY)

    def test_sign_output_verifies(self) -> None:
        p = make("stripe", self.SECRET)
        verify(p, p.sign(self.BODY, secret=self.SECRET, now=NOW).headers, self.BODY)

    def test_wrong_secret(self) -> None:
        with pytest.raises(SignatureMismatch):
            verify(make("stripe", self.SECRET), self.header("nope"), self.BODY)

    def test_one_changed_body_byte(self) -> None:
        with pytest.raises(SignatureMismatch):
            verify(make("stripe", self.SECRET), self.header(), flip(self.BODY))

    def test_missing_header(self) -> None:
        with pytest.raises(SignatureMissing):
            verify(make("stripe", self.SECRET), {}, self.BODY)

    def test_header_without_timestamp(self) -> None:
        sig = hex_mac(self.SECRET, self.BODY)
        with pytest.raises(SignatureMismatch):
            verify(make("stripe", self.SECRET), {"Stripe-Signature": f"v1={sig}"}, self.BODY)

    def test_two_different_timestamps(self) -> None:
        h = self.header()
        h["Stripe-Signature"] += f",t={T + 1}"
        with pytest.raises(SignatureMismatch):
            verify(make("stripe", self.SECRET), h, self.BODY)

    @pytest.mark.parametrize("offset", [-301, 301])
    def test_stale_timestamp(self, offset: int) -> None:
        with pytest.raises(StaleTimestamp):
            verify(make("stripe", self.SECRET), self.header(ts=T + offset), self.BODY)

    def test_absurd_timestamp_is_stale_not_a_crash(self) -> None:
        h = {"Stripe-Signature": f"t={'9' * 400},v1={'00' * 32}"}
        with pytest.raises(StaleTimestamp):
            verify(make("stripe", self.SECRET), h, self.BODY, now=NOW + 0.5)

    def test_second_secret_accepted(self) -> None:
        verify(make("stripe", self.SECRET, self.OTHER), self.header(self.OTHER), self.BODY)

    def test_describe(self) -> None:
        d = describe(make("stripe", self.SECRET), self.header(), self.BODY)
        assert d == Described(type="payment_intent.succeeded", dedup_key="evt_1PqR", is_test=False)


# --- GitHub --------------------------------------------------------------------------


class TestGitHub:
    SECRET = "gh-webhook-secret"
    OTHER = "gh-webhook-secret-2"
    BODY = b'{"zen":"Keep it logically awesome.","hook_id":12345678}'

    def headers(self, secret: str | None = None, event: str = "push") -> dict[str, str]:
        return {
            "X-Hub-Signature-256": "sha256=" + hex_mac(secret or self.SECRET, self.BODY),
            "X-GitHub-Event": event,
            "X-GitHub-Delivery": "72d3162e-cc78-11e3-81ab-4c9367dc0958",
        }

    def test_known_good(self) -> None:
        verify(make("github", self.SECRET), self.headers(), self.BODY)

    def test_prefix_is_required(self) -> None:
        h = {"X-Hub-Signature-256": hex_mac(self.SECRET, self.BODY)}
        with pytest.raises(SignatureMismatch):
            verify(make("github", self.SECRET), h, self.BODY)

    def test_sign_output_verifies(self) -> None:
        p = make("github", self.SECRET)
        verify(p, p.sign(self.BODY, secret=self.SECRET, now=NOW).headers, self.BODY)

    def test_wrong_secret(self) -> None:
        with pytest.raises(SignatureMismatch):
            verify(make("github", self.SECRET), self.headers("nope"), self.BODY)

    def test_one_changed_body_byte(self) -> None:
        with pytest.raises(SignatureMismatch):
            verify(make("github", self.SECRET), self.headers(), flip(self.BODY))

    def test_missing_header(self) -> None:
        h = self.headers()
        del h["X-Hub-Signature-256"]
        with pytest.raises(SignatureMissing):
            verify(make("github", self.SECRET), h, self.BODY)

    def test_second_secret_accepted(self) -> None:
        verify(make("github", self.SECRET, self.OTHER), self.headers(self.OTHER), self.BODY)

    def test_describe(self) -> None:
        d = describe(make("github", self.SECRET), self.headers(), self.BODY)
        assert d == Described(type="push", dedup_key="72d3162e-cc78-11e3-81ab-4c9367dc0958")

    def test_describe_ping_is_test(self) -> None:
        d = describe(make("github", self.SECRET), self.headers(event="ping"), self.BODY)
        assert d.type == "ping"
        assert d.is_test is True


# --- Shopify -------------------------------------------------------------------------


class TestShopify:
    SECRET = "shpss_0123456789abcdef"
    OTHER = "shpss_fedcba9876543210"
    BODY = b'{"id":820982911946154508,"email":"jon@example.com","total_price":"12.00"}'

    def headers(self, secret: str | None = None) -> dict[str, str]:
        return {
            "X-Shopify-Hmac-Sha256": b64_mac(secret or self.SECRET, self.BODY),
            "X-Shopify-Topic": "orders/create",
            "X-Shopify-Webhook-Id": "b54557e4-bdd9-4b37-8a5f-bf7d70bcd043",
        }

    def test_known_good(self) -> None:
        verify(make("shopify", self.SECRET), self.headers(), self.BODY)

    def test_hex_is_refused(self) -> None:
        h = self.headers()
        h["X-Shopify-Hmac-Sha256"] = hex_mac(self.SECRET, self.BODY)
        with pytest.raises(SignatureMismatch):
            verify(make("shopify", self.SECRET), h, self.BODY)

    def test_sign_output_verifies(self) -> None:
        p = make("shopify", self.SECRET)
        verify(p, p.sign(self.BODY, secret=self.SECRET, now=NOW).headers, self.BODY)

    def test_wrong_secret(self) -> None:
        with pytest.raises(SignatureMismatch):
            verify(make("shopify", self.SECRET), self.headers("nope"), self.BODY)

    def test_one_changed_body_byte(self) -> None:
        with pytest.raises(SignatureMismatch):
            verify(make("shopify", self.SECRET), self.headers(), flip(self.BODY))

    def test_missing_header(self) -> None:
        h = self.headers()
        del h["X-Shopify-Hmac-Sha256"]
        with pytest.raises(SignatureMissing):
            verify(make("shopify", self.SECRET), h, self.BODY)

    def test_second_secret_accepted(self) -> None:
        verify(make("shopify", self.SECRET, self.OTHER), self.headers(self.OTHER), self.BODY)

    def test_describe(self) -> None:
        d = describe(make("shopify", self.SECRET), self.headers(), self.BODY)
        assert d == Described(type="orders/create",
                              dedup_key="b54557e4-bdd9-4b37-8a5f-bf7d70bcd043", is_test=False)


# --- Ticket Tailor -------------------------------------------------------------------


class TestTicketTailor:
    SECRET = "tt-webhook-secret"
    OTHER = "tt-webhook-secret-2"
    BODY = b'{"id":"wh_evt_5521","event":"ORDER.CREATED","payload":{"id":"or_1"}}'

    def header(self, secret: str | None = None, ts: int = T, sep: str = "") -> dict[str, str]:
        sig = hex_mac(secret or self.SECRET, f"{ts}{sep}".encode() + self.BODY)
        return {"Tickettailor-Webhook-Signature": f"t={ts},v1={sig}"}

    def test_known_good(self) -> None:
        verify(make("ticket_tailor", self.SECRET), self.header(), self.BODY)

    def test_stripe_style_separator_is_refused(self) -> None:
        with pytest.raises(SignatureMismatch):
            verify(make("ticket_tailor", self.SECRET), self.header(sep="."), self.BODY)

    def test_sign_output_verifies(self) -> None:
        p = make("ticket_tailor", self.SECRET)
        verify(p, p.sign(self.BODY, secret=self.SECRET, now=NOW).headers, self.BODY)

    def test_wrong_secret(self) -> None:
        with pytest.raises(SignatureMismatch):
            verify(make("ticket_tailor", self.SECRET), self.header("nope"), self.BODY)

    def test_one_changed_body_byte(self) -> None:
        with pytest.raises(SignatureMismatch):
            verify(make("ticket_tailor", self.SECRET), self.header(), flip(self.BODY))

    def test_missing_header(self) -> None:
        with pytest.raises(SignatureMissing):
            verify(make("ticket_tailor", self.SECRET), {}, self.BODY)

    @pytest.mark.parametrize("offset", [-301, 301])
    def test_stale_timestamp(self, offset: int) -> None:
        with pytest.raises(StaleTimestamp):
            verify(make("ticket_tailor", self.SECRET), self.header(ts=T + offset), self.BODY)

    def test_second_secret_accepted(self) -> None:
        verify(make("ticket_tailor", self.SECRET, self.OTHER), self.header(self.OTHER), self.BODY)

    def test_describe(self) -> None:
        d = describe(make("ticket_tailor", self.SECRET), self.header(), self.BODY)
        assert d == Described(type="ORDER.CREATED", dedup_key="wh_evt_5521", is_test=False)


# --- sources.yaml --------------------------------------------------------------------


SECRETS = {
    "TIKKL_SECRET": "tikkl-resolved-value-111",
    "TITO_TOKEN_A": "tito-resolved-value-222",
    "TITO_TOKEN_B": "tito-resolved-value-333",
    "QUICKET_TOKEN": "quicket-resolved-value-444",
    "GOOD_SECRET": "good-resolved-value-555",
}


def write_sources(folder: Path, text: str) -> Path:
    path = folder / "sources.yaml"
    path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
    return path


class TestLoadSources:
    def test_good_file(self, tmp_path: Path) -> None:
        write_sources(tmp_path, """
            tikkl:
              platform: tikkl
              secret: ${TIKKL_SECRET}
            tito:
              platform: tito
              secrets:
                - ${TITO_TOKEN_A}
                - ${TITO_TOKEN_B}
              description: two Tito events on one endpoint
            quicket-completed:
              platform: quicket
              token: ${QUICKET_TOKEN}
            github.main:
              platform: github
              secret: literal-not-a-reference
            custom:
              platform: hmac
              secret: ${GOOD_SECRET}
              header: X-Sig
              encoding: base64
              dedup_path: id
        """)
        sources = load_sources(tmp_path, SECRETS.get)
        assert sources.all_errors() == []
        assert sorted(sources) == ["custom", "github.main", "quicket-completed", "tikkl", "tito"]
        assert sources["tikkl"].platform_name == "tikkl"
        assert sources["tikkl"].line == 1
        assert sources["tito"].line == 4
        assert sources["quicket-completed"].line == 10
        tikkl = sources.get_source("tikkl").ready()
        assert tikkl.secrets == [SECRETS["TIKKL_SECRET"]]
        assert sources["tito"].ready().secrets == [SECRETS["TITO_TOKEN_A"], SECRETS["TITO_TOKEN_B"]]
        assert sources["quicket-completed"].ready().secrets == [SECRETS["QUICKET_TOKEN"]]
        assert sources["github.main"].ready().secrets == ["literal-not-a-reference"]
        assert sources["custom"].ready().config["encoding"] == "base64"
        # The resolved secret is the one that verifies.
        body = sample("tikkl/ticket.json")
        verify(tikkl, {"X-Tikkl-Signature": hex_mac(SECRETS["TIKKL_SECRET"], body)}, body)
        custom_body = b'{"id":"c-1"}'
        custom = sources["custom"].ready()
        verify(custom, {"X-Sig": b64_mac(SECRETS["GOOD_SECRET"], custom_body)}, custom_body)

    def test_no_file(self, tmp_path: Path) -> None:
        sources = load_sources(tmp_path, SECRETS.get)
        assert len(sources) == 0
        assert len(sources.errors) == 1
        assert "no sources.yaml" in sources.errors[0].message

    def test_unknown_platform(self, tmp_path: Path) -> None:
        path = write_sources(tmp_path, """
            good:
              platform: github
              secret: abc
            shop:
              description: typo in the platform
              platform: tikkel
              secret: abc
        """)
        sources = load_sources(tmp_path, SECRETS.get)
        assert sources["good"].error is None
        source = sources["shop"]
        assert source.platform is None
        error = source.error
        assert error is not None
        assert "unknown platform 'tikkel'" in error.message
        assert "tikkl" in error.message  # the list of platforms to choose from
        assert error.line == 6
        assert error.path == str(path)
        assert error.located().startswith(f"{path}:6: ")
        assert source.line == 4
        assert sources.all_errors() == [error]
        with pytest.raises(SourceNotConfigured):
            source.ready()

    def test_missing_secret_reference(self, tmp_path: Path) -> None:
        write_sources(tmp_path, """
            good:
              platform: github
              secret: ${GOOD_SECRET}
            broken:
              platform: webconnex
              secret: ${NOPE}
        """)
        sources = load_sources(tmp_path, SECRETS.get)
        assert sources["good"].error is None
        error = sources["broken"].error
        assert isinstance(error, SecretMissing)
        assert "NOPE" in error.message
        assert error.line == 6
        for value in SECRETS.values():
            assert value not in error.message
            assert value not in str(error)
        with pytest.raises(SourceNotConfigured) as info:
            sources.get_source("broken").ready()
        assert "NOPE" in info.value.message

    def test_missing_secret_in_a_list_leaks_no_other_secret(self, tmp_path: Path) -> None:
        write_sources(tmp_path, """
            broken:
              platform: tito
              secrets:
                - ${GOOD_SECRET}
                - ${TITO_TOKEN_A}
                - ${NOPE}
        """)
        sources = load_sources(tmp_path, SECRETS.get)
        error = sources["broken"].error
        assert isinstance(error, SecretMissing)
        assert "NOPE" in error.message
        # The `secrets:` key (line 3) or the item itself (line 6).
        assert error.line in (3, 6)
        for value in SECRETS.values():
            assert value not in error.message
            assert value not in error.located()
            assert value not in repr(error)

    def test_unknown_option(self, tmp_path: Path) -> None:
        write_sources(tmp_path, """
            gh:
              platform: github
              secret: abc
              header: X-Other-Signature
        """)
        sources = load_sources(tmp_path, SECRETS.get)
        error = sources["gh"].error
        assert error is not None
        assert "unknown option 'header'" in error.message
        assert "github" in error.message
        assert error.line == 4
        assert sources["gh"].platform is None

    def test_bad_source_name(self, tmp_path: Path) -> None:
        write_sources(tmp_path, """
            fine-name:
              platform: github
              secret: abc
            "bad name!":
              platform: github
              secret: abc
        """)
        sources = load_sources(tmp_path, SECRETS.get)
        assert sources["fine-name"].error is None
        error = sources["bad name!"].error
        assert error is not None
        assert "a source name may use letters" in error.message
        assert error.line == 4
        assert sources["bad name!"].platform is None
        assert sources.all_errors() == [error]

    def test_bad_option_value_is_located(self, tmp_path: Path) -> None:
        write_sources(tmp_path, """
            t:
              platform: tikkl
              secret: abc
              signature: plaintext
        """)
        error = load_sources(tmp_path, SECRETS.get)["t"].error
        assert error is not None
        assert "signature must be hmac or secret" in error.message
        # Somewhere in the entry (today: its first line, not the option's own line 4).
        assert error.line is not None and 1 <= error.line <= 4

    def test_no_secret(self, tmp_path: Path) -> None:
        write_sources(tmp_path, """
            gh:
              platform: github
        """)
        error = load_sources(tmp_path, SECRETS.get)["gh"].error
        assert error is not None
        assert "no secret" in error.message

    def test_get_source_unknown_name(self, tmp_path: Path) -> None:
        write_sources(tmp_path, """
            gh:
              platform: github
              secret: abc
        """)
        sources = load_sources(tmp_path, SECRETS.get)
        with pytest.raises(UnknownSource) as info:
            sources.get_source("nope")
        assert "'nope'" in info.value.message
        assert "gh" in info.value.message
        assert info.value.status == 404
