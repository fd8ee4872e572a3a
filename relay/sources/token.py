"""Static tokens: a secret compared as it is, from a header or the URL's last segment.

For senders that do not sign at all. ``platform: token`` with ``header: X-Token``
checks a header; without ``header`` the token is expected at the end of the URL
(``/hooks/{source}/{token}``), as for Quicket.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import jmespath

from ..errors import ConfigError, SignatureMismatch, SignatureMissing
from .base import Described, Platform, Request, Signed, body_hash, equals_any, key_part, require_header


def check_token(given: str | None, secrets: Sequence[str], platform: str) -> None:
    """:raises VerificationError: unless ``given`` equals one of ``secrets``."""
    if not given:
        raise SignatureMissing(
            f"This {platform} source expects its token at the end of the URL "
            "(/hooks/<source>/<token>); the request had none. Copy the full webhook URL "
            f"into {platform}."
        )
    if not equals_any(given, secrets):
        raise SignatureMismatch(
            f"The token in the URL is not this source's token. Copy the webhook URL "
            f"again into {platform}."
        )


class StaticToken(Platform):
    name = "token"
    options = frozenset({"header", "type_header", "type_path", "dedup_header", "dedup_path"})

    def __init__(self, secrets: Sequence[str], config: Mapping[str, Any] | None = None):
        super().__init__(secrets, config)
        self.header = self.config.get("header")
        self.token_in_path = not self.header
        if self.header:
            self.secret_headers = frozenset({str(self.header).lower()})
        for attr in ("type_path", "dedup_path"):
            if self.config.get(attr):
                try:
                    jmespath.compile(str(self.config[attr]))
                except jmespath.exceptions.ParseError as e:
                    raise ConfigError(f"{attr} is not a valid JMESPath expression: {e}") from None

    def verify(self, request: Request, *, now: float, tolerance: float) -> None:
        if not self.header:
            check_token(request.token, self.secrets, "the sender")
            return
        if not equals_any(require_header(request, self.header).strip(), self.secrets):
            raise SignatureMismatch(f"The {self.header} header is not this source's token.")

    def _pick(self, request: Request, payload: Any, header: str, path: str) -> str | None:
        if self.config.get(header):
            value = request.header(str(self.config[header]))
            if value:
                return value
        if self.config.get(path):
            return key_part(jmespath.search(str(self.config[path]), payload)) or None
        return None

    def describe(self, request: Request, payload: Any) -> Described:
        return Described(
            type=self._pick(request, payload, "type_header", "type_path") or "webhook",
            dedup_key=self._pick(request, payload, "dedup_header", "dedup_path") or body_hash(request.body),
        )

    def sign(self, body: bytes, *, secret: str, now: float, msg_id: str = "msg_test") -> Signed:
        if self.header:
            return Signed({str(self.header): secret})
        return Signed({}, token=secret)
