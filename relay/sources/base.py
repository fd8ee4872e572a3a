"""What every platform's verifier shares: the request it sees and the helpers it uses.

Verifiers are pure: they get the request (headers, raw body, the URL's token) and
the clock, and either return or raise a ``VerificationError`` saying what is wrong.
They never re-serialise JSON: signatures are over the raw bytes.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
import hmac
import json
import re
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from ..errors import (
    ConfigError,
    SignatureMismatch,
    SignatureMissing,
    StaleTimestamp,
)


@dataclasses.dataclass(frozen=True)
class Request:
    """A webhook request as a verifier sees it. Header names are lower case."""

    headers: Mapping[str, str]
    body: bytes
    token: str | None = None  # the optional last segment of /hooks/{source}/{token}
    #: lower-case names of headers the request carried more than once
    repeated: frozenset[str] = frozenset()

    def header(self, name: str) -> str | None:
        """The header's value; a header sent twice is refused rather than guessed at.

        :raises SignatureMismatch: when the request carried ``name`` more than once.
        """
        key = name.lower()
        if key in self.repeated:
            # Which copy would the sender's proxy, or the recipe, have used? Refuse
            # instead of picking one: a platform sends each of its headers once.
            raise SignatureMismatch(
                f"The request carries the {name} header more than once, so relay cannot "
                "tell which one the platform sent. Send it once."
            )
        return self.headers.get(key)


@dataclasses.dataclass(frozen=True)
class Described:
    """What relay needs to know about a verified event."""

    type: str
    dedup_key: str
    is_test: bool = False


@dataclasses.dataclass(frozen=True)
class Signed:
    """A request signed the platform's way: used by tests and the UI's test button."""

    headers: dict[str, str]
    token: str | None = None


class Platform:
    """One way of proving a webhook genuine, configured for one source.

    Subclasses set ``name`` and implement ``verify``, ``describe`` and ``sign``.
    ``secrets`` are already resolved (``${NAME}`` replaced); there is at least one.
    """

    name: ClassVar[str]
    #: options this platform accepts in sources.yaml, besides platform/secrets
    options: ClassVar[frozenset[str]] = frozenset()
    #: answer for "could not store, try again": most platforms retry on 5xx
    retry_status: ClassVar[int] = 503
    #: header names whose values are secret and are redacted in the log
    secret_headers: frozenset[str] = frozenset()
    #: True when the secret travels in the URL (/hooks/{source}/{token})
    token_in_path: bool = False

    def __init__(self, secrets: Sequence[str], config: Mapping[str, Any] | None = None):
        if not secrets:
            raise ConfigError("needs at least one secret (`secrets:` or `secret:`)")
        self.secrets = [s for s in secrets]
        self.config = dict(config or {})

    def verify(self, request: Request, *, now: float, tolerance: float) -> None:
        """:raises VerificationError: when the request is not proven genuine."""
        raise NotImplementedError

    def describe(self, request: Request, payload: Any) -> Described:
        """The event's type and deduplication key (the request is already verified)."""
        raise NotImplementedError

    def sign(self, body: bytes, *, secret: str, now: float, msg_id: str = "msg_test") -> Signed:
        """Headers (and URL token) that make ``body`` pass ``verify`` for ``secret``."""
        raise NotImplementedError


# --- helpers --------------------------------------------------------------------

DIGESTS = {"sha1": hashlib.sha1, "sha256": hashlib.sha256, "sha512": hashlib.sha512}


HEX = re.compile(r"(?:[0-9a-fA-F]{2})+")


def mac(key: bytes, message: bytes, algorithm: str = "sha256") -> bytes:
    # hmac.digest with the digest's name: OpenSSL's one-shot HMAC, without the
    # Python object hmac.new makes.
    if algorithm not in DIGESTS:
        raise KeyError(algorithm)
    return hmac.digest(key, message, algorithm)


def decode_signature(text: str, encoding: str, size: int) -> bytes | None:
    """Decode a signature in ``hex``, ``base64`` or ``any`` (either) to raw bytes.

    Only the canonical spelling of the digest is read: hex digits (either case, as
    base 16 is case-insensitive) or base64 in the standard or the URL-safe alphabet
    with its padding. Anything a lenient decoder would skip (inner whitespace, stray
    characters, text after the padding, missing padding, non-zero spare bits) makes
    it not a signature.

    Returns None when the text is not a signature of the expected size in that
    encoding: the caller treats that as a mismatch, never as an error of its own.
    """
    text = text.strip()
    candidates: list[bytes] = []
    if encoding in ("hex", "any") and HEX.fullmatch(text):
        candidates.append(bytes.fromhex(text))
    if encoding in ("base64", "any") and text.isascii():
        for encode, decode in ((base64.b64encode, base64.b64decode),
                               (base64.urlsafe_b64encode, base64.urlsafe_b64decode)):
            try:
                raw = decode(text)
            except (binascii.Error, ValueError):
                continue
            if encode(raw).decode("ascii") == text:  # canonical: nothing skipped or added
                candidates.append(raw)
    for candidate in candidates:
        if len(candidate) == size:
            return candidate
    return None


def matches_any(expected: Sequence[bytes], given: Sequence[bytes]) -> bool:
    """Constant-time: every pair is compared, whatever matched first."""
    found = False
    for e in expected:
        for g in given:
            found |= hmac.compare_digest(e, g)
    return found


def equals_any(given: str, secrets: Sequence[str]) -> bool:
    """Constant-time: does ``given`` equal one of ``secrets`` exactly?"""
    return matches_any([s.encode() for s in secrets], [given.encode()])


def require_header(request: Request, name: str) -> str:
    value = request.header(name)
    if value is None or not value.strip():
        raise SignatureMissing(
            f"The request has no {name} header, so relay cannot tell that it is genuine. "
            "Check that the webhook was sent by the platform and that its secret is set there."
        )
    return value


def check_timestamp(raw: str, *, now: float, tolerance: float, header: str) -> int:
    """Parse a Unix timestamp and refuse it when it is too far from now.

    :raises StaleTimestamp: when the timestamp is not a number or is outside the window.
    """
    text = raw.strip()
    # ASCII digits only: int() would also take "+1", "1_750_000_000" and other scripts'
    # digits, spellings no platform sends.
    if not (text.isascii() and text.isdigit()):
        raise StaleTimestamp(f"The {header} value {raw[:40]!r} is not a Unix timestamp.")
    if len(text) > 12 or int(text) > 10**12:  # not seconds since 1970 (milliseconds, or garbage)
        raise StaleTimestamp(f"The {header} value {raw[:40]!r} is not a Unix timestamp in seconds.")
    ts = int(text)
    # Whole seconds on both sides: timestamps have no fraction, so a float "now"
    # would let a timestamp 301 s off look like 300.4 s off.
    away = abs(int(now) - ts)
    if away > tolerance:
        raise StaleTimestamp(
            f"The signed timestamp is {int(away)} seconds away from this server's clock "
            f"(at most {int(tolerance)} allowed). Either this is a replay of an old request, "
            "or this server's clock is wrong: check it with `date -u`."
        )
    return ts


def mismatch(platform: str, header: str) -> SignatureMismatch:
    return SignatureMismatch(
        f"The {header} signature does not match the body for any of this source's "
        f"secrets. Check that the secret in relay is the one {platform} shows for this "
        "webhook, and that nothing between them (a proxy) changes the body."
    )


def json_get(payload: Any, *path: str) -> Any:
    """payload[path[0]][path[1]]..., or None if any step is missing."""
    node = payload
    for key in path:
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return node


def key_part(value: Any) -> str:
    """A dedup key part from a JSON value: stable text, never 'None' for a real value."""
    if value is None:
        return ""
    if isinstance(value, (dict, list)):
        return json.dumps(value, sort_keys=True, separators=(",", ":"))
    return str(value)


def body_hash(body: bytes) -> str:
    return "sha256:" + hashlib.sha256(body).hexdigest()


def natural_key(kind: Any, *parts: Any, body: bytes) -> str:
    """``kind:part:part``; if no part has a value, the body's hash stands in."""
    texts = [key_part(p) for p in parts]
    if not any(texts):
        return body_hash(body)
    return ":".join([key_part(kind), *texts])
