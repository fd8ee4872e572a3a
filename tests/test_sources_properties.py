"""Property tests for every platform in relay.sources.PLATFORMS.

* ``sign()`` then ``verify()`` round-trips for arbitrary bodies and secrets;
* any single-byte change of the body is refused (platforms that sign the body);
* any single-character change of the signature's header (or URL token) is refused,
  unless the changed text still decodes to the very same signature bytes (hex case,
  the prefix's case, base64 bits the decoder ignores): those are the same signature;
* arbitrary headers, body and token never make ``verify()`` raise anything but a
  ``VerificationError``.

The "same bytes" oracle below decodes header values with the standard library by
each platform's documented format; it does not call relay's decoders.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import string
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import FUZZ_SCALE
from relay.errors import VerificationError
from relay.sources import PLATFORMS, Platform, Request

FAST = settings(max_examples=40 * FUZZ_SCALE, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FUZZ = settings(max_examples=150 * FUZZ_SCALE, deadline=None, suppress_health_check=[HealthCheck.too_slow])

TOLERANCE = 300.0
NOW = 1_750_000_000.25

# --- secrets ---------------------------------------------------------------------------

# Secrets used as HMAC keys may be any text.
any_secret = st.text(min_size=1, max_size=40)
# Secrets compared with a header value must be something a header can carry: printable
# ASCII with no surrounding whitespace (the verifier strips the header, as HTTP does).
header_secret = st.text(
    alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), min_size=1, max_size=40,
).filter(lambda s: s == s.strip() and s != "")
# A URL token: anything but empty.
path_secret = st.text(min_size=1, max_size=40)
# Standard Webhooks: whsec_ + base64 of the key bytes.
whsec_secret = st.binary(min_size=1, max_size=64).map(
    lambda k: "whsec_" + base64.b64encode(k).decode())
# key_encoding: base64
b64_secret = st.binary(min_size=1, max_size=64).map(lambda k: base64.b64encode(k).decode())


# --- the "decodes to the same signature" oracle ---------------------------------------


def decode(value: str, encodings: str, prefix: str = "", required: bool = False) -> set[bytes]:
    """Every byte string ``value`` can be read as under hex and/or (lenient) base64."""
    v = value.strip()
    if prefix:
        if v.lower().startswith(prefix.lower()):
            v = v[len(prefix):]
        elif required:
            return set()
    out: set[bytes] = set()
    if "hex" in encodings:
        try:
            out.add(bytes.fromhex(v))
        except ValueError:
            pass
    if "b64" in encodings:
        for decoder in (base64.b64decode, base64.urlsafe_b64decode):
            try:
                out.add(decoder(v))
            except (binascii.Error, ValueError):
                pass
    return out


def plain(encodings: str, prefix: str = "", required: bool = False) -> Callable[[str, str], bool]:
    def same(original: str, mutated: str) -> bool:
        return bool(decode(original, encodings, prefix, required)
                    & decode(mutated, encodings, prefix, required))
    return same


def kv(encodings: str, sig_key: str = "v1", ts_key: str = "t") -> Callable[[str, str], bool]:
    """``t=..,v1=..``: the same timestamp text and one of the same signatures."""
    def parse(value: str) -> tuple[set[str], set[bytes]]:
        stamps: set[str] = set()
        sigs: set[bytes] = set()
        for part in value.split(","):
            k, sep, v = part.strip().partition("=")
            if not sep:
                continue
            if k == ts_key:
                stamps.add(v)
            elif k == sig_key:
                sigs |= decode(v, encodings)
        return stamps, sigs

    def same(original: str, mutated: str) -> bool:
        ts_o, sigs_o = parse(original)
        ts_m, sigs_m = parse(mutated)
        return ts_m == ts_o and bool(sigs_o & sigs_m)
    return same


def standard_webhooks_same(original: str, mutated: str) -> bool:
    def parse(value: str) -> set[bytes]:
        sigs: set[bytes] = set()
        for part in value.split():
            version, sep, sig = part.partition(",")
            if sep and version == "v1":
                sigs |= decode(sig, "b64")
        return sigs
    return bool(parse(original) & parse(mutated))


def exact(original: str, mutated: str) -> bool:
    return original.strip() == mutated.strip()


# --- the cases -------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Case:
    id: str
    platform: str
    secrets: st.SearchStrategy[str]
    #: header carrying the signature, or None when the URL token is the proof
    sig_header: str | None
    same: Callable[[str, str], bool]
    signs_body: bool = True
    config: dict[str, Any] = dataclasses.field(default_factory=dict)

    def build(self, secrets: list[str]) -> Platform:
        return PLATFORMS[self.platform](secrets, dict(self.config))

    def __str__(self) -> str:
        return self.id


GENERIC = {
    "header": "X-Sig", "algorithm": "sha512", "encoding": "base64", "prefix": "sha512=",
    "signed": "{id}.{timestamp}.{body}", "timestamp_header": "X-Timestamp", "id_header": "X-Id",
}
GENERIC_KV = {
    "header": "X-Sig", "kv": True, "kv_signature": "s", "kv_timestamp": "ts",
    "signed": "{timestamp}{body}", "algorithm": "sha1", "encoding": "any", "key_encoding": "base64",
}

CASES = [
    Case("tikkl", "tikkl", any_secret, "X-Tikkl-Signature", plain("hex b64", "sha256=")),
    Case("tikkl-secret-mode", "tikkl", header_secret, "X-Tikkl-Signature", exact,
         signs_body=False, config={"signature": "secret"}),
    Case("tito-classic", "tito", any_secret, "Tito-Signature", plain("b64")),
    Case("tito-timestamped", "tito", any_secret, "X-Tito-Signature", plain("hex"),
         config={"scheme": "timestamped"}),
    Case("quicket", "quicket", path_secret, None, exact, signs_body=False),
    Case("openticket", "openticket", header_secret, "OpenTicket-Identifier", exact,
         signs_body=False),
    Case("webconnex", "webconnex", any_secret, "X-Webconnex-Signature", plain("hex")),
    Case("standard_webhooks", "standard_webhooks", whsec_secret, "webhook-signature",
         standard_webhooks_same),
    Case("hmac", "hmac", any_secret, "X-Sig", plain("b64", "sha512="), config=GENERIC),
    Case("hmac-kv", "hmac", b64_secret, "X-Sig", kv("hex b64", "s", "ts"), config=GENERIC_KV),
    Case("token-header", "token", header_secret, "X-Token", exact, signs_body=False,
         config={"header": "X-Token"}),
    Case("token-path", "token", path_secret, None, exact, signs_body=False),
    Case("stripe", "stripe", any_secret, "Stripe-Signature", kv("hex")),
    Case("github", "github", any_secret, "X-Hub-Signature-256", plain("hex", "sha256=", True)),
    Case("shopify", "shopify", any_secret, "X-Shopify-Hmac-Sha256", plain("b64")),
    Case("ticket_tailor", "ticket_tailor", any_secret, "Tickettailor-Webhook-Signature", kv("hex")),
]
BODY_CASES = [c for c in CASES if c.signs_body]

params = pytest.mark.parametrize("case", CASES, ids=str)
body_params = pytest.mark.parametrize("case", BODY_CASES, ids=str)


def test_every_platform_has_a_case() -> None:
    assert {c.platform for c in CASES} == set(PLATFORMS)


def test_cases_not_signing_the_body_are_the_token_schemes() -> None:
    unsigned = {c.platform for c in CASES if not c.signs_body}
    assert unsigned == {"tikkl", "quicket", "openticket", "token"}


def request(headers: dict[str, str], body: bytes, token: str | None) -> Request:
    return Request({k.lower(): v for k, v in headers.items()}, body, token)


nows = st.floats(min_value=1e9, max_value=4e9, allow_nan=False, allow_infinity=False)
msg_ids = st.from_regex(r"msg_[A-Za-z0-9]{1,24}", fullmatch=True)


@st.composite
def signed_request(
    draw: st.DrawFn, case: Case, body: st.SearchStrategy[bytes],
) -> tuple[Platform, Request, float, list[str], int]:
    """A platform with 1-3 secrets, and a request sign() made with one of them."""
    secrets = draw(st.lists(case.secrets, min_size=1, max_size=3, unique=True))
    which = draw(st.integers(0, len(secrets) - 1))
    now = draw(nows)
    data = draw(body)
    platform = case.build(secrets)
    signed = platform.sign(data, secret=secrets[which], now=now, msg_id=draw(msg_ids))
    return platform, request(signed.headers, data, signed.token), now, secrets, which


# --- sign then verify ------------------------------------------------------------------


@params
@FAST
@given(data=st.data())
def test_sign_then_verify_round_trips(case: Case, data: st.DataObject) -> None:
    platform, req, now, _, _ = data.draw(signed_request(case, st.binary(max_size=512)))
    platform.verify(req, now=now, tolerance=TOLERANCE)


# --- one changed body byte -------------------------------------------------------------


@body_params
@FAST
@given(data=st.data())
def test_any_changed_body_byte_is_refused(case: Case, data: st.DataObject) -> None:
    platform, req, now, _, _ = data.draw(signed_request(case, st.binary(min_size=1, max_size=512)))
    index = data.draw(st.integers(0, len(req.body) - 1))
    delta = data.draw(st.integers(1, 255))
    body = bytearray(req.body)
    body[index] ^= delta
    changed = dataclasses.replace(req, body=bytes(body))
    with pytest.raises(VerificationError):
        platform.verify(changed, now=now, tolerance=TOLERANCE)


# --- one changed signature character ---------------------------------------------------

replacement_chars = st.one_of(
    st.sampled_from(string.hexdigits + "+/=-_ ,.vst1"),
    st.characters(codec="utf-8"),
)


@params
@FAST
@given(data=st.data())
def test_any_changed_signature_character_is_refused(case: Case, data: st.DataObject) -> None:
    platform, req, now, secrets, _ = data.draw(signed_request(case, st.binary(max_size=256)))
    if case.sig_header is None:
        original = req.token
    else:
        original = req.header(case.sig_header)
    assert original, "sign() put no signature where the case expects it"
    index = data.draw(st.integers(0, len(original) - 1))
    char = data.draw(replacement_chars.filter(lambda c: c != original[index]))
    mutated = original[:index] + char + original[index + 1:]
    if case.sig_header is None:
        changed = dataclasses.replace(req, token=mutated)
    else:
        headers = dict(req.headers)
        headers[case.sig_header.lower()] = mutated
        changed = dataclasses.replace(req, headers=headers)
    try:
        platform.verify(changed, now=now, tolerance=TOLERANCE)
    except VerificationError:
        return
    # Accepted: only legitimate when the changed text is the same signature, or, for
    # the token schemes, when the change happens to spell another configured secret.
    legitimate = case.same(original, mutated) or (
        case.same is exact and any(exact(secret, mutated) for secret in secrets)
    )
    assert legitimate, f"accepted a changed signature: {original!r} -> {mutated!r}"


# --- arbitrary requests ----------------------------------------------------------------

HEADER_NAMES = sorted({
    "x-tikkl-signature", "tito-signature", "x-tito-signature", "x-tito-timestamp",
    "x-tito-webhook-event", "x-webhook-name", "openticket-identifier", "openticket-trigger",
    "openticket-dedupe-key", "x-webconnex-signature", "x-webconnex-event", "x-webconnex-delivery",
    "webhook-id", "webhook-timestamp", "webhook-signature", "x-sig", "x-timestamp", "x-id",
    "x-token", "stripe-signature", "x-hub-signature-256", "x-github-event", "x-github-delivery",
    "x-shopify-hmac-sha256", "x-shopify-topic", "x-shopify-webhook-id",
    "tickettailor-webhook-signature",
})
SPECIAL_VALUES = [
    "", " ", "1750000000", "-1750000000", "1_750_000_000",
    "\u0661\u0667\u0665\u0660\u0660\u0660\u0660\u0660\u0660\u0660",  # Arabic-Indic digits
    "1" + "0" * 400, "9" * 5000, "nan", "inf", "1e10",
    "t=1750000000,v1=" + "00" * 32, "t=1,t=2,v1=00", "t=" + "9" * 400 + ",v1=00",
    "ts=1750000000,s=00",
    "v1," + base64.b64encode(bytes(32)).decode(), "v1,!!!! v1,", "sha256=" + "ab" * 32,
    "sha512=" + base64.b64encode(bytes(64)).decode(), "sha256=", "=", ",", "\x00", "\u00e9\u00e8",
]
timestamps = st.one_of(
    st.just(int(NOW)), st.integers(), st.integers(-(10**500), 10**500),
).map(str)
header_values = st.one_of(
    st.text(max_size=80),
    st.sampled_from(SPECIAL_VALUES),
    timestamps,
    st.builds(lambda t, s: f"t={t},v1={s}", timestamps, st.text(string.hexdigits, max_size=70)),
    st.builds(lambda t, s: f"ts={t},s={s}", timestamps, st.text(string.hexdigits, max_size=70)),
    st.builds(lambda s: "v1," + s,
              st.text(string.ascii_letters + string.digits + "+/=", max_size=50)),
)
FIXED_SECRETS = {
    "standard_webhooks": ["whsec_" + base64.b64encode(b"fixed-key").decode()],
    "hmac-kv": [base64.b64encode(b"fixed-key").decode()],
}


def fixed_platform(case: Case) -> Platform:
    return case.build(FIXED_SECRETS.get(case.id, ["fixed-secret"]))


def header_dicts(case: Case) -> st.SearchStrategy[dict[str, str]]:
    """Mostly the headers this case's platform signs with, plus any others."""
    platform = fixed_platform(case)
    signed = platform.sign(b"", secret=platform.secrets[0], now=NOW)
    own = sorted(k.lower() for k in signed.headers)
    names = st.one_of(st.sampled_from(HEADER_NAMES), st.text(max_size=12).map(str.lower))
    if own:
        names = st.one_of(st.sampled_from(own), st.sampled_from(own), names)
    return st.dictionaries(names, header_values, max_size=6)


@params
@FUZZ
@given(data=st.data(), body=st.binary(max_size=256), token=st.none() | st.text(max_size=40),
       now=nows)
def test_arbitrary_requests_raise_only_verification_errors(
    case: Case, data: st.DataObject, body: bytes, token: str | None, now: float,
) -> None:
    headers = data.draw(header_dicts(case))
    platform = fixed_platform(case)
    try:
        platform.verify(Request(headers, body, token), now=now, tolerance=TOLERANCE)
    except VerificationError:
        pass
