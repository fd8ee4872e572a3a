"""OpenTicket (Weeztix, Eventix): a fixed nonce in ``OpenTicket-Identifier``.

There is no HMAC: creating the webhook returns a ``nonce`` that every delivery
carries; relay compares it in constant time. ``OpenTicket-Trigger`` is the event
type and ``OpenTicket-Dedupe-Key`` the deduplication key.

OpenTicket counts a delivery as failed **only when the answer is a 4xx**, and then
retries. So when relay cannot store an event it must answer 4xx, not 503, or the
sale would be lost: ``retry_status`` is 429 ("try again later") for this platform.
"""

from __future__ import annotations

from typing import Any

from ..errors import SignatureMismatch
from .base import (
    Described,
    Platform,
    Request,
    Signed,
    body_hash,
    equals_any,
    json_get,
    natural_key,
    require_header,
)

HEADER = "OpenTicket-Identifier"


class OpenTicket(Platform):
    name = "openticket"
    retry_status = 429
    secret_headers = frozenset({HEADER.lower()})

    def verify(self, request: Request, *, now: float, tolerance: float) -> None:
        if not equals_any(require_header(request, HEADER).strip(), self.secrets):
            raise SignatureMismatch(
                f"The {HEADER} header is not the nonce OpenTicket gave this webhook. Copy the "
                "`nonce` from the webhook's details in OpenTicket into relay."
            )

    def describe(self, request: Request, payload: Any) -> Described:
        trigger = str(request.header("OpenTicket-Trigger") or "webhook")
        dedup = request.header("OpenTicket-Dedupe-Key")
        if not dedup:
            guid = json_get(payload, "guid")
            dedup = natural_key(trigger, guid, json_get(payload, "updated_at"), body=request.body)
        return Described(type=trigger, dedup_key=dedup or body_hash(request.body))

    def sign(self, body: bytes, *, secret: str, now: float, msg_id: str = "msg_test") -> Signed:
        return Signed({
            HEADER: secret,
            "OpenTicket-Trigger": "order.paid",
            "OpenTicket-Dedupe-Key": msg_id,
            "User-Agent": "OpenTicket/Webhook",
        })
