"""Who may use the web UI: accounts, sessions, CSRF and login throttling.

- Passwords are hashed with argon2id (argon2-cffi).
- A session is a random token in an HttpOnly, SameSite=Lax cookie (Secure when
  the page was served over HTTPS); the database keeps only its SHA-256. Logging in
  always starts a new session (no fixation); logging out deletes it.
- Every request that changes something (any method but GET and HEAD) must carry
  the session's CSRF token, in the ``X-CSRF-Token`` header or a ``csrf_token``
  form field. ``AuthMiddleware`` checks both the session and the token for every
  path that is not public, so a new page is protected without anyone remembering to.
- After ``FREE_ATTEMPTS`` wrong passwords in a row from one address or for one
  account, each further attempt must wait, twice as long each time.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import secrets
import time
import urllib.parse
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from starlette.datastructures import FormData
from starlette.formparsers import FormParser
from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..errors import ConfigError
from ..store import Store

log = logging.getLogger("relay.ui")

COOKIE = "relay_session"
SESSION_IDLE = 14 * 86400  # a session unused this long has ended
TOUCH_EVERY = 300  # seen_at is written at most this often per session
FREE_ATTEMPTS = 10
MAX_WAIT = 900.0
MIN_PASSWORD = 8
FORM_LIMIT = 4 * 1024 * 1024  # largest form a page may post (a recipe is far smaller)

# Paths anyone may reach: webhook senders, health and metrics probes, the login page
# and the files it needs.
PUBLIC_PREFIXES = ("/hooks/", "/static/")
PUBLIC_PATHS = frozenset({"/healthz", "/metrics", "/login", "/favicon.ico"})

hasher = PasswordHasher()

#: The login throttle's clock (monotonic seconds). Read at each use, so a test can
#: replace it to step over a wait instead of sleeping through it.
throttle_clock: Callable[[], float] = time.monotonic


def hash_password(password: str) -> str:
    """:raises ConfigError: when the password is too short to be safe."""
    if len(password) < MIN_PASSWORD:
        raise ConfigError(f"A password needs at least {MIN_PASSWORD} characters.")
    return hasher.hash(password)


def check_password(password_hash: str | None, password: str) -> bool:
    if password_hash is None:
        # Same work whether or not the account exists: timing tells nothing.
        hasher.hash(password)
        return False
    try:
        return hasher.verify(password_hash, password)
    except (VerificationError, InvalidHashError):
        return False


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def is_public(path: str) -> bool:
    # "/hooks/" with its slash: a page named e.g. /hooksettings must not become public.
    return path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES) or path == "/hooks"


@dataclass(frozen=True)
class Session:
    user: str
    csrf_token: str
    token_hash: str


class Throttle:
    """Counts wrong passwords in a row per client address and per account name."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._failures: dict[str, tuple[int, float]] = {}

    def wait(self, *keys: str) -> float:
        """Seconds before another attempt is allowed for any of ``keys`` (0: go ahead)."""
        now = self.clock()
        longest = 0.0
        for key in keys:
            count, last = self._failures.get(key, (0, 0.0))
            if count >= FREE_ATTEMPTS:
                delay = min(MAX_WAIT, 2.0 ** (count - FREE_ATTEMPTS + 1))
                longest = max(longest, last + delay - now)
        return max(0.0, longest)

    def failed(self, *keys: str) -> None:
        now = self.clock()
        if len(self._failures) > 100_000:  # bounded: forget the oldest half
            for key, _ in sorted(self._failures.items(), key=lambda kv: kv[1][1])[:50_000]:
                del self._failures[key]
        for key in keys:
            count, _ = self._failures.get(key, (0, 0.0))
            self._failures[key] = (count + 1, now)

    def succeeded(self, *keys: str) -> None:
        for key in keys:
            self._failures.pop(key, None)


def ensure_admin(store: Store, password: str | None, say: Callable[[str], None]) -> None:
    """At start: when there is no account, make ``admin`` (password given or made up)."""
    if store.users():
        return
    made_up = password is None
    if made_up:
        password = secrets.token_urlsafe(12)
    assert password is not None
    try:
        store.put_user("admin", hash_password(password))
    except ConfigError as e:
        raise ConfigError(f"RELAY_ADMIN_PASSWORD is not usable: {e.message}") from None
    if made_up:
        say(f"created the web UI account 'admin' with the password {password} "
            "(shown only this once; change it with `relay user password admin`)")
    else:
        say("created the web UI account 'admin' with the password from RELAY_ADMIN_PASSWORD")


class Sessions:
    """Sessions in the database, reached through the app's reader and writer."""

    def __init__(self, runtime: Any) -> None:
        self.runtime = runtime
        self.throttle = Throttle(clock=lambda: throttle_clock())

    async def start(self, user: str) -> tuple[str, Session]:
        token = secrets.token_urlsafe(32)
        session = Session(user=user, csrf_token=secrets.token_urlsafe(32), token_hash=token_hash(token))
        expired = time.time() - SESSION_IDLE
        await self.runtime.writer.run(
            lambda s: s.add_session(session.token_hash, user, session.csrf_token, expired))
        return token, session

    async def find(self, token: str | None) -> Session | None:
        if not token or len(token) > 200:
            return None
        hashed = token_hash(token)
        row = await self.runtime.readers.run(lambda s: s.session(hashed))
        if row is None or row["seen_at"] < time.time() - SESSION_IDLE:
            return None
        if row["seen_at"] < time.time() - TOUCH_EVERY:
            await self.runtime.writer.run(lambda s: s.touch_session(hashed))
        return Session(user=row["user"], csrf_token=row["csrf_token"], token_hash=hashed)

    async def end(self, session: Session) -> None:
        await self.runtime.writer.run(lambda s: s.delete_session(session.token_hash))

    async def login(self, name: str, password: str, client: str) -> tuple[str, Session] | float:
        """A new session, or the seconds to wait before trying again (0.0: wrong password)."""
        keys = (f"ip:{client}", f"user:{name.lower()}")
        wait = self.throttle.wait(*keys)
        if wait > 0:
            return wait
        row = await self.runtime.readers.run(lambda s: s.user(name))
        stored = row["password_hash"] if row else None
        ok = await asyncio.to_thread(check_password, stored, password)
        if not ok:
            self.throttle.failed(*keys)
            log.warning("wrong password for web UI account %r from %s", name[:100], client)
            return 0.0
        self.throttle.succeeded(*keys)
        return await self.start(name)


def set_cookie(response: Response, request: Request, token: str) -> None:
    response.set_cookie(COOKIE, token, max_age=SESSION_IDLE, httponly=True, samesite="lax",
                        secure=request.url.scheme == "https", path="/")


def safe_next(target: str | None) -> str:
    """Where to go after logging in: only a path on this site (no open redirect)."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    parts = urllib.parse.urlsplit(target)
    if parts.scheme or parts.netloc:
        return "/"
    return target


SECURITY_HEADERS = [
    (b"content-security-policy",
     b"default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
     b"connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
     b"frame-ancestors 'none'"),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"same-origin"),
]


class AuthMiddleware:
    """Every non-public path needs a session; every change needs its CSRF token.

    The session is put in ``scope["state"]["session"]`` for the pages. A form body
    is read here (bounded) to find ``csrf_token`` and then handed on unchanged.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        if path.startswith("/hooks/"):  # the hot path: nothing to add
            await self.app(scope, receive, send)
            return
        send = _with_headers(send)
        if is_public(path):
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        sessions: Sessions = scope["state"]["runtime"].sessions
        session = await sessions.find(request.cookies.get(COOKIE))
        unsafe = scope["method"] not in ("GET", "HEAD")
        if session is None:
            if unsafe or request.headers.get("hx-request"):
                response: Response = PlainTextResponse(
                    "You are not logged in (or your session ended). Log in again.", status_code=401,
                    headers={"HX-Redirect": "/login"})
            else:
                target = path + (f"?{scope['query_string'].decode('latin-1')}"
                                 if scope["query_string"] else "")
                response = RedirectResponse("/login?" + urllib.parse.urlencode({"next": target}),
                                            status_code=303)
            await response(scope, receive, send)
            return
        scope["state"]["session"] = session
        if unsafe:
            sent = request.headers.get("x-csrf-token")
            body: bytes | None = None
            if sent is None:
                body = await _read_body(receive)
                if body is None:
                    await PlainTextResponse("That form is too large.", status_code=413)(scope, receive, send)
                    return
                sent = await _form_field(request.headers, body, "csrf_token")
            if not sent or not hmac.compare_digest(sent.encode(), session.csrf_token.encode()):
                await PlainTextResponse(
                    "This form has expired or did not come from relay's own page. "
                    "Reload the page and try again.", status_code=403)(scope, receive, send)
                return
            if body is not None:
                receive = _replay(body)
        await self.app(scope, receive, send)


def _with_headers(send: Send) -> Send:
    async def wrapped(message: Message) -> None:
        if message["type"] == "http.response.start":
            names = {k.lower() for k, _ in message.get("headers", [])}
            extra = [(k, v) for k, v in SECURITY_HEADERS if k not in names]
            message = {**message, "headers": [*message.get("headers", []), *extra]}
        await send(message)
    return wrapped


async def _read_body(receive: Receive) -> bytes | None:
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            break
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > FORM_LIMIT:
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


async def _form_field(headers: Any, body: bytes, name: str) -> str | None:
    content_type = headers.get("content-type", "")
    if not content_type.startswith("application/x-www-form-urlencoded"):
        # Multipart forms must send the header; relay's pages post urlencoded forms.
        return None

    async def stream() -> Any:
        yield body
    form: FormData = await FormParser(headers, stream()).parse()
    value = form.get(name)
    return value if isinstance(value, str) else None


def _replay(body: bytes) -> Callable[[], Awaitable[Message]]:
    sent = False

    async def receive() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        await asyncio.Event().wait()  # like a client that keeps the connection open
        return {"type": "http.disconnect"}
    return receive
