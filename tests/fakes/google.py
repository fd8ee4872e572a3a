"""A fake Google: the OAuth token endpoint and the Sheets API v4 values endpoints.

The token endpoint takes the JWT-bearer grant and verifies the JWT as Google does:
an RS256 signature by the key whose public half was registered (``register``) under
the header's ``kid``, ``iss`` that key's service account, the spreadsheets scope,
``aud`` Google's own token URL (wherever the JWT is posted), and a short-lived,
current ``iat``/``exp``. It issues opaque tokens with ``expires_in`` seconds to live;
``expire_tokens`` ends them early, so the next Sheets call gets 401 UNAUTHENTICATED.

The Sheets endpoints need ``Authorization: Bearer <a live token>``, serve the header
row (``GET .../values/<range>``) and take appends (``POST .../values/<range>:append``),
checking the body's shape. Spreadsheets are ``id -> tab -> rows`` (row 0 is the
header row), each shared with some service-account emails: anyone else gets 403
PERMISSION_DENIED. Errors are Google's ``{"error": {"code", "message", "status"}}``.
"""

from __future__ import annotations

import base64
import json
import re
import secrets
import threading
import time
import uuid
from collections.abc import Iterable
from typing import Any
from urllib.parse import parse_qs, unquote

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from fakes.base import Answer, FakeAPI, Request

GOOGLE_TOKEN_URL = "https://oauth2.googleapis.com/token"
SCOPE = "https://www.googleapis.com/auth/spreadsheets"
JWT_GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"

VALUES = re.compile(r"^/v4/spreadsheets/([^/]+)/values/([^/]+?)(:append)?$")
# 'Tab name'!A1:B2 or Tab!1:1 (quotes optional, '' inside quotes)
RANGE = re.compile(r"^(?:'((?:[^']|'')+)'|([^'!]+))(?:!(.*))?$")


def google_error(code: int, status: str, message: str) -> Answer:
    return Answer(code, {"error": {"code": code, "message": message, "status": status}})


def unauthenticated() -> Answer:
    return google_error(401, "UNAUTHENTICATED",
                        "Request had invalid authentication credentials. Expected OAuth 2 access "
                        "token, login cookie or other valid authentication credential. See "
                        "https://developers.google.com/identity/sign-in/web/devconsole-project.")


def column_letter(n: int) -> str:
    """1 -> A, 27 -> AA."""
    letters = ""
    while n:
        n, rest = divmod(n - 1, 26)
        letters = chr(65 + rest) + letters
    return letters


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def service_account_key(token_uri: str, *, email: str | None = None,
                        private_key: rsa.RSAPrivateKey | None = None) -> tuple[dict[str, Any], rsa.RSAPrivateKey]:
    """A service-account key file like the JSON Google Cloud downloads, around a new RSA key.

    Returns ``(info, private_key)``; register ``private_key.public_key()`` with a fake.
    """
    key = private_key or rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption()).decode()
    email = email or f"relay-{uuid.uuid4().hex[:10]}@tickets-project.iam.gserviceaccount.com"
    info = {
        "type": "service_account",
        "project_id": "tickets-project",
        "private_key_id": secrets.token_hex(20),
        "private_key": pem,
        "client_email": email,
        "client_id": "1" + "".join(str(secrets.randbelow(10)) for _ in range(20)),
        "auth_uri": "https://accounts.google.com/o/oauth2/auth",
        "token_uri": token_uri,
        "auth_provider_x509_cert_url": "https://www.googleapis.com/oauth2/v1/certs",
        "client_x509_cert_url": "https://www.googleapis.com/robot/v1/metadata/x509/"
                                + email.replace("@", "%40"),
        "universe_domain": "googleapis.com",
    }
    return info, key


class FakeGoogle(FakeAPI):
    """``url + "/token"`` is the token endpoint; ``url`` is the Sheets API base."""

    def __init__(self, expires_in: int = 3599) -> None:
        super().__init__()
        self.expires_in = expires_in
        self.keys: dict[str, tuple[str, rsa.RSAPublicKey]] = {}  # kid -> (client_email, public key)
        self.tokens: dict[str, tuple[str, float]] = {}  # token -> (client_email, expires at)
        self.token_requests = 0
        self.token_refusals: list[str] = []
        # id -> tab -> rows (row 0 the header row); id -> emails it is shared with
        self.spreadsheets: dict[str, dict[str, list[list[Any]]]] = {}
        self.editors: dict[str, set[str]] = {}
        self.exhausted = 0  # the next N Sheets requests answer 429 RESOURCE_EXHAUSTED
        self.hold_appends: threading.Event | None = None  # appends wait until it is set
        self.appends_held = 0  # appends that arrived while held

    @property
    def token_url(self) -> str:
        return self.url + "/token"

    # --- what tests use ---------------------------------------------------------

    def register(self, info: dict[str, Any], public_key: rsa.RSAPublicKey) -> None:
        """Know a service-account key: its id, its account, and its public half."""
        with self.lock:
            self.keys[str(info["private_key_id"])] = (str(info["client_email"]), public_key)

    def create(self, spreadsheet: str, tabs: dict[str, list[list[Any]]], editors: Iterable[str]) -> None:
        with self.lock:
            self.spreadsheets[spreadsheet] = {name: [list(r) for r in rows] for name, rows in tabs.items()}
            self.editors[spreadsheet] = set(editors)

    def rows(self, spreadsheet: str, tab: str) -> list[list[Any]]:
        with self.lock:
            return [list(r) for r in self.spreadsheets[spreadsheet][tab]]

    def expire_tokens(self) -> None:
        """Every token issued so far stops working now."""
        with self.lock:
            self.tokens = {t: (email, 0.0) for t, (email, _) in self.tokens.items()}

    def exhaust(self, count: int = 1) -> None:
        with self.lock:
            self.exhausted += count

    def sheets_requests(self, kind: str | None = None) -> list[Request]:
        """Requests to the Sheets API: all, or only "append" or "read" ones."""
        with self.lock:
            found = [r for r in self.requests if r.path.startswith("/v4/")]
        if kind == "append":
            return [r for r in found if r.path.endswith(":append")]
        if kind == "read":
            return [r for r in found if r.method == "GET"]
        return found

    # --- the contract -----------------------------------------------------------

    def _answer(self, request: Request) -> Answer:
        # Held here, outside the fake's lock, so the test can still look at the fake.
        if self.hold_appends is not None and request.path.endswith(":append"):
            with self.lock:
                self.appends_held += 1
            self.hold_appends.wait(timeout=30)
        return super()._answer(request)

    def rate_limited(self, request: Request) -> Answer:
        return google_error(429, "RESOURCE_EXHAUSTED",
                            "Quota exceeded for quota metric 'Write requests' and limit 'Write "
                            "requests per minute per user' of service 'sheets.googleapis.com'.")

    def authorized(self, request: Request) -> Answer | None:
        if not request.path.startswith("/v4/"):
            return None  # the token endpoint authenticates with the JWT itself
        auth = request.headers.get("authorization", "")
        if not auth.startswith("Bearer "):
            return unauthenticated()
        issued = self.tokens.get(auth.removeprefix("Bearer "))
        if issued is None or issued[1] <= time.time():
            return unauthenticated()
        return None

    def handle(self, request: Request) -> Answer:
        if request.path == "/token":
            return self.token(request)
        if not request.path.startswith("/v4/"):
            return google_error(404, "NOT_FOUND", "Requested entity was not found.")
        if self.exhausted:
            self.exhausted -= 1
            return self.rate_limited(request)
        found = VALUES.match(request.path)
        if not found:
            return google_error(404, "NOT_FOUND", "Requested entity was not found.")
        spreadsheet, a1, append = unquote(found.group(1)), unquote(found.group(2)), found.group(3)
        if spreadsheet not in self.spreadsheets:
            return google_error(404, "NOT_FOUND", "Requested entity was not found.")
        email = self.tokens[request.headers["authorization"].removeprefix("Bearer ")][0]
        if email not in self.editors[spreadsheet]:
            return google_error(403, "PERMISSION_DENIED", "The caller does not have permission")
        parsed = RANGE.match(a1)
        tab = (parsed.group(1).replace("''", "'") if parsed.group(1) else parsed.group(2)) if parsed else None
        if tab is None or tab not in self.spreadsheets[spreadsheet]:
            return google_error(400, "INVALID_ARGUMENT", f"Unable to parse range: {a1}")
        rows = self.spreadsheets[spreadsheet][tab]
        if append and request.method == "POST":
            return self.append(request, spreadsheet, tab, a1, rows)
        if not append and request.method == "GET":
            return self.read(spreadsheet, tab, a1, parsed.group(3) if parsed else None, rows)
        return google_error(404, "NOT_FOUND", "Requested entity was not found.")

    def token(self, request: Request) -> Answer:
        self.token_requests += 1

        def refuse(description: str, error: str = "invalid_grant") -> Answer:
            self.token_refusals.append(description)
            return Answer(400, {"error": error, "error_description": description})

        if request.method != "POST":
            return Answer(405, {"error": "invalid_request", "error_description": "POST only"})
        if not request.headers.get("content-type", "").startswith("application/x-www-form-urlencoded"):
            return refuse("Bad Request", "invalid_request")
        form = parse_qs(request.body.decode())
        if form.get("grant_type") != [JWT_GRANT]:
            return refuse("Invalid grant_type: " + ",".join(form.get("grant_type", [])),
                          "unsupported_grant_type")
        [assertion] = form.get("assertion") or [""]
        parts = assertion.split(".")
        if len(parts) != 3:
            return refuse("Invalid JWT: token must have three parts", "invalid_request")
        try:
            header, claims = json.loads(_unb64(parts[0])), json.loads(_unb64(parts[1]))
            signature = _unb64(parts[2])
        except ValueError:
            return refuse("Invalid JWT: cannot decode", "invalid_request")
        if header.get("alg") != "RS256" or header.get("typ") != "JWT":
            return refuse("Invalid JWT: alg must be RS256 and typ JWT")
        known = self.keys.get(str(header.get("kid")))
        if known is None:
            return refuse("Invalid JWT Signature.")  # a deleted key, as Google answers it
        email, public_key = known
        try:
            public_key.verify(signature, f"{parts[0]}.{parts[1]}".encode(), padding.PKCS1v15(),
                              hashes.SHA256())
        except InvalidSignature:
            return refuse("Invalid JWT Signature.")
        if claims.get("iss") != email:
            return refuse("Invalid grant: account not found")
        if claims.get("aud") != GOOGLE_TOKEN_URL:
            return refuse("Invalid JWT: Failed audience check. The right audience is "
                          + GOOGLE_TOKEN_URL)
        if SCOPE not in str(claims.get("scope", "")).split():
            return refuse("Invalid JWT: scope must include " + SCOPE, "invalid_scope")
        iat, exp, now = claims.get("iat"), claims.get("exp"), time.time()
        if not (isinstance(iat, int) and isinstance(exp, int) and abs(iat - now) < 300
                and 0 < exp - iat <= 3600 and exp > now):
            return refuse("Invalid JWT: Token must be a short-lived token (60 minutes) and in a "
                          "reasonable timeframe. Check your iat and exp values in the JWT claim.")
        token = f"ya29.fake-{secrets.token_urlsafe(24)}"
        self.tokens[token] = (email, now + self.expires_in)
        return Answer(200, {"access_token": token, "expires_in": self.expires_in, "token_type": "Bearer"})

    def read(self, spreadsheet: str, tab: str, a1: str, cells: str | None,
             rows: list[list[Any]]) -> Answer:
        if cells != "1:1":  # all relay reads is the header row
            return google_error(400, "INVALID_ARGUMENT", f"the fake only serves row 1, not {a1}")
        quoted = "'" + tab.replace("'", "''") + "'"
        answer: dict[str, Any] = {"range": f"{quoted}!A1:{column_letter(max(1, len(rows[0]) if rows else 1))}1",
                                  "majorDimension": "ROWS"}
        header = list(rows[0]) if rows else []
        while header and header[-1] == "":  # Google leaves out trailing empty cells
            header.pop()
        if header:
            answer["values"] = [header]
        return Answer(200, answer)

    def append(self, request: Request, spreadsheet: str, tab: str, a1: str,
               rows: list[list[Any]]) -> Answer:
        option = request.query.get("valueInputOption", [""])[0]
        if option not in ("USER_ENTERED", "RAW"):
            return google_error(400, "INVALID_ARGUMENT",
                                "'valueInputOption' is required but not specified" if not option
                                else f"Invalid value at 'value_input_option' ({option})")
        insert = request.query.get("insertDataOption", ["OVERWRITE"])[0]
        if insert not in ("INSERT_ROWS", "OVERWRITE"):
            return google_error(400, "INVALID_ARGUMENT", f"Invalid value at 'insert_data_option' ({insert})")
        if not request.headers.get("content-type", "").startswith("application/json"):
            return google_error(400, "INVALID_ARGUMENT", "Invalid JSON payload received.")
        try:
            body = request.json()
        except ValueError:
            return google_error(400, "INVALID_ARGUMENT", "Invalid JSON payload received.")
        if not isinstance(body, dict) or body.get("majorDimension") != "ROWS":
            return google_error(400, "INVALID_ARGUMENT",
                                "Invalid value at 'data.major_dimension': expected \"ROWS\"")
        values = body.get("values")
        if not isinstance(values, list) or not values:
            return google_error(400, "INVALID_ARGUMENT", "Invalid value at 'data.values'")
        for i, row in enumerate(values):
            if not isinstance(row, list):
                return google_error(400, "INVALID_ARGUMENT", f"Invalid value at 'data.values[{i}]'")
            for j, value in enumerate(row):
                if not isinstance(value, (str, int, float, bool)):
                    return google_error(
                        400, "INVALID_ARGUMENT",
                        f"Invalid value at 'data.values[{i}].values[{j}]' ({type(value).__name__})")
        start = len(rows) + 1
        rows.extend(list(row) for row in values)
        width = max(len(r) for r in values)
        quoted = "'" + tab.replace("'", "''") + "'"
        answer: dict[str, Any] = {"spreadsheetId": spreadsheet}
        if start > 1:
            answer["tableRange"] = f"{quoted}!A1:{column_letter(width)}{start - 1}"
        answer["updates"] = {
            "spreadsheetId": spreadsheet,
            "updatedRange": f"{quoted}!A{start}:{column_letter(width)}{start + len(values) - 1}",
            "updatedRows": len(values), "updatedColumns": width,
            "updatedCells": sum(len(r) for r in values)}
        return Answer(200, answer)
