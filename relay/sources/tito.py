"""Tito: two schemes, told apart by their headers.

Classic Tito: ``Tito-Signature`` is the base64 HMAC-SHA256 of the raw body, keyed
with the event's security token (one per Tito event, hence several secrets per
source); ``X-Webhook-Name`` names the trigger. No timestamp, no delivery id.

Tito's newer platform: ``X-Tito-Signature`` is the hex HMAC-SHA256 of
``"{X-Tito-Timestamp}.{body}"``, ``X-Tito-Webhook-Event`` names the trigger, and the
body is an envelope ``{id, webhook_event, data{...}}`` whose ``id`` dedups.
"""

from __future__ import annotations

from typing import Any

from .base import Described, Platform, Request, Signed, json_get, natural_key
from .hmac_scheme import HmacScheme

CLASSIC = HmacScheme(header="Tito-Signature", encoding="base64")
TIMESTAMPED = HmacScheme(
    header="X-Tito-Signature", encoding="hex", signed="{timestamp}.{body}",
    timestamp_header="X-Tito-Timestamp",
)


class Tito(Platform):
    name = "tito"
    options = frozenset({"scheme"})
    secret_headers = frozenset({"tito-signature", "x-tito-signature"})

    def _is_new(self, request: Request) -> bool:
        return request.header("X-Tito-Signature") is not None or (
            request.header("Tito-Signature") is None
            and request.header("X-Tito-Timestamp") is not None
        )

    def verify(self, request: Request, *, now: float, tolerance: float) -> None:
        scheme = TIMESTAMPED if self._is_new(request) else CLASSIC
        scheme.verify(request, self.secrets, now=now, tolerance=tolerance, platform="Tito")

    def describe(self, request: Request, payload: Any) -> Described:
        if self._is_new(request):
            event_type = request.header("X-Tito-Webhook-Event") or json_get(payload, "webhook_event")
            event_type = str(event_type or "webhook")
            return Described(
                type=event_type,
                dedup_key=natural_key(event_type, json_get(payload, "id"), body=request.body),
            )
        event_type = str(request.header("X-Webhook-Name") or "webhook")
        ident = json_get(payload, "slug") or json_get(payload, "reference") or json_get(payload, "id")
        return Described(
            type=event_type,
            dedup_key=natural_key(event_type, ident, json_get(payload, "updated_at"), body=request.body),
        )

    def sign(self, body: bytes, *, secret: str, now: float, msg_id: str = "msg_test") -> Signed:
        if self.config.get("scheme") == "timestamped":
            return Signed(TIMESTAMPED.sign(body, secret=secret, now=now, msg_id=msg_id))
        return Signed(CLASSIC.sign(body, secret=secret, now=now, msg_id=msg_id))
