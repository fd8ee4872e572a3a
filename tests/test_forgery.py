"""Forged and replayed events: every source kind, every way to tamper with a signed request.

Each test starts from a request that the platform's own ``sign()`` made correctly, applies
one mutation, and runs what ``relay.ingest.receive`` runs before it stores anything: the
header handling of ingest (lower-casing, repeated headers), the platform's ``verify``, the
JSON parse and ``describe``. The answer is the HTTP status that request would get.

A mutation either changes what was signed or how (the body, the signature, the signed
timestamp or id, the key, the scheme): it must be refused, with 401, or with 400 where the
request is well signed but malformed (one case below: Tito's two schemes share a key).
Or it is another spelling of the very same request, which relay deliberately accepts and
the test asserts so:

* header names in any case (HTTP says they are case-insensitive);
* white space around a header value (HTTP strips it);
* hex in upper case (base 16 is case-insensitive, RFC 4648 section 8);
* the URL-safe base64 alphabet where base64 is read; hex or base64 where a platform's
  encoding is undocumented (Tikkl) or configured as ``any``;
* an optional ``sha256=`` prefix missing, or in upper case;
* ``key=value`` lists (Stripe-style ``t=..,v1=..``, Standard Webhooks' ``v1,<sig>`` list)
  with their parts reordered or repeated, or with extra signatures beside the right one:
  those lists carry several signatures so that senders can rotate secrets;
* a large header that the platform does not read.

Anything else that is accepted fails the test. ``COUNTS`` tallies every case tried; the
last test prints the table and writes it to ``artifacts/forgery-report.txt``.

The end-to-end slice sends one sample of each refused mutation kind per platform to a real
relay over HTTP, then checks that nothing was stored or delivered, and that the same relay
does store and deliver the genuine requests (with their header names re-cased) so the
"nothing delivered" means something.
"""

from __future__ import annotations

import base64
import collections
import dataclasses
import json
import random
import socket
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import quote

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.requests import Request as HttpRequest

from conftest import FUZZ_SCALE, ROOT, RelayServer, Sink, wait_until, write_recipe
from relay import ingest
from relay.errors import RelayError
from relay.settings import Settings
from relay.sources import PLATFORMS, Platform, Request

TOL = 300
EXAMPLES = settings(max_examples=25 * FUZZ_SCALE, derandomize=FUZZ_SCALE == 1, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
HUGE = 100_000
ACCEPT, UNAUTHORIZED, MALFORMED = 200, 401, 400

# --- the source kinds ---------------------------------------------------------------


def whsec(key: bytes) -> str:
    return "whsec_" + base64.b64encode(key).decode()


@dataclasses.dataclass(frozen=True)
class Case:
    """One source kind and how its proof is laid out, so that mutations can find it."""

    id: str
    platform: str
    source: str  # its name in the end-to-end relay's sources.yaml
    secret: str
    decoy: str  # a second configured secret: every source here has two
    #: the header carrying the proof; None when it is the URL's last segment
    sig: str | None
    #: plain (prefix + digest), kv ("t=..,v1=.."), sw ("v1,<b64> ..."), token (the secret)
    form: str
    encoding: str = ""  # hex, base64 or any: what verify reads (sign() writes hex for any)
    size: int = 32
    prefix: str = ""
    prefix_required: bool = False
    ts_header: str | None = None
    ts_in_kv: bool = False
    id_header: str | None = None
    kv_sig: str = "v1"
    kv_ts: str = "t"
    #: "{timestamp}{body}": the timestamp and the body meet without a separator
    joined: bool = False
    config: dict[str, Any] = dataclasses.field(default_factory=dict)
    sign_config: dict[str, Any] | None = None  # when sign() needs another setting than verify
    yaml: str = ""  # extra sources.yaml lines for the source

    @property
    def signs_body(self) -> bool:
        return self.form != "token"

    @property
    def timestamped(self) -> bool:
        return bool(self.ts_header or self.ts_in_kv)

    @property
    def digest(self) -> bool:
        return self.form in ("plain", "kv", "sw")

    @property
    def proof_headers(self) -> list[str]:
        return [h for h in (self.sig, self.ts_header, self.id_header) if h]

    def platform_for(self, secrets: Sequence[str], config: dict[str, Any] | None = None) -> Platform:
        return PLATFORMS[self.platform](list(secrets), dict(self.config if config is None else config))

    def verifier(self) -> Platform:
        return self.platform_for([self.decoy, self.secret])

    def signer(self, secret: str) -> Platform:
        return self.platform_for([secret], self.sign_config)

    def __str__(self) -> str:
        return self.id


GENERIC = {
    "header": "X-Sig", "algorithm": "sha512", "encoding": "base64", "prefix": "sha512=",
    "signed": "{id}.{timestamp}.{body}", "timestamp_header": "X-Timestamp", "id_header": "X-Id",
    "type_path": "kind", "dedup_path": "id",
}
GENERIC_KV = {
    "header": "X-Kv-Sig", "kv": True, "kv_signature": "s", "kv_timestamp": "ts",
    "signed": "{timestamp}{body}", "algorithm": "sha1", "encoding": "hex", "key_encoding": "base64",
    "dedup_path": "id",
}
SW_KEY = whsec(b"standard-webhooks-key-0123456789")
KV_KEY = base64.b64encode(b"generic-kv-key").decode()


def yaml_options(config: dict[str, Any]) -> str:
    return "".join(f"  {k}: {json.dumps(v)}\n" for k, v in config.items())


CASES = [
    Case("tikkl", "tikkl", "tikkl", "tikkl-secret-1", "tikkl-decoy", "X-Tikkl-Signature", "plain",
         "any", prefix="sha256="),
    Case("tikkl-secret-mode", "tikkl", "tikkl-plain", "tikkl-plain-secret-2", "tikkl-decoy-2",
         "X-Tikkl-Signature", "token", config={"signature": "secret"},
         yaml="  signature: secret\n"),
    Case("tito-classic", "tito", "tito", "tito-token-1", "another-event-token", "Tito-Signature",
         "plain", "base64"),
    Case("tito-timestamped", "tito", "tito", "tito-token-1", "another-event-token",
         "X-Tito-Signature", "plain", "hex", ts_header="X-Tito-Timestamp",
         sign_config={"scheme": "timestamped"}),
    Case("quicket", "quicket", "quicket", "quicket-url-token-0123456789", "quicket-decoy-token",
         None, "token"),
    Case("openticket", "openticket", "openticket", "5aK2HMgcUlDCWLuC3KWa", "openticket-decoy",
         "OpenTicket-Identifier", "token"),
    Case("webconnex", "webconnex", "webconnex", "webconnex-signing-secret", "webconnex-decoy",
         "X-Webconnex-Signature", "plain", "hex"),
    Case("standard_webhooks", "standard_webhooks", "svix", SW_KEY, whsec(b"decoy-key"),
         "webhook-signature", "sw", "base64", ts_header="webhook-timestamp",
         id_header="webhook-id"),
    Case("hmac", "hmac", "custom", "generic-secret", "generic-decoy", "X-Sig", "plain", "base64",
         size=64, prefix="sha512=", ts_header="X-Timestamp", id_header="X-Id", config=GENERIC,
         yaml=yaml_options(GENERIC)),
    Case("hmac-kv", "hmac", "custom-kv", KV_KEY, base64.b64encode(b"decoy").decode(), "X-Kv-Sig",
         "kv", "hex", size=20, ts_in_kv=True, kv_sig="s", kv_ts="ts", joined=True,
         config=GENERIC_KV, yaml=yaml_options(GENERIC_KV)),
    Case("stripe", "stripe", "stripe", "whsec_stripe-endpoint-secret", "whsec_stripe-decoy",
         "Stripe-Signature", "kv", "hex", ts_in_kv=True),
    Case("github", "github", "github", "github-webhook-secret", "github-decoy",
         "X-Hub-Signature-256", "plain", "hex", prefix="sha256=", prefix_required=True),
    Case("shopify", "shopify", "shopify", "shopify-client-secret", "shopify-decoy",
         "X-Shopify-Hmac-Sha256", "plain", "base64"),
    Case("ticket_tailor", "ticket_tailor", "ticket_tailor", "ticket-tailor-secret",
         "ticket-tailor-decoy", "Tickettailor-Webhook-Signature", "kv", "hex", ts_in_kv=True,
         joined=True),
    Case("token-header", "token", "token-header", "static-token-in-a-header", "static-decoy",
         "X-Token", "token", config={"header": "X-Token"}, yaml="  header: X-Token\n"),
    Case("token-path", "token", "token-path", "static-token-in-the-url", "static-decoy-url",
         None, "token"),
]
BY_ID = {c.id: c for c in CASES}


def other_secrets(case: Case) -> list[str]:
    """Secrets of other sources, in a shape this platform can take as a key."""
    if case.platform == "standard_webhooks":
        return [whsec(b"another-source-key"), whsec(b"x" * 24)]
    if case.config.get("key_encoding") == "base64":
        return [base64.b64encode(b"another-source").decode()]
    return [c.secret for c in CASES if c.secret not in (case.secret, case.decoy)]


# --- a request, as a list of raw headers -----------------------------------------------


@dataclasses.dataclass
class Req:
    headers: list[tuple[str, str]]
    body: bytes
    token: str | None
    now: float  # the verifier's clock when it checks this request

    def get(self, name: str) -> str | None:
        return next((v for k, v in self.headers if k.lower() == name.lower()), None)

    def set(self, name: str, value: str) -> Req:
        headers = list(self.headers)
        for i, (k, _) in enumerate(headers):
            if k.lower() == name.lower():
                headers[i] = (k, value)
                return dataclasses.replace(self, headers=headers)
        return dataclasses.replace(self, headers=[*headers, (name, value)])

    def drop(self, name: str) -> Req:
        return dataclasses.replace(
            self, headers=[(k, v) for k, v in self.headers if k.lower() != name.lower()])


class Pick(Protocol):
    def int(self, lo: int, hi: int) -> int: ...
    def choice(self, seq: Sequence[Any]) -> Any: ...


class DrawPick:
    """Hypothesis chooses (and shrinks)."""

    def __init__(self, data: st.DataObject) -> None:
        self.data = data

    def int(self, lo: int, hi: int) -> int:
        return self.data.draw(st.integers(lo, hi))

    def choice(self, seq: Sequence[Any]) -> Any:
        return self.data.draw(st.sampled_from(list(seq)))


class RandomPick:
    """A seeded random.Random chooses: the end-to-end samples."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)

    def int(self, lo: int, hi: int) -> int:
        return self.rng.randint(lo, hi)

    def choice(self, seq: Sequence[Any]) -> Any:
        return self.rng.choice(list(seq))


def body_for(n: int | str, extra: dict[str, Any] | None = None) -> bytes:
    """A JSON object every platform can describe, unique per ``n`` for deduplication."""
    payload = {
        "id": f"evt_{n}", "eventId": f"{n}", "reference": f"R{n}", "orderId": f"O{n}",
        "objectType": "ticket", "ticketId": f"T{n}", "action": "checkout_completed",
        "type": "order.created", "kind": "order", "event": "order.created",
        **(extra or {}),
    }
    return json.dumps(payload).encode()


def signed(case: Case, body: bytes, *, now: float, n: int | str, secret: str | None = None,
           ) -> Req:
    """The request ``case``'s platform would send, signed at ``now`` (and checked then)."""
    out = case.signer(secret or case.secret).sign(
        body, secret=secret or case.secret, now=now, msg_id=f"msg_{n}")
    headers = [("Content-Type", "application/json"), *out.headers.items()]
    if case.platform == "github":
        headers += [("X-GitHub-Event", "push"), ("X-GitHub-Delivery", f"gh-{n}")]
    if case.platform == "shopify":
        headers += [("X-Shopify-Topic", "orders/create"), ("X-Shopify-Webhook-Id", f"sh-{n}")]
    return Req(headers, body, out.token, now)


def outcome(platform: Platform, req: Req) -> int:
    """The status relay.ingest.receive answers ``req`` with, up to storing it."""
    scope = {"type": "http", "method": "POST", "path": "/hooks/x", "query_string": b"",
             "headers": [(k.encode("latin-1"), v.encode("latin-1")) for k, v in req.headers]}
    http = HttpRequest(scope)
    headers, repeated = ingest.read_headers(http)
    request = Request(headers, req.body, req.token, repeated)
    try:
        platform.verify(request, now=req.now, tolerance=TOL)
        platform.describe(request, ingest.parse_json(req.body))
    except RelayError as e:
        return e.status
    return ACCEPT


# --- taking the proof apart and putting it back ------------------------------------------

HEX = "0123456789abcdef"
B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
TOKEN_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


def proof(case: Case, req: Req) -> str:
    value = req.token if case.sig is None else req.get(case.sig)
    assert value is not None, f"{case}: sign() put no proof where the case expects it"
    return value


def with_proof(case: Case, req: Req, value: str | None) -> Req:
    if case.sig is None:
        return dataclasses.replace(req, token=value)
    return req.set(case.sig, value) if value is not None else req.drop(case.sig)


def split(case: Case, value: str) -> tuple[str, str, str]:
    """(head, encoded digest or token, tail) of a proof value."""
    if case.form == "plain":
        if case.prefix and value.lower().startswith(case.prefix.lower()):
            return value[:len(case.prefix)], value[len(case.prefix):], ""
        return "", value, ""
    if case.form == "kv":
        parts = value.split(",")
        i = next(i for i, p in enumerate(parts) if p.startswith(case.kv_sig + "="))
        head = ",".join(parts[:i]) + ("," if i else "") + case.kv_sig + "="
        tail = "".join("," + p for p in parts[i + 1:])
        return head, parts[i][len(case.kv_sig) + 1:], tail
    if case.form == "sw":
        version, _, sig = value.partition(",")
        return version + ",", sig, ""
    return "", value, ""


def encode(case: Case, digest: bytes) -> str:
    return base64.b64encode(digest).decode() if case.encoding == "base64" else digest.hex()


def decode(case: Case, text: str) -> bytes:
    return base64.b64decode(text) if case.encoding == "base64" else bytes.fromhex(text)


def replace_text(case: Case, req: Req, fn: Callable[[str], str]) -> Req:
    head, text, tail = split(case, proof(case, req))
    return with_proof(case, req, head + fn(text) + tail)


def replace_digest(case: Case, req: Req, fn: Callable[[bytes], str]) -> Req:
    return replace_text(case, req, lambda text: fn(decode(case, text)))


def alphabet(case: Case) -> str:
    if case.form == "token":
        return TOKEN_CHARS
    return B64 if case.encoding == "base64" else HEX


def timestamp(case: Case, req: Req) -> str:
    if case.ts_header:
        value = req.get(case.ts_header)
        assert value is not None
        return value
    kv = dict(p.split("=", 1) for p in proof(case, req).split(","))
    return kv[case.kv_ts]


def with_timestamp(case: Case, req: Req, ts: str) -> Req:
    if case.ts_header:
        return req.set(case.ts_header, ts)
    parts = [f"{case.kv_ts}={ts}" if p.startswith(case.kv_ts + "=") else p
             for p in proof(case, req).split(",")]
    return with_proof(case, req, ",".join(parts))


def recase(name: str, pick: Pick) -> str:
    flips = pick.int(0, 2**min(len(name), 20) - 1)
    return "".join(c.swapcase() if flips >> (i % 20) & 1 else c for i, c in enumerate(name))


# --- the mutations ---------------------------------------------------------------------
# Each takes the case, a correctly signed request, something that picks, and whether the
# request will go over HTTP (where the server's clock runs on: see the future timestamp);
# it returns the mutated request and the status relay must answer.

Mutation = Callable[[Case, Req, Pick, bool], tuple[Req, int]]


@dataclasses.dataclass(frozen=True)
class Kind:
    name: str
    applies: Callable[[Case], bool]
    mutate: Mutation
    #: sent in the end-to-end slice (refusals only; accepted spellings are checked here)
    http: bool = True


KINDS: list[Kind] = []


def kind(name: str, applies: Callable[[Case], bool] = lambda c: True, http: bool = True,
         ) -> Callable[[Mutation], Mutation]:
    def register(fn: Mutation) -> Mutation:
        KINDS.append(Kind(name, applies, fn, http))
        return fn
    return register


@kind("body: one bit flipped", lambda c: c.signs_body)
def _(case: Case, req: Req, pick: Pick, http: bool) -> tuple[Req, int]:
    body = bytearray(req.body)
    body[pick.int(0, len(body) - 1)] ^= 1 << pick.int(0, 7)
    return dataclasses.replace(req, body=bytes(body)), UNAUTHORIZED


@kind("body: truncated", lambda c: c.signs_body)
def _(case: Case, req: Req, pick: Pick, http: bool) -> tuple[Req, int]:
    return dataclasses.replace(req, body=req.body[:pick.int(0, len(req.body) - 1)]), UNAUTHORIZED


@kind("body: bytes added", lambda c: c.signs_body)
def _(case: Case, req: Req, pick: Pick, http: bool) -> tuple[Req, int]:
    extra = pick.choice([b" ", b"\n", b"\x00", b"{}", b"\xef\xbb\xbf"])
    body = extra + req.body if pick.int(0, 1) else req.body + extra
    return dataclasses.replace(req, body=body), UNAUTHORIZED


@kind("signature: one bit flipped", lambda c: c.digest)
def _(case: Case, req: Req, pick: Pick, http: bool) -> tuple[Req, int]:
    index, bit = pick.int(0, case.size - 1), pick.int(0, 7)

    def flip(digest: bytes) -> str:
        changed = bytearray(digest)
        changed[index] ^= 1 << bit
        return encode(case, bytes(changed))
    return replace_digest(case, req, flip), UNAUTHORIZED


@kind("signature/token: one character changed")
def _(case: Case, req: Req, pick: Pick, http: bool) -> tuple[Req, int]:
    head, text, tail = split(case, proof(case, req))
    index = pick.int(0, len(text) - 1)
    # another character of the same alphabet, not the same one in another case (for hex
    # that would be the same signature)
    char = pick.choice([c for c in alphabet(case) if c.lower() != text[index].lower()])
    return with_proof(case, req, head + text[:index] + char + text[index + 1:] + tail), UNAUTHORIZED


@kind("signature/token: truncated")
def _(case: Case, req: Req, pick: Pick, http: bool) -> tuple[Req, int]:
    value = proof(case, req)
    return with_proof(case, req, value[:pick.int(0, len(value) - 1)]), UNAUTHORIZED


@kind("signature/token: characters added")
def _(case: Case, req: Req, pick: Pick, http: bool) -> tuple[Req, int]:
    extra = "".join(pick.choice(alphabet(case)) for _ in range(pick.int(1, 4)))
    return replace_text(case, req, lambda t: t + extra), UNAUTHORIZED


@kind("signature/token: white space inside")
def _(case: Case, req: Req, pick: Pick, http: bool) -> tuple[Req, int]:
    space = pick.choice([" ", "\t", "  "])
    return replace_text(case, req, lambda t: (
        t[:(i := pick.int(1, len(t) - 1))] + space + t[i:])), UNAUTHORIZED


@kind("signature/token: white space around", http=False)
def _(case: Case, req: Req, pick: Pick, http: bool) -> tuple[Req, int]:
    value = pick.choice([" ", "\t"]) + proof(case, req) + pick.choice(["", " ", "\t "])
    # HTTP strips white space around a header value; a URL keeps it (%20), so a token
    # in the URL with a space is another token.
    return with_proof(case, req, value), ACCEPT if case.sig else UNAUTHORIZED


@kind("signature/token: upper-cased")
def _(case: Case, req: Req, pick: Pick, http: bool) -> tuple[Req, int]:
    mutated = replace_text(case, req, str.upper)
    same = proof(case, mutated) == proof(case, req)
    # hex is case-insensitive; base64 and tokens are not
    return mutated, ACCEPT if same or case.encoding in ("hex", "any") else UNAUTHORIZED


@kind("signature: hex re-encoded as base64", lambda c: c.digest and c.encoding != "base64")
def _(case: Case, req: Req, pick: Pick, http: bool) -> tuple[Req, int]:
    mutated = replace_digest(case, req, lambda d: base64.b64encode(d).decode())
    return mutated, ACCEPT if case.encoding == "any" else UNAUTHORIZED


@kind("signature: base64 re-encoded as hex", lambda c: c.digest and c.encoding == "base64")
def _(case: Case, req: Req, pick: Pick, http: bool) -> tuple[Req, int]:
    return replace_digest(case, req, bytes.hex), UNAUTHORIZED


@kind("signature: hex as upper-case hex", lambda c: c.digest and c.encoding != "base64",
      http=False)
def _(case: Case, req: Req, pick: Pick, http: bool) -> tuple[Req, int]:
    return replace_digest(case, req, lambda d: d.hex().upper()), ACCEPT


@kind("signature: URL-safe base64", lambda c: c.digest)
def _(case: Case, req: Req, pick: Pick, http: bool) -> tuple[Req, int]:
    mutated = replace_digest(case, req, lambda d: base64.urlsafe_b64encode(d).decode())
    return mutated, UNAUTHORIZED if case.encoding == "hex" else ACCEPT


@kind("signature: base64 padding removed", lambda c: c.digest and c.encoding != "hex")
def _(case: Case, req: Req, pick: Pick, http: bool) -> tuple[Req, int]:
    urlsafe = pick.int(0, 1)
    return replace_digest(case, req, lambda d: (
        base64.urlsafe_b64encode(d) if urlsafe else base64.b64encode(d)).decode().rstrip("=")
    ), UNAUTHORIZED


@kind("signature: base64 padding added", lambda c: c.digest and c.encoding != "hex")
def _(case: Case, req: Req, pick: Pick, http: bool) -> tuple[Req, int]:
    pad = "=" * pick.int(1, 3)
    return replace_digest(case, req, lambda d: base64.b64encode(d).decode() + pad), UNAUTHORIZED


@kind("signature: mixed base64 alphabets", lambda c: c.digest and c.encoding != "hex",
      http=False)
def _(case: Case, req: Req, pick: Pick, http: bool) -> tuple[Req, int]:
    std = base64.b64encode(decode(case, split(case, proof(case, req))[1]) if case.encoding ==
                           "base64" else bytes.fromhex(split(case, proof(case, req))[1])).decode()
    safe = std.replace("+", "-").replace("/", "_")
    special = [i for i, c in enumerate(std) if c in "+/"]
    if len(special) < 2:  # one alphabet only: this digest has no mixed spelling
        return replace_text(case, req, lambda t: safe), ACCEPT
    # the same bytes, one character from the standard alphabet, the others URL-safe
    i = pick.choice(special)
    return replace_text(case, req, lambda t: safe[:i] + std[i] + safe[i + 1:]), UNAUTHORIZED


@kind("signature: prefix removed", lambda c: bool(c.prefix))
def _(case: Case, req: Req, pick: Pick, http: bool) -> tuple[Req, int]:
    value = proof(case, req)[len(case.prefix):]
    return with_proof(case, req, value), UNAUTHORIZED if case.prefix_required else ACCEPT


@kind("signature: prefix upper-cased", lambda c: bool(c.prefix), http=False)
def _(case: Case, req: Req, pick: Pick, http: bool) -> tuple[Req, int]:
    value = proof(case, req)
    return with_proof(case, req, value[:len(case.prefix)].upper() + value[len(case.prefix):]), ACCEPT


@kind("signature: another algorithm's prefix", lambda c: bool(c.prefix))
def _(case: Case, req: Req, pick: Pick, http: bool) -> tuple[Req, int]:
    other = pick.choice([p for p in ("sha1=", "sha256=", "sha512=", "v1=") if p != case.prefix])
    return with_proof(case, req, other + proof(case, req)[len(case.prefix):]), UNAUTHORIZED


@kind("header: empty")
def _(case: Case, req: Req, pick: Pick, http: bool) -> tuple[Req, int]:
    if case.sig is None:
        return dataclasses.replace(req, token=""), UNAUTHORIZED
    return req.set(pick.choice(case.proof_headers), ""), UNAUTHORIZED


@kind("header: missing")
def _(case: Case, req: Req, pick: Pick, http: bool) -> tuple[Req, int]:
    if case.sig is None:
        return dataclasses.replace(req, token=None), UNAUTHORIZED
    return req.drop(pick.choice(case.proof_headers)), UNAUTHORIZED


@kind("header: 100 KB")
def _(case: Case, req: Req, pick: Pick, http: bool) -> tuple[Req, int]:
    # (not a list separator: "t=..,v1=..,,,,," is the same list with empty entries)
    junk = pick.choice(["A", "0", "f", "=", "+"]) * HUGE
    if case.sig is None:
        value = req.token or ""
        return dataclasses.replace(req, token=value + junk if pick.int(0, 1) else junk), UNAUTHORIZED
    name = pick.choice(case.proof_headers)
    value = req.get(name) or ""
    return req.set(name, value + junk if pick.int(0, 1) else junk), UNAUTHORIZED


@kind("header: 100 KB header beside the proof", http=False)
def _(case: Case, req: Req, pick: Pick, http: bool) -> tuple[Req, int]:
    return dataclasses.replace(req, headers=[*req.headers, ("X-Padding", "p" * HUGE)]), ACCEPT


@kind("header: names re-cased", http=False)
def _(case: Case, req: Req, pick: Pick, http: bool) -> tuple[Req, int]:
    return dataclasses.replace(req, headers=[(recase(k, pick), v) for k, v in req.headers]), ACCEPT


@kind("header: proof header repeated", lambda c: c.sig is not None)
def _(case: Case, req: Req, pick: Pick, http: bool) -> tuple[Req, int]:
    name = pick.choice(case.proof_headers)
    value = req.get(name) or ""
    other = pick.choice([value, value + "0", "0" + value[1:], "x"])
    copy = (recase(name, pick), other)
    headers = [*req.headers, copy] if pick.int(0, 1) else [copy, *req.headers]
    return dataclasses.replace(req, headers=headers), UNAUTHORIZED


@kind("header: another header repeated", http=False)
def _(case: Case, req: Req, pick: Pick, http: bool) -> tuple[Req, int]:
    return dataclasses.replace(req, headers=[*req.headers, ("content-type", "application/json"),
                                             ("X-Extra", "1"), ("x-extra", "2")]), ACCEPT


@kind("key: another source's secret")
def _(case: Case, req: Req, pick: Pick, http: bool) -> tuple[Req, int]:
    secret = pick.choice(other_secrets(case))
    return signed(case, req.body, now=req.now, n=pick.int(0, 9), secret=secret), UNAUTHORIZED


@kind("list: key=value parts reordered", lambda c: c.form == "kv", http=False)
def _(case: Case, req: Req, pick: Pick, http: bool) -> tuple[Req, int]:
    parts = proof(case, req).split(",")
    order = sorted(range(len(parts)), key=lambda i: pick.int(0, 100))
    return with_proof(case, req, ",".join(parts[i] for i in order)), ACCEPT


@kind("list: a key=value part repeated", lambda c: c.form == "kv", http=False)
def _(case: Case, req: Req, pick: Pick, http: bool) -> tuple[Req, int]:
    parts = proof(case, req).split(",")
    parts.insert(pick.int(0, len(parts)), pick.choice(parts))
    return with_proof(case, req, ",".join(parts)), ACCEPT


@kind("list: wrong signatures beside the right one", lambda c: c.form in ("kv", "sw"),
      http=False)
def _(case: Case, req: Req, pick: Pick, http: bool) -> tuple[Req, int]:
    sep, key = (",", case.kv_sig + "=") if case.form == "kv" else (" ", "v1,")
    parts = proof(case, req).split(sep)
    for _ in range(pick.int(1, 3)):
        wrong = encode(case, bytes(pick.int(0, 255) for _ in range(case.size)))
        parts.insert(pick.int(0, len(parts)), key + wrong)
    return with_proof(case, req, sep.join(parts)), ACCEPT


@kind("list: the signature entry repeated", lambda c: c.form == "sw", http=False)
def _(case: Case, req: Req, pick: Pick, http: bool) -> tuple[Req, int]:
    value = proof(case, req)
    return with_proof(case, req, " ".join([value] * pick.int(2, 4))), ACCEPT


@kind("list: only wrong signatures", lambda c: c.form in ("kv", "sw"))
def _(case: Case, req: Req, pick: Pick, http: bool) -> tuple[Req, int]:
    wrong = [encode(case, bytes(pick.int(0, 255) for _ in range(case.size)))
             for _ in range(pick.int(1, 3))]
    if case.form == "sw":
        return with_proof(case, req, " ".join("v1," + w for w in wrong)), UNAUTHORIZED
    ts = timestamp(case, req)
    return with_proof(case, req, ",".join(
        [f"{case.kv_ts}={ts}"] + [f"{case.kv_sig}={w}" for w in wrong])), UNAUTHORIZED


@kind("list: a second, different timestamp", lambda c: c.ts_in_kv)
def _(case: Case, req: Req, pick: Pick, http: bool) -> tuple[Req, int]:
    ts = int(timestamp(case, req))
    other = f"{case.kv_ts}={ts + pick.choice([-1, 1, -TOL, TOL, 10**6])}"
    parts = proof(case, req).split(",")
    parts.insert(pick.int(0, len(parts)), other)
    return with_proof(case, req, ",".join(parts)), UNAUTHORIZED


@kind("list: signature under another key", lambda c: c.form in ("kv", "sw"))
def _(case: Case, req: Req, pick: Pick, http: bool) -> tuple[Req, int]:
    if case.form == "sw":
        version = pick.choice(["v2", "V1", "v1a", "v0", "1"])
        return with_proof(case, req, proof(case, req).replace("v1,", version + ",", 1)), UNAUTHORIZED
    key = pick.choice([k for k in ("v0", "v1", "v2", "V1", "s", "S", "sig") if k != case.kv_sig])
    value = proof(case, req).replace(case.kv_sig + "=", key + "=", 1)
    return with_proof(case, req, value), UNAUTHORIZED


@kind("list: separators changed", lambda c: c.form in ("kv", "sw"))
def _(case: Case, req: Req, pick: Pick, http: bool) -> tuple[Req, int]:
    value = proof(case, req)
    if case.form == "sw":
        return with_proof(case, req, value.replace(",", pick.choice(["=", ";", " ", ",,"]), 1)), \
            UNAUTHORIZED
    old = pick.choice([",", "="])
    new = pick.choice([";", " ", ":"] if old == "," else [":", "==", " "])
    return with_proof(case, req, value.replace(old, new)), UNAUTHORIZED


@kind("timestamp: tolerance + 1 s in the past", lambda c: c.timestamped)
def _(case: Case, req: Req, pick: Pick, http: bool) -> tuple[Req, int]:
    stale = signed(case, req.body, now=req.now - TOL - 1, n=pick.int(0, 9))
    return dataclasses.replace(stale, now=req.now), UNAUTHORIZED


@kind("timestamp: tolerance + 1 s in the future", lambda c: c.timestamped)
def _(case: Case, req: Req, pick: Pick, http: bool) -> tuple[Req, int]:
    # Over HTTP the server's clock reads a little later than the signing clock: keep
    # outside the window even if a few seconds pass (the exact edge is checked here).
    ahead = TOL + 1 + (5 if http else 0)
    early = signed(case, req.body, now=req.now + ahead, n=pick.int(0, 9))
    return dataclasses.replace(early, now=req.now), UNAUTHORIZED


@kind("timestamp: exactly at the tolerance", lambda c: c.timestamped, http=False)
def _(case: Case, req: Req, pick: Pick, http: bool) -> tuple[Req, int]:
    edge = signed(case, req.body, now=req.now + pick.choice([-TOL, TOL]), n=pick.int(0, 9))
    return dataclasses.replace(edge, now=req.now), ACCEPT


@kind("replay: the same request after its window", lambda c: c.timestamped, http=False)
def _(case: Case, req: Req, pick: Pick, http: bool) -> tuple[Req, int]:
    later = pick.choice([TOL + 1, TOL + 2, 3600, 86400, 30 * 86400])
    return dataclasses.replace(req, now=req.now + later), UNAUTHORIZED


@kind("timestamp: changed, not re-signed", lambda c: c.timestamped)
def _(case: Case, req: Req, pick: Pick, http: bool) -> tuple[Req, int]:
    ts = int(timestamp(case, req)) + pick.choice([-1, 1]) * pick.int(1, TOL - 10)
    return with_timestamp(case, req, str(ts)), UNAUTHORIZED


@kind("timestamp: another spelling of it", lambda c: c.timestamped)
def _(case: Case, req: Req, pick: Pick, http: bool) -> tuple[Req, int]:
    ts = timestamp(case, req)
    spelling = pick.choice(["0" + ts, "+" + ts, f"{ts[:4]}_{ts[4:]}", ts + ".0", f"{ts}000"])
    return with_timestamp(case, req, spelling), UNAUTHORIZED


@kind("id: signed id changed", lambda c: bool(c.id_header))
def _(case: Case, req: Req, pick: Pick, http: bool) -> tuple[Req, int]:
    assert case.id_header
    value = req.get(case.id_header) or ""
    return req.set(case.id_header, pick.choice([value + "0", value[:-1], value.upper(), "msg_other"])), \
        UNAUTHORIZED


@kind("signed bytes: timestamp digit moved into the body", lambda c: c.joined)
def _(case: Case, req: Req, pick: Pick, http: bool) -> tuple[Req, int]:
    # "{timestamp}{body}" with no separator: "1750000000" + "{..." is also "175000000" +
    # "0{...". The signature still matches; the shorter timestamp is decades old.
    ts = timestamp(case, req)
    k = pick.int(1, 3)
    moved = with_timestamp(case, req, ts[:-k])
    return dataclasses.replace(moved, body=ts[-k:].encode() + req.body), UNAUTHORIZED


@kind("signed bytes: Tito's timestamped signature replayed as classic",
      lambda c: c.id == "tito-timestamped")
def _(case: Case, req: Req, pick: Pick, http: bool) -> tuple[Req, int]:
    # Both Tito schemes use the event's token as the key, so the timestamped signature of
    # "<ts>.<body>" is also a classic signature of the body "<ts>.<body>": it verifies,
    # but such a body is never JSON (400). With the original body it does not verify (401).
    ts = timestamp(case, req)
    digest = bytes.fromhex(proof(case, req))
    classic = req.drop("X-Tito-Signature").drop("X-Tito-Timestamp").set(
        "Tito-Signature", base64.b64encode(digest).decode())
    if pick.int(0, 1):
        return dataclasses.replace(classic, body=f"{ts}.".encode() + req.body), MALFORMED
    return classic, UNAUTHORIZED


# --- the counts ------------------------------------------------------------------------

#: case id -> "verify tried/401/400/accepted" and "http tried/refused" -> count
COUNTS: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
KIND_NAMES = [k.name for k in KINDS]


def record(case: Case, where: str, expected: int, got: int) -> None:
    counts = COUNTS[case.id]
    counts[f"{where} tried"] += 1
    if got == expected:
        counts[f"{where} {'accepted' if got == ACCEPT else 'refused'}"] += 1
        if got != ACCEPT:
            counts[f"{where} {got}"] += 1


PARAMS = [pytest.param(case, k, id=f"{case.id}-{k.name}") for case in CASES for k in KINDS
          if k.applies(case)]


def test_every_platform_has_a_case() -> None:
    assert {c.platform for c in CASES} == set(PLATFORMS)


def test_genuine_requests_are_accepted() -> None:
    """The baseline every mutation starts from passes, for each case."""
    for case in CASES:
        req = signed(case, body_for("baseline"), now=1_750_000_000.5, n="baseline")
        assert outcome(case.verifier(), req) == ACCEPT, case


@pytest.mark.parametrize(("case", "mutation"), PARAMS)
@EXAMPLES
@given(data=st.data(), now=st.floats(1.5e9, 2.5e9), n=st.integers(0, 10**6),
       extra=st.dictionaries(st.text(max_size=6), st.integers() | st.text(max_size=12), max_size=3))
def test_mutation(case: Case, mutation: Kind, data: st.DataObject, now: float, n: int,
                  extra: dict[str, Any]) -> None:
    req = signed(case, body_for(n, extra), now=now, n=n)
    mutated, expected = mutation.mutate(case, req, DrawPick(data), False)
    got = outcome(case.verifier(), mutated)
    record(case, "verify", expected, got)
    assert got == expected, (
        f"{case} / {mutation.name}: expected {expected}, got {got}\n"
        f"headers: {[(k, v[:120]) for k, v in mutated.headers]}\n"
        f"token: {(mutated.token or '')[:120]!r}\nbody: {mutated.body[:200]!r}")


# --- end to end, over HTTP -------------------------------------------------------------


def write_config(folder: Path, sink: Sink) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    sources = ""
    for source in dict.fromkeys(c.source for c in CASES):
        case = next(c for c in CASES if c.source == source)
        sources += (f"{source}:\n  platform: {case.platform}\n"
                    f"  secrets: [{json.dumps(case.decoy)}, {json.dumps(case.secret)}]\n{case.yaml}")
        write_recipe(folder, f"to-{source}", f"""\
source: {source}
fields:
  source: "'{source}'"
  id: id
to:
  - type: http
    url: {sink.url}/{source}
""")
    (folder / "sources.yaml").write_text(sources)


@pytest.fixture(scope="module")
def sink() -> Iterator[Sink]:
    s = Sink()
    yield s
    s.close()


def start_relay(tmp: Path, sink: Sink, **overrides: Any) -> RelayServer:
    write_config(tmp / "recipes", sink)
    return RelayServer(Settings.from_env(
        environ={}, recipes=tmp / "recipes", db=tmp / "relay.db", data=tmp / "data",
        allow_networks="loopback", retry_base=0.2, delivery_timeout=5.0, **overrides))


@pytest.fixture(scope="module")
def relay(tmp_path_factory: pytest.TempPathFactory, sink: Sink) -> Iterator[RelayServer]:
    server = start_relay(tmp_path_factory.mktemp("forgery"), sink)
    yield server
    server.stop()


def post(relay: RelayServer, case: Case, req: Req) -> httpx.Response:
    path = f"/hooks/{case.source}"
    if case.sig is None and req.token is not None:
        path += "/" + quote(req.token, safe="")
    if len(path) > 60_000:  # beyond what httpx sends: write the request by hand
        return raw_post(relay.port, path, req)
    return relay.client.post(path, content=req.body, headers=req.headers)


def raw_post(port: int, path: str, req: Req) -> httpx.Response:
    head = f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in req.headers)
    head += f"Content-Length: {len(req.body)}\r\n\r\n"
    with socket.create_connection(("127.0.0.1", port), timeout=30) as conn:
        conn.sendall(head.encode("latin-1") + req.body)
        data = b""
        while chunk := conn.recv(65536):
            data += chunk
    status_line, _, rest = data.partition(b"\r\n")
    header_block, _, content = rest.partition(b"\r\n\r\n")
    headers = [(name, value) for name, _, value in
               (line.decode("latin-1").partition(": ") for line in header_block.split(b"\r\n"))]
    return httpx.Response(int(status_line.split()[1]), headers=headers, content=content)


HTTP_PARAMS = [(case, k) for case in CASES for k in KINDS if k.applies(case) and k.http]


def test_http_every_refused_kind_stores_and_delivers_nothing(relay: RelayServer, sink: Sink,
                                                              ) -> None:
    pick = RandomPick(6)
    sent = 0
    for number, (case, mutation) in enumerate(HTTP_PARAMS):
        for sample in range(2):
            req = signed(case, body_for(f"http-{number}-{sample}"), now=time.time(),
                         n=f"http-{number}-{sample}")
            mutated, expected = mutation.mutate(case, req, pick, True)
            if expected == ACCEPT:  # another spelling of the same request: checked above
                continue
            if case.sig is None and len(mutated.token or "") > 60_000:
                # A 100 KB URL never reaches relay: uvicorn's parser answers 400 itself.
                response = post(relay, case, mutated)
                record(case, "http", MALFORMED, response.status_code)
                assert response.status_code == MALFORMED, (case.id, mutation.name, response.text)
                continue
            response = post(relay, case, mutated)
            record(case, "http", expected, response.status_code)
            assert response.status_code == expected, (case.id, mutation.name, response.text)
            assert response.headers["content-type"] == "application/json"
            assert response.json()["error"]
            sent += 1
    assert relay.rows("SELECT count(*) AS n FROM events") == [{"n": 0}]
    assert relay.rows("SELECT count(*) AS n FROM rejections") == [{"n": sent}]
    time.sleep(0.5)  # a delivery that should not exist gets the chance to show up
    assert sink.received == []

    # The same relay stores and delivers the genuine requests, header names re-cased:
    # so "nothing delivered" above is not the result of a relay that delivers nothing.
    for case in CASES:
        n = f"genuine-{case.id}"
        req = signed(case, body_for(n), now=time.time(), n=n)
        req = dataclasses.replace(req, headers=[(k.swapcase(), v) for k, v in req.headers])
        response = post(relay, case, req)
        record(case, "http", ACCEPT, response.status_code)
        assert response.status_code == 200, (case.id, response.text)
        assert response.json()["status"] == "accepted", case.id
        # an exact replay inside the window is a duplicate: stored once, delivered once
        again = post(relay, case, req)
        assert again.json()["status"] == "duplicate", (case.id, again.text)
    wait_until(lambda: len(sink.received) >= len(CASES))
    time.sleep(0.5)
    assert sorted(r.json()["id"] for r in sink.received) == sorted(f"evt_genuine-{c.id}" for c in CASES)
    assert relay.rows("SELECT count(*) AS n FROM events WHERE status = 'accepted'") == [
        {"n": len(CASES)}]


def test_http_replay_after_the_window_is_refused(tmp_path: Path) -> None:
    """A valid event, accepted; the very same request once the window has passed: 401."""
    tolerance = 3
    with_sink = Sink()
    server = start_relay(tmp_path, with_sink, timestamp_tolerance=float(tolerance))
    try:
        sent: list[tuple[Case, Req]] = []
        for case in [c for c in CASES if c.timestamped]:
            for _attempt in range(3):  # a machine stalled for seconds makes it stale at once
                req = signed(case, body_for(f"replay-{case.id}"), now=time.time(),
                             n=f"replay-{case.id}")
                response = post(server, case, req)
                if response.status_code != 401:
                    break
            assert response.status_code == 200, (case.id, response.text)
            sent.append((case, req))
        last = max(int(req.now) for _, req in sent)
        # The server checks whole seconds: wait until every timestamp is tolerance + 1 s old.
        while time.time() < last + tolerance + 1.2:
            time.sleep(0.1)
        for case, req in sent:
            response = post(server, case, req)
            record(case, "http", UNAUTHORIZED, response.status_code)
            assert response.status_code == 401, (case.id, response.text)
            assert "seconds away" in response.json()["error"]
        wait_until(lambda: len(with_sink.received) >= len(sent))
        time.sleep(0.5)
        assert len(with_sink.received) == len(sent)  # each once, the replay never
    finally:
        server.stop()
        with_sink.close()


# --- the report ------------------------------------------------------------------------


def report() -> str:
    columns = ["verify tried", "verify refused", "verify 401", "verify 400", "verify accepted",
               "http tried", "http refused", "http accepted"]
    heads = ["source kind", "mutations", "refused", "401", "400", "same request, accepted",
             "HTTP sent", "HTTP refused", "HTTP genuine accepted"]
    rows = [[case.id, *(str(COUNTS[case.id][c]) for c in columns)] for case in CASES]
    totals = ["total", *(str(sum(COUNTS[c.id][col] for c in CASES)) for col in columns)]
    widths = [max(len(r[i]) for r in [heads, *rows, totals]) for i in range(len(heads))]

    def line(cells: list[str]) -> str:
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in
                         enumerate(zip(cells, widths, strict=True)))
    kinds = len(KIND_NAMES)
    text = [f"Forged and replayed events: {kinds} mutation kinds, {len(PARAMS)} (kind, source) "
            f"pairs, {EXAMPLES.max_examples} hypothesis examples each (derandomized).",
            "'refused' counts mutations answered with the expected 401/400; 'same request, "
            "accepted' counts re-spellings relay accepts on purpose (see tests/test_forgery.py).",
            "", line(heads), line(["-" * w for w in widths]), *map(line, rows),
            line(["-" * w for w in widths]), line(totals)]
    return "\n".join(text) + "\n"


def test_report(capsys: pytest.CaptureFixture[str]) -> None:
    """Runs last: prints the table and writes artifacts/forgery-report.txt."""
    if not COUNTS:
        pytest.skip("no mutation test ran in this session")
    for case_id, counts in COUNTS.items():
        for where in ("verify", "http"):
            done = counts[f"{where} refused"] + counts[f"{where} accepted"]
            assert done == counts[f"{where} tried"], f"{case_id}: a {where} case was not as expected"
    text = report()
    out = ROOT / "artifacts" / "forgery-report.txt"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    with capsys.disabled():
        print("\n" + text)
