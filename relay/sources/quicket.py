"""Quicket: no signature at all; an unguessable token in the URL is the proof.

The webhook URL is ``/hooks/{source}/{token}``. Quicket's four hooks name
themselves in the body's ``action``. Its "Send test" button posts the help page's
sample purchase (reference ``REF00123456``), which relay marks as a test.
"""

from __future__ import annotations

from typing import Any

from .base import Described, Platform, Request, Signed, json_get, natural_key
from .token import check_token

SAMPLE_REFERENCE = "REF00123456"


class Quicket(Platform):
    name = "quicket"
    token_in_path = True

    def verify(self, request: Request, *, now: float, tolerance: float) -> None:
        check_token(request.token, self.secrets, "Quicket")

    def describe(self, request: Request, payload: Any) -> Described:
        action = str(json_get(payload, "action") or "webhook")
        reference = json_get(payload, "reference")
        return Described(
            type=action,
            dedup_key=natural_key(action, reference, body=request.body),
            is_test=reference == SAMPLE_REFERENCE,
        )

    def sign(self, body: bytes, *, secret: str, now: float, msg_id: str = "msg_test") -> Signed:
        return Signed({}, token=secret)
