"""The generic HMAC engine, and the senders that are just a setting of it.

One ``HmacScheme`` describes how a sender signs: which header, what prefix, whether
the header is a ``t=..,v1=..`` list, which bytes are signed (a template over
``{id}``, ``{timestamp}`` and ``{body}``), the digest and its encoding, and how the
secret is turned into a key. Tikkl, Tito (classic), Webconnex, Stripe, GitHub,
Shopify and Ticket Tailor are presets; ``platform: hmac`` lets a user describe any
other sender in sources.yaml.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import jmespath

from ..errors import ConfigError, SignatureMismatch
from .base import (
    DIGESTS,
    Described,
    Platform,
    Request,
    Signed,
    body_hash,
    check_timestamp,
    decode_signature,
    key_part,
    mac,
    matches_any,
    mismatch,
    require_header,
)

TEMPLATES = ("{body}", "{timestamp}.{body}", "{id}.{timestamp}.{body}", "{timestamp}{body}")


@dataclasses.dataclass(frozen=True)
class HmacScheme:
    header: str
    algorithm: str = "sha256"
    encoding: str = "hex"  # hex, base64 or any
    prefix: str = ""  # stripped when present, e.g. "sha256="
    prefix_required: bool = False
    kv: bool = False  # header is "t=123,v1=abc,v1=def"
    kv_signature: str = "v1"
    kv_timestamp: str = "t"
    signed: str = "{body}"
    timestamp_header: str | None = None
    id_header: str | None = None
    key_encoding: str = "raw"  # raw or base64

    def validate(self) -> None:
        if self.algorithm not in DIGESTS:
            raise ConfigError(f"algorithm must be one of {', '.join(DIGESTS)}, not {self.algorithm!r}")
        if self.encoding not in ("hex", "base64", "any"):
            raise ConfigError(f"encoding must be hex, base64 or any, not {self.encoding!r}")
        if self.signed not in TEMPLATES:
            raise ConfigError(f"signed must be one of {', '.join(TEMPLATES)}, not {self.signed!r}")
        if self.key_encoding not in ("raw", "base64"):
            raise ConfigError(f"key_encoding must be raw or base64, not {self.key_encoding!r}")
        if "{timestamp}" in self.signed and not (self.kv or self.timestamp_header):
            raise ConfigError("signed uses {timestamp}: set timestamp_header, or kv: true")
        if "{id}" in self.signed and not self.id_header:
            raise ConfigError("signed uses {id}: set id_header")

    @property
    def size(self) -> int:
        return DIGESTS[self.algorithm]().digest_size

    def key(self, secret: str) -> bytes:
        if self.key_encoding == "base64":
            try:
                return base64.b64decode(secret, validate=True)
            except (binascii.Error, ValueError):
                raise ConfigError("the secret is not valid base64 (key_encoding: base64)") from None
        return secret.encode("utf-8")

    def message(self, body: bytes, timestamp: str | None, msg_id: str | None) -> bytes:
        if self.signed == "{body}":
            return body
        parts = {"{timestamp}": timestamp or "", "{id}": msg_id or ""}
        head = self.signed.removesuffix("{body}")
        for name, value in parts.items():
            head = head.replace(name, value)
        return head.encode("utf-8") + body

    def _parse(self, raw: str) -> tuple[list[str], str | None]:
        """Signatures and (for kv headers) the timestamp found in the header."""
        if self.kv:
            sigs: list[str] = []
            ts: str | None = None
            for part in raw.split(","):
                k, sep, v = part.strip().partition("=")
                if not sep:
                    continue
                if k == self.kv_signature:
                    sigs.append(v)
                elif k == self.kv_timestamp:
                    if ts is not None and ts != v:
                        # Two different timestamps: refuse rather than pick one.
                        raise SignatureMismatch(f"The {self.header} header carries two timestamps.")
                    ts = v
            return sigs, ts
        value = raw.strip()
        if self.prefix:
            if value.lower().startswith(self.prefix.lower()):
                value = value[len(self.prefix):]
            elif self.prefix_required:
                return [], None
        return [value], None

    def verify(
        self, request: Request, secrets: Sequence[str], *, now: float, tolerance: float,
        platform: str,
    ) -> None:
        raw = require_header(request, self.header)
        sigs, ts = self._parse(raw)
        if self.timestamp_header:
            ts = require_header(request, self.timestamp_header)
        if "{timestamp}" in self.signed:
            if ts is None:
                raise SignatureMismatch(f"The {self.header} header has no timestamp ({self.kv_timestamp}=).")
            check_timestamp(ts, now=now, tolerance=tolerance, header=self.timestamp_header or self.header)
        msg_id = require_header(request, self.id_header) if self.id_header else None
        given = [g for g in (decode_signature(s, self.encoding, self.size) for s in sigs) if g]
        message = self.message(request.body, ts, msg_id)
        expected = [mac(self.key(s), message, self.algorithm) for s in secrets]
        if not given or not matches_any(expected, given):
            raise mismatch(platform, self.header)

    def sign(self, body: bytes, *, secret: str, now: float, msg_id: str) -> dict[str, str]:
        ts = str(int(now))
        digest = mac(self.key(secret), self.message(body, ts, msg_id), self.algorithm)
        sig = digest.hex() if self.encoding in ("hex", "any") else base64.b64encode(digest).decode()
        headers: dict[str, str] = {}
        if self.kv:
            headers[self.header] = f"{self.kv_timestamp}={ts},{self.kv_signature}={sig}"
        else:
            headers[self.header] = f"{self.prefix}{sig}"
            if self.timestamp_header:
                headers[self.timestamp_header] = ts
        if self.id_header:
            headers[self.id_header] = msg_id
        return headers


class HmacPlatform(Platform):
    """A sender described by an ``HmacScheme`` plus where its type and id live.

    Presets set ``scheme`` and the ``type_*``/``id_*`` class attributes; the
    ``hmac`` platform reads them all from sources.yaml.
    """

    name = "hmac"
    scheme: HmacScheme
    label = "the sender"
    type_header: str | None = None
    type_path: str | None = None
    dedup_header: str | None = None
    dedup_path: str | None = None
    test_types: frozenset[str] = frozenset()

    options = frozenset({
        "header", "algorithm", "encoding", "prefix", "kv", "kv_signature", "kv_timestamp",
        "signed", "timestamp_header", "id_header", "key_encoding",
        "type_header", "type_path", "dedup_header", "dedup_path", "test_types",
    })

    def __init__(self, secrets: Sequence[str], config: Mapping[str, Any] | None = None):
        super().__init__(secrets, config)
        if type(self) is HmacPlatform:
            self._configure(self.config)
        for secret in self.secrets:
            self.scheme.key(secret)  # a base64 key that does not decode fails now, not per request

    def _configure(self, config: Mapping[str, Any]) -> None:
        if "header" not in config:
            raise ConfigError("the hmac platform needs `header:` (the header that carries the signature)")
        fields = {f.name for f in dataclasses.fields(HmacScheme)}
        scheme_args = {k: v for k, v in config.items() if k in fields}
        try:
            self.scheme = HmacScheme(**scheme_args)
        except TypeError as e:
            raise ConfigError(str(e)) from None
        self.scheme.validate()
        self.secret_headers = frozenset({self.scheme.header.lower()})
        for attr in ("type_header", "type_path", "dedup_header", "dedup_path"):
            value = config.get(attr)
            if value is not None:
                setattr(self, attr, str(value))
        for attr in ("type_path", "dedup_path"):
            expr = getattr(self, attr)
            if expr:
                try:
                    jmespath.compile(expr)
                except jmespath.exceptions.ParseError as e:
                    raise ConfigError(f"{attr}: {expr!r} is not a valid JMESPath expression: {e}") from None
        self.test_types = frozenset(str(t) for t in config.get("test_types", []) or [])
        self.label = "the sender"

    def verify(self, request: Request, *, now: float, tolerance: float) -> None:
        self.scheme.verify(request, self.secrets, now=now, tolerance=tolerance, platform=self.label)

    def describe(self, request: Request, payload: Any) -> Described:
        event_type = None
        if self.type_header:
            event_type = request.header(self.type_header)
        if event_type is None and self.type_path:
            event_type = key_part(jmespath.search(self.type_path, payload)) or None
        dedup = None
        if self.dedup_header:
            dedup = request.header(self.dedup_header)
        if dedup is None and self.dedup_path:
            dedup = key_part(jmespath.search(self.dedup_path, payload)) or None
        if dedup is None and self.scheme.id_header:
            dedup = request.header(self.scheme.id_header)
        event_type = event_type or "webhook"
        return Described(
            type=event_type,
            dedup_key=dedup or body_hash(request.body),
            is_test=event_type in self.test_types,
        )

    def sign(self, body: bytes, *, secret: str, now: float, msg_id: str = "msg_test") -> Signed:
        return Signed(self.scheme.sign(body, secret=secret, now=now, msg_id=msg_id))


class Stripe(HmacPlatform):
    name = "stripe"
    label = "Stripe"
    options = frozenset()
    scheme = HmacScheme(header="Stripe-Signature", kv=True, signed="{timestamp}.{body}")
    secret_headers = frozenset({"stripe-signature"})
    type_path = "type"
    dedup_path = "id"


class GitHub(HmacPlatform):
    name = "github"
    label = "GitHub"
    options = frozenset()
    scheme = HmacScheme(header="X-Hub-Signature-256", prefix="sha256=", prefix_required=True)
    secret_headers = frozenset({"x-hub-signature-256", "x-hub-signature"})
    type_header = "X-GitHub-Event"
    dedup_header = "X-GitHub-Delivery"
    test_types = frozenset({"ping"})


class Shopify(HmacPlatform):
    name = "shopify"
    label = "Shopify"
    options = frozenset()
    scheme = HmacScheme(header="X-Shopify-Hmac-Sha256", encoding="base64")
    secret_headers = frozenset({"x-shopify-hmac-sha256"})
    type_header = "X-Shopify-Topic"
    dedup_header = "X-Shopify-Webhook-Id"


class TicketTailor(HmacPlatform):
    name = "ticket_tailor"
    label = "Ticket Tailor"
    options = frozenset()
    scheme = HmacScheme(header="Tickettailor-Webhook-Signature", kv=True, signed="{timestamp}{body}")
    secret_headers = frozenset({"tickettailor-webhook-signature"})
    type_path = "event"
    dedup_path = "id"
