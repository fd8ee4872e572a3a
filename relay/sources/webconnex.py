"""Webconnex (RegFox, TicketSpice, GivingFuel, Redpanda).

``X-Webconnex-Signature`` is the lower-case hex HMAC-SHA256 of the raw body, keyed
with the webhook's Signing Secret; unchanged when a delivery is resent. The event
type is ``X-Webconnex-Event`` (or the body's ``eventType``); "Send a Test" sends
``test`` or ``ping``, which are stored and not forwarded unless a recipe names them.
"""

from __future__ import annotations

from typing import Any

from .base import Described, Request, Signed, body_hash, json_get, key_part
from .hmac_scheme import HmacPlatform, HmacScheme

TEST_TYPES = frozenset({"test", "ping"})


class Webconnex(HmacPlatform):
    name = "webconnex"
    label = "Webconnex"
    options = frozenset()
    scheme = HmacScheme(header="X-Webconnex-Signature", encoding="hex")
    secret_headers = frozenset({"x-webconnex-signature"})

    def describe(self, request: Request, payload: Any) -> Described:
        event_type = request.header("X-Webconnex-Event") or json_get(payload, "eventType")
        event_type = str(event_type or "webhook")
        # eventId is in the body, so it survives a resend; whether the delivery
        # header does is not documented, so it only stands in when eventId is absent.
        event_id = key_part(json_get(payload, "eventId"))
        if event_id:
            dedup = f"{event_type}:{event_id}"
        else:
            dedup = request.header("X-Webconnex-Delivery") or body_hash(request.body)
        return Described(type=event_type, dedup_key=dedup, is_test=event_type in TEST_TYPES)

    def sign(self, body: bytes, *, secret: str, now: float, msg_id: str = "msg_test") -> Signed:
        headers = self.scheme.sign(body, secret=secret, now=now, msg_id=msg_id)
        return Signed(headers)
