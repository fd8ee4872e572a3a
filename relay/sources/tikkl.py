"""Tikkl: ``X-Tikkl-Signature`` is an HMAC-SHA256 of the raw body with the secret.

Tikkl does not document the encoding. A public receiver uses lower-case hex with no
prefix, so relay accepts hex (any case) or base64, with or without ``sha256=``. Some
receivers compare the header with the secret itself; if Tikkl turns out to send the
secret, the rejection says so and ``signature: secret`` in sources.yaml accepts it.
"""

from __future__ import annotations

from typing import Any

from ..errors import ConfigError, SignatureMismatch
from .base import Described, Request, Signed, equals_any, natural_key, require_header
from .hmac_scheme import HmacPlatform, HmacScheme

HEADER = "X-Tikkl-Signature"


class Tikkl(HmacPlatform):
    name = "tikkl"
    label = "Tikkl"
    options = frozenset({"signature"})
    scheme = HmacScheme(header=HEADER, encoding="any", prefix="sha256=")
    secret_headers = frozenset({HEADER.lower()})

    def __init__(self, secrets: Any, config: Any = None):
        super().__init__(secrets, config)
        self.mode = str(self.config.get("signature", "hmac"))
        if self.mode not in ("hmac", "secret"):
            raise ConfigError(f"signature must be hmac or secret, not {self.mode!r}")

    def verify(self, request: Request, *, now: float, tolerance: float) -> None:
        if self.mode == "secret":
            if not equals_any(require_header(request, HEADER).strip(), self.secrets):
                raise SignatureMismatch(f"The {HEADER} header is not this source's secret.")
            return
        try:
            super().verify(request, now=now, tolerance=tolerance)
        except SignatureMismatch:
            if equals_any((request.header(HEADER) or "").strip(), self.secrets):
                raise SignatureMismatch(
                    f"The {HEADER} header holds the webhook secret itself, not a signature "
                    "of the body. If Tikkl really sends it this way, add `signature: secret` "
                    "to this source in sources.yaml."
                ) from None
            raise

    def describe(self, request: Request, payload: Any) -> Described:
        kind = payload.get("objectType") if isinstance(payload, dict) else None
        kind = str(kind or "webhook")
        ident = None
        if isinstance(payload, dict):
            ident = payload.get("ticketId") if kind == "ticket" else None
            ident = ident or payload.get("orderId")
        return Described(type=kind, dedup_key=natural_key(kind, ident, body=request.body))

    def sign(self, body: bytes, *, secret: str, now: float, msg_id: str = "msg_test") -> Signed:
        if self.mode == "secret":
            return Signed({HEADER: secret})
        return super().sign(body, secret=secret, now=now, msg_id=msg_id)
