"""Standard Webhooks (standardwebhooks.com; Svix and many SaaS senders).

``webhook-signature: v1,<base64> [v1,<base64> ...]`` over ``"{id}.{timestamp}.{body}"``
with the key from the ``whsec_<base64>`` secret; ``webhook-id`` dedups and
``webhook-timestamp`` must be within the tolerance. The event type is the body's
``type``.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

from ..errors import ConfigError
from .base import (
    Described,
    Platform,
    Request,
    Signed,
    body_hash,
    check_timestamp,
    decode_signature,
    json_get,
    key_part,
    mac,
    matches_any,
    mismatch,
    require_header,
)


def decode_key(secret: str) -> bytes:
    """:raises ConfigError: when the secret is not ``whsec_`` + base64."""
    text = secret.removeprefix("whsec_")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ConfigError("a Standard Webhooks secret looks like whsec_ followed by base64") from None


class StandardWebhooks(Platform):
    name = "standard_webhooks"
    secret_headers = frozenset({"webhook-signature"})

    def __init__(self, secrets: Any, config: Any = None):
        super().__init__(secrets, config)
        self.keys = [decode_key(s) for s in self.secrets]

    def verify(self, request: Request, *, now: float, tolerance: float) -> None:
        msg_id = require_header(request, "webhook-id")
        ts = require_header(request, "webhook-timestamp")
        raw = require_header(request, "webhook-signature")
        check_timestamp(ts, now=now, tolerance=tolerance, header="webhook-timestamp")
        given = []
        for part in raw.split():
            version, sep, sig = part.partition(",")
            if sep and version == "v1":
                decoded = decode_signature(sig, "base64", 32)
                if decoded:
                    given.append(decoded)
        message = f"{msg_id}.{ts.strip()}.".encode() + request.body
        expected = [mac(k, message) for k in self.keys]
        if not given or not matches_any(expected, given):
            raise mismatch("the sender", "webhook-signature")

    def describe(self, request: Request, payload: Any) -> Described:
        event_type = key_part(json_get(payload, "type")) or "webhook"
        return Described(
            type=event_type,
            dedup_key=request.header("webhook-id") or body_hash(request.body),
        )

    def sign(self, body: bytes, *, secret: str, now: float, msg_id: str = "msg_test") -> Signed:
        ts = str(int(now))
        sig = base64.b64encode(mac(decode_key(secret), f"{msg_id}.{ts}.".encode() + body)).decode()
        return Signed({"webhook-id": msg_id, "webhook-timestamp": ts, "webhook-signature": f"v1,{sig}"})
