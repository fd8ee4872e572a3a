"""``type: google_sheets``: append a row per delivery to a tab of a Google spreadsheet.

relay signs in as a Google Cloud *service account*; share the spreadsheet with
that account's email (as Editor). Options:

```yaml
to:
  - type: google_sheets
    key: ${GOOGLE_SERVICE_ACCOUNT}   # required: the whole JSON key file of the service account
    spreadsheet: https://docs.google.com/spreadsheets/d/1AbC.../edit   # required: URL or id
    sheet: Tickets                   # the tab's name; default Sheet1
    rate_limit: {requests: 60, per: 60}   # optional; Google's default quota, see below
```

Row 1 of the tab is the header row: each field goes under the column whose header
is the field's name, columns the recipe does not fill stay empty, and a field with
no column fails (dead, naming the field and listing the columns) rather than
shifting cells. An empty tab first gets the field names as its header row. The
header row is read at most once a minute per recipe, and again before a field is
declared missing, so a column added by hand is found.

Values are written as if typed (``USER_ENTERED``): "2025-06-01" becomes a date and
"12.50" a number. Text that would start a formula (``=``, and ``+``/``-`` before
anything but a number) is written as text, so a buyer cannot put a formula into
the sheet.

Under load, up to 100 waiting rows go in one append request, in order of arrival.
**Appending is not idempotent**: when Google times out after it wrote the rows,
the retry writes them again (duplicate rows). Keep a unique column such as the
ticket reference to spot them.

Google's quota is 60 requests a minute per service account (header reads count
too): all recipes using one key share a pacer of that size. A 429 carries no
Retry-After: relay waits a minute, when the quota refills, then retries. The access
token (one-hour, signed with the key, RS256) is shared by every recipe using the key,
renewed 4 minutes before it expires, and once more if Google answers 401.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import hashlib
import json
import re
import time
from collections.abc import Mapping
from typing import Any, ClassVar
from urllib.parse import quote, urlencode

import httpx
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from ..errors import DeliveryFailed
from .base import (
    USER_AGENT,
    BatchDestination,
    DeliveryContext,
    DestinationContext,
    OptionError,
    Outcome,
    Sent,
    flat_value,
    rate_limit_option,
    send_http,
)

GOOGLE_TOKEN_AUDIENCE = "https://oauth2.googleapis.com/token"  # the JWT's aud, wherever it is posted
SCOPE = "https://www.googleapis.com/auth/spreadsheets"
JWT_GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"
TOKEN_LIFETIME = 3600  # the longest Google accepts for exp - iat
RENEW_EARLY = 240.0  # renew an access token this long before it expires
DEFAULT_RATE = (60, 60.0)  # requests per service account per minute
RATE_LIMIT_WAIT = 60.0  # Google sends no Retry-After; its per-minute quota refills within a minute
HEADER_TTL = 60.0
KEY_FIELDS = ("client_email", "private_key", "private_key_id", "token_uri")

SHEET_URL = re.compile(r"^https?://docs\.google\.com/spreadsheets/(?:u/\d+/)?d/([^/?#]+)")
SHEET_ID = re.compile(r"^[A-Za-z0-9_-]+$")
NUMBER = re.compile(r"^[+-]?(?:\d+(?:[.,]\d*)?|[.,]\d+)(?:[eE][+-]?\d+)?$")
UPDATED_ROW = re.compile(r"![A-Z]*(\d+)(?::[A-Z]*\d+)?$")

KEY_HELP = ("In Google Cloud: IAM & Admin > Service accounts > the account > Keys > Add key > "
            "Create new key > JSON, then store the whole file with "
            "`relay secret set NAME < key.json`.")


def cell(value: Any) -> Any:
    """One value as a Sheets cell: numbers and booleans as they are, the rest as text."""
    if value is None:
        return ""
    if isinstance(value, (bool, int, float)):
        return value
    text = flat_value(value)
    # USER_ENTERED parses text as typed: a leading ' keeps formula-like text as text.
    if text[:1] == "=" or (text[:1] in ("+", "-") and not NUMBER.match(text)):
        return "'" + text
    return text


def a1_sheet(name: str) -> str:
    """A tab name quoted for A1 notation: ``'Tickets 2025'``, ``'Bob''s'``."""
    return "'" + name.replace("'", "''") + "'"


def google_message(failure: DeliveryFailed) -> str:
    """Google's own words from ``{"error": {"message": ...}}`` (or the body's start)."""
    body = failure.response_body or ""
    try:
        error = json.loads(body).get("error")
    except (ValueError, AttributeError):
        error = None
    if isinstance(error, Mapping) and error.get("message"):
        return str(error["message"])
    if isinstance(error, str):  # the token endpoint: {"error": "invalid_grant", ...}
        return str(json.loads(body).get("error_description") or error)
    return body.strip()[:300]


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def parse_key(value: Any) -> dict[str, Any]:
    """The service-account key file as a dict. :raises OptionError: in plain words."""
    if isinstance(value, Mapping):
        info: Any = dict(value)
    else:
        try:
            info = json.loads(str(value))
        except ValueError:
            # Never quote the value: it is a secret.
            raise OptionError("key must be the whole JSON key file of a Google service account "
                              f"(this is not JSON). {KEY_HELP}", "key") from None
    if not isinstance(info, dict):
        raise OptionError(f"key must be the whole JSON key file of a Google service account. {KEY_HELP}",
                          "key")
    kind = info.get("type", "service_account")
    if kind != "service_account":
        raise OptionError(f"key is a {kind!s:.40} key file, not a service account's. {KEY_HELP}", "key")
    missing = [f for f in KEY_FIELDS if not isinstance(info.get(f), str) or not info[f]]
    if missing:
        raise OptionError(f"key is not a service-account key file: it has no {', '.join(missing)}. "
                          f"{KEY_HELP}", "key")
    return info


def load_private_key(pem: str) -> rsa.RSAPrivateKey:
    """:raises OptionError: when the key file's private_key is not an RSA key."""
    try:
        # A key pasted through some tools arrives with literal \\n instead of new lines.
        key = serialization.load_pem_private_key(pem.replace("\\n", "\n").encode(), password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        key = None
    if not isinstance(key, rsa.RSAPrivateKey):
        raise OptionError(f"the private_key in key cannot be read as an RSA private key. {KEY_HELP}",
                          "key")
    return key


def parse_spreadsheet(value: Any) -> str:
    """The spreadsheet id, from an id or the URL in the browser's address bar."""
    text = str(value).strip()
    found = SHEET_URL.match(text)
    if found:
        text = found.group(1)
        if text == "e":
            raise OptionError("that is a 'Publish to the web' link; use the address of the "
                              "spreadsheet while you edit it (…/spreadsheets/d/<id>/edit)", "spreadsheet")
    elif "/" in text or ":" in text:
        raise OptionError("spreadsheet must be the spreadsheet's id or its URL "
                          "(https://docs.google.com/spreadsheets/d/<id>/edit)", "spreadsheet")
    if not SHEET_ID.match(text):
        raise OptionError(f"{text[:80]!r} is not a spreadsheet id (letters, digits, - and _)",
                          "spreadsheet")
    return text


@dataclasses.dataclass
class _Token:
    """One service account's access token, and the lock that makes a burst fetch it once."""

    lock: asyncio.Lock
    value: str | None = None
    renew_at: float = 0.0


class GoogleSheetsDestination(BatchDestination):
    type = "google_sheets"
    options = frozenset({"key", "spreadsheet", "sheet", "rate_limit"})
    required = frozenset({"key", "spreadsheet"})
    batch_size = 100
    max_in_flight = 1  # appends land in order of arrival

    # Access tokens by (client_email, key id, token URL), per event loop (one loop is
    # one running relay; asyncio locks belong to one loop), shared by every
    # destination using the same key.
    _tokens: ClassVar[dict[int, tuple[asyncio.AbstractEventLoop, dict[tuple[str, str, str], _Token]]]] = {}

    def __init__(self, config: Mapping[str, Any], context: DestinationContext) -> None:
        super().__init__(config, context)
        info = parse_key(config["key"])
        self.client_email = str(info["client_email"])
        self.key_id = str(info["private_key_id"])
        self.private_key = load_private_key(str(info["private_key"]))
        self.token_url = context.settings.google_token_url or str(info["token_uri"])
        try:
            token_url = httpx.URL(self.token_url)
        except (httpx.InvalidURL, TypeError):
            token_url = None
        if token_url is None or token_url.scheme not in ("http", "https") or not token_url.host:
            raise OptionError("the token_uri in key is not a URL: use the key file as Google made it",
                              "key")
        self.spreadsheet = parse_spreadsheet(config["spreadsheet"])
        sheet = config.get("sheet", "Sheet1")
        if sheet is None or str(sheet) == "":
            raise OptionError("sheet must be the name of a tab of the spreadsheet (e.g. Sheet1)", "sheet")
        self.sheet = str(sheet)
        limit, per = rate_limit_option(config.get("rate_limit"), DEFAULT_RATE)
        account = hashlib.sha256(self.client_email.encode()).hexdigest()[:16]
        self.pacer = context.pacers.get(f"google_sheets:{account}", limit, per)

        base = context.settings.google_sheets_url.rstrip("/")
        values = f"{base}/v4/spreadsheets/{self.spreadsheet}/values/"
        self.header_url = values + quote(f"{a1_sheet(self.sheet)}!1:1", safe="")
        self.append_url = (values + quote(f"{a1_sheet(self.sheet)}!A1", safe="")
                           + ":append?valueInputOption=USER_ENTERED&insertDataOption=INSERT_ROWS")
        self._header: list[str] | None = None
        self._header_read_at = float("-inf")

    # --- what would be sent -------------------------------------------------------

    def _fields(self, payload: Any) -> Mapping[str, Any]:
        if not isinstance(payload, Mapping):
            raise DeliveryFailed(
                "a google_sheets destination needs the recipe's fields to be a mapping of column "
                "names to values", retryable=False)
        return payload

    def preview(self, payload: Any) -> dict[str, Any]:
        fields = self._fields(payload)
        return {
            "type": self.type,
            "service_account": self.client_email,
            "spreadsheet": self.spreadsheet,
            "sheet": self.sheet,
            "method": "POST",
            "url": self.append_url,
            "headers": {"Authorization": "Bearer [secret]", "Content-Type": "application/json"},
            "body": {"majorDimension": "ROWS", "values": [[cell(v) for v in fields.values()]]},
            "columns": [str(k) for k in fields],
            "note": ("each field goes under the column of the same name in row 1 of the tab (read "
                     "when sending); other columns stay empty. An empty tab first gets these "
                     "columns as its header row. Appending is not idempotent."),
        }

    # --- access token -------------------------------------------------------------

    def _token_slot(self) -> _Token:
        loop = asyncio.get_running_loop()
        tokens = GoogleSheetsDestination._tokens
        entry = tokens.get(id(loop))
        if entry is None or entry[0] is not loop:
            for key, (other, _) in list(tokens.items()):
                if other.is_closed():
                    del tokens[key]
            entry = tokens[id(loop)] = (loop, {})
        account = (self.client_email, self.key_id, self.token_url)
        slot = entry[1].get(account)
        if slot is None:
            slot = entry[1][account] = _Token(asyncio.Lock())
        return slot

    def assertion(self, now: int) -> str:
        """The signed JWT that asks Google for an access token (RFC 7523)."""
        header = {"alg": "RS256", "typ": "JWT", "kid": self.key_id}
        claims = {"iss": self.client_email, "scope": SCOPE, "aud": GOOGLE_TOKEN_AUDIENCE,
                  "iat": now, "exp": now + TOKEN_LIFETIME}
        signing_input = ".".join(_b64(json.dumps(part, separators=(",", ":")).encode())
                                 for part in (header, claims))
        signature = self.private_key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
        return f"{signing_input}.{_b64(signature)}"

    async def _access_token(self, ctx: DeliveryContext, stale: str | None = None) -> str:
        """A valid access token; ``stale`` is one Google refused, never handed out again."""
        slot = self._token_slot()
        async with slot.lock:
            if slot.value is not None and slot.value != stale and time.monotonic() < slot.renew_at:
                return slot.value
            value, expires_in = await self._fetch_token(ctx)
            slot.value = value
            slot.renew_at = time.monotonic() + max(expires_in - RENEW_EARLY, expires_in / 2)
            return value

    async def _fetch_token(self, ctx: DeliveryContext) -> tuple[str, float]:
        form = urlencode({"grant_type": JWT_GRANT, "assertion": self.assertion(int(time.time()))})
        try:
            sent = await send_http(
                ctx, "POST", self.token_url, content=form.encode(),
                headers={"Content-Type": "application/x-www-form-urlencoded", "User-Agent": USER_AGENT})
        except DeliveryFailed as failure:
            raise self._token_failure(failure) from None
        try:
            answer = json.loads(sent.body or "")
            token, expires_in = str(answer["access_token"]), float(answer.get("expires_in", 3600))
        except (ValueError, TypeError, KeyError, AttributeError):
            raise DeliveryFailed(
                "Google's token endpoint answered without an access token; relay will retry",
                retryable=True, status_code=sent.status_code, response_body=sent.body,
                response_headers=sent.headers) from None
        return token, expires_in

    def _token_failure(self, failure: DeliveryFailed) -> DeliveryFailed:
        said = google_message(failure)
        if failure.retryable:
            message = f"could not get a Google access token ({failure.message})"
        else:
            message = (f"HTTP {failure.status_code}: Google refused the service-account key of "
                       f"{self.client_email}: the key was revoked or deleted, or the service account "
                       f"was removed. Create a new JSON key, set it as the recipe's key secret, then "
                       f"replay. Google says: {said}")
            if "iat" in said or "timeframe" in said:
                message += " (Google also checks the time: make sure this machine's clock is right.)"
        return _with_message(failure, message)

    # --- requests to the Sheets API -----------------------------------------------

    async def _call(self, ctx: DeliveryContext, method: str, url: str,
                    body: Any = None) -> Sent:
        """One Sheets API request, with a new token and one more try after a 401."""
        content = b"" if body is None else json.dumps(body, ensure_ascii=False).encode()
        token = await self._access_token(ctx)
        renewed = False
        while True:
            headers = {"Authorization": f"Bearer {token}", "User-Agent": USER_AGENT}
            if body is not None:
                headers["Content-Type"] = "application/json"
            try:
                return await send_http(ctx, method, url, headers=headers, content=content,
                                       pacer=self.pacer, rate_limit_wait=RATE_LIMIT_WAIT)
            except DeliveryFailed as failure:
                if failure.status_code == 401 and not renewed:
                    token, renewed = await self._access_token(ctx, stale=token), True
                    continue
                raise self._explained(failure) from None

    def _explained(self, failure: DeliveryFailed) -> DeliveryFailed:
        """``failure`` with a message that says what to do, and Google's own words."""
        code = failure.status_code
        if code is None:
            return failure
        said = f"Google says: {google_message(failure)}"
        body = failure.response_body or ""
        if code == 401:
            message = (f"Google did not accept a new access token for {self.client_email} either: "
                       f"check that the service account still exists. {said}")
        elif code == 403 and ("SERVICE_DISABLED" in body or "has not been used" in body):
            message = ("turn on the Google Sheets API in the service account's Google Cloud project "
                       f"(APIs & Services > Library > Google Sheets API > Enable), then replay. {said}")
        elif code == 403:
            message = (f"share the spreadsheet with {self.client_email} (as Editor), then replay. "
                       f"{said}")
        elif code == 404:
            message = (f"spreadsheet or sheet not found: check the id and the tab name "
                       f"(spreadsheet {self.spreadsheet}, tab {self.sheet!r}), then replay. {said}")
        elif code == 400 and "Unable to parse range" in body:
            message = (f"the spreadsheet has no tab named {self.sheet!r}: check `sheet:` against "
                       f"the tab names at the bottom of the spreadsheet, then replay. {said}")
        elif code == 429:
            message = ("Google Sheets is rate limiting this service account (by default 60 "
                       f"requests a minute); relay waits a minute, then retries. {said}")
        elif failure.retryable:
            message = f"Google Sheets had a problem of its own; relay will retry. {said}"
        else:
            message = f"Google Sheets refused the request. {said}"
        return _with_message(failure, f"HTTP {code}: {message}")

    async def _read_header(self, ctx: DeliveryContext, fresh: bool = False) -> tuple[list[str] | None, bool]:
        """Row 1 of the tab (None when the tab is empty), and whether it came from the cache."""
        if not fresh and self._header is not None \
                and time.monotonic() - self._header_read_at < HEADER_TTL:
            return self._header, True
        sent = await self._call(ctx, "GET", self.header_url)
        try:
            rows = json.loads(sent.body or "{}").get("values") or []
        except (ValueError, AttributeError):
            raise DeliveryFailed("Google Sheets answered the header-row read with something that is "
                                 "not JSON; relay will retry", retryable=True,
                                 status_code=sent.status_code, response_body=sent.body) from None
        header = [flat_value(c).strip() for c in rows[0]] if rows and rows[0] else None
        if header is not None and not any(header):
            header = None
        self._header, self._header_read_at = header, time.monotonic()
        return header, False

    def _missing(self, header: list[str], fields: Mapping[str, Any]) -> list[str]:
        return [str(k) for k in fields if str(k) not in header]

    async def send_batch(self, payloads: list[Any], ctxs: list[DeliveryContext]) -> list[Outcome]:
        """Append the payloads as rows, in order, in one request (a bad one fails alone)."""
        outcomes: list[Outcome | None] = [None] * len(payloads)
        good: list[tuple[int, Mapping[str, Any]]] = []
        for i, payload in enumerate(payloads):
            try:
                good.append((i, self._fields(payload)))
            except DeliveryFailed as failure:
                outcomes[i] = failure
        if not good:
            return [o for o in outcomes if o is not None]
        ctx = ctxs[0]
        try:
            header, cached = await self._read_header(ctx)
            if header is not None and cached and any(self._missing(header, f) for _, f in good):
                header, _ = await self._read_header(ctx, fresh=True)  # a column added by hand?
        except DeliveryFailed as failure:
            return [o if o is not None else failure for o in outcomes]

        new_header: list[str] | None = None
        if header is None:
            new_header = list(dict.fromkeys(str(k) for _, f in good for k in f))
            header = new_header
        columns: dict[str, int] = {}
        for index, name in enumerate(header):
            columns.setdefault(name, index)
        rows: list[tuple[int, list[Any]]] = []
        for i, fields in good:
            missing = self._missing(header, fields)
            if missing:
                outcomes[i] = DeliveryFailed(
                    f"the tab {self.sheet!r} has no column {missing[0]!r} in its header row (its "
                    f"columns: {', '.join(repr(c) for c in header if c) or 'none'}). Add the column "
                    "to row 1 of the tab, or rename or remove the field in the recipe, then replay.",
                    retryable=False)
                continue
            row: list[Any] = [""] * len(header)
            for name, value in fields.items():
                row[columns[str(name)]] = cell(value)
            rows.append((i, row))

        if rows:
            values = ([new_header] if new_header else []) + [row for _, row in rows]
            try:
                sent = await self._call(ctx, "POST", self.append_url,
                                        {"majorDimension": "ROWS", "values": values})
            except DeliveryFailed as failure:
                for i, _ in rows:
                    outcomes[i] = failure
            else:
                if new_header:
                    self._header, self._header_read_at = new_header, time.monotonic()
                first = self._first_row(sent)
                for n, (i, _) in enumerate(rows):
                    where = f"row {first + n + (1 if new_header else 0)}" if first else "a new row"
                    outcomes[i] = dataclasses.replace(sent, note=f"appended as {where} of {self.sheet!r}")
        return [o for o in outcomes if o is not None]

    @staticmethod
    def _first_row(sent: Sent) -> int | None:
        try:
            updated = json.loads(sent.body or "")["updates"]["updatedRange"]
        except (ValueError, TypeError, KeyError):
            return None
        found = UPDATED_ROW.search(str(updated))
        return int(found.group(1)) if found else None


def _with_message(failure: DeliveryFailed, message: str) -> DeliveryFailed:
    return DeliveryFailed(
        message, retryable=failure.retryable, retry_after=failure.retry_after,
        status_code=failure.status_code, response_body=failure.response_body,
        response_headers=failure.response_headers)
