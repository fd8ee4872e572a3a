"""The web UI's security, checked against every route the real app has.

- without a session, every page and action but the public ones redirects to the
  login (GET) or is refused (anything else); the public ones are exactly the
  webhook URLs, /healthz, /metrics, /login and /static;
- with a session but without its CSRF token, every action is refused and changes nothing;
- a secret's value, once saved in the UI, is in no page, no log line and not /metrics;
- ten wrong passwords in a row make further attempts wait, twice as long each time;
- no session fixation, logging out ends the session on the server, no open redirect
  after login, cookies HttpOnly + SameSite (+ Secure behind https), security headers;
- the ``relay user`` commands.

Routes are read from the app itself, so a page added later is checked without
anyone remembering to add it here.
"""

from __future__ import annotations

import html
import os
import re
import secrets
import sqlite3
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

import httpx
import pytest
from click.testing import CliRunner, Result
from starlette.routing import Mount, Route

from conftest import (
    ADMIN_PASSWORD,
    ROOT,
    RelayProcess,
    RelayServer,
    Sink,
    UIClient,
    free_port,
    login_form_token,
    sample,
    wait_until,
    write_recipe,
    write_sources,
)
from relay.cli import cli
from relay.ui import auth

EXPECTED_PUBLIC = {"/hooks/{source}", "/hooks/{source}/", "/hooks/{source}/{token}", "/healthz",
                   "/metrics", "/login", "/static"}
# Fields a state-changing form might read: if a route ever skipped the CSRF check,
# these would make it change something.
FORM = {"name": "EVIL_NAME", "value": "evil-value-0123456789", "text": "source: tikkl\nto: []\n",
        "yaml": "source: tikkl\nto: []\n", "content": "x", "source": "tikkl", "recipe": "evil",
        "template": "http", "status": "dead", "password": "evil-password-123", "next": "/"}


# --- the app's routes -------------------------------------------------------------------


def routes_of(relay: RelayServer | RelayProcess, app: Any = None) -> list[tuple[str, str]]:
    """``(path format, method)`` of every route, HEAD left out (it is GET's)."""
    app = app or relay.server.config.app  # type: ignore[union-attr]
    found = []
    for route in app.routes:
        if isinstance(route, Mount):
            found.append((route.path, "GET"))
        elif isinstance(route, Route):
            found.extend((route.path_format, m) for m in sorted(route.methods or ["GET"]) if m != "HEAD")
    assert found
    return found


def concrete(path_format: str, values: dict[str, str]) -> str:
    """A path with a real value for each parameter, chosen by the segment before it."""
    if path_format == "/static":
        return "/static/relay.css"
    parts = path_format.split("/")
    for i, part in enumerate(parts):
        if part.startswith("{"):
            parts[i] = values.get(parts[i - 1]) or values.get(part.strip("{}")) or "1"
    return "/".join(parts)


def populated(make_relay: Any, tmp_path: Path, sink: Sink, **settings: Any) -> tuple[RelayServer, dict[str, str]]:
    """A relay with sources, a recipe, an event, a delivery and a secret: every id exists."""
    folder = tmp_path / "recipes"
    write_sources(folder)
    write_recipe(folder, "to-sink", f"""\
source: tikkl
fields:
  email: registrantEmail
to:
  - type: http
    url: {sink.url}/to-sink
""")
    relay = make_relay(**settings)
    assert relay.send("tikkl", "tikkl", sample("tikkl/ticket.json")).status_code == 200
    relay.settled(1)
    with closing(relay.login()) as ui:
        assert ui.post("/secrets", data={"name": "SOME_SECRET", "value": "some-secret-value-1"}
                       ).status_code == 303
    event = relay.rows("SELECT MAX(id) AS id FROM events")[0]["id"]
    delivery = relay.rows("SELECT MAX(id) AS id FROM deliveries")[0]["id"]
    values = {"sources": "tikkl", "hooks": "tikkl", "recipes": "to-sink", "events": str(event),
              "deliveries": str(delivery), "attempts": str(delivery), "secrets": "SOME_SECRET",
              "token": "not-the-token", "source": "tikkl", "name": "to-sink", "id": str(event)}
    return relay, values


def guarded(response: httpx.Response, method: str) -> bool:
    """Did the login guard stop this request (not the page itself)?"""
    if method == "GET":
        location = response.headers.get("location", "")
        return response.status_code == 303 and location.startswith("/login?next=")
    return response.status_code == 401 and response.headers.get("hx-redirect") == "/login"


def test_without_a_session_only_the_public_paths_answer(make_relay: Any, sink: Sink, tmp_path: Path) -> None:
    relay, values = populated(make_relay, tmp_path, sink)
    public: set[str] = set()
    checked = 0
    cookies = [None, {auth.COOKIE: "made-up-session-token"}, {auth.COOKIE: ""}]
    for path_format, method in routes_of(relay):
        path = concrete(path_format, values)
        for jar in cookies:
            with httpx.Client(base_url=relay.url, cookies=jar, timeout=30) as anonymous:
                for headers in ({}, {"HX-Request": "true"}):
                    answer = anonymous.request(method, path, data=FORM if method != "GET" else None,
                                               headers=headers)
                    checked += 1
                    if method == "GET" and headers:  # htmx asks for a partial: refused, told where to go
                        ok = guarded(answer, "POST") or path_format in EXPECTED_PUBLIC
                        assert ok, (path, answer.status_code)
                    elif not guarded(answer, method):
                        public.add(path_format)
                    else:
                        assert "not logged in" in answer.text or method == "GET"
                        assert "some-secret-value" not in answer.text
        if method == "GET" and path_format not in EXPECTED_PUBLIC:
            # ... and after logging in, the login page sends the browser back where it was.
            answer = httpx.get(relay.url + path, timeout=30)
            assert answer.headers["location"] == "/login?" + urlencode({"next": path})
    assert public == EXPECTED_PUBLIC
    assert checked > 50
    # A page whose path merely starts like a public one is not public.
    for path in ("/hooksettings", "/healthz/x", "/metrics2", "/login2", "/staticx", "/hooks"):
        assert auth.is_public(path) is (path == "/hooks"), path
    with httpx.Client(base_url=relay.url, timeout=30) as anonymous:
        assert anonymous.get("/static/relay.css").status_code == 200
        assert anonymous.get("/healthz").status_code == 200
        assert anonymous.get("/login").status_code == 200


# --- CSRF --------------------------------------------------------------------------------


def snapshot(relay: RelayServer) -> dict[str, Any]:
    """Everything a request could change: every table (but when sessions were seen), every file."""
    tables: dict[str, Any] = {}
    with closing(sqlite3.connect(relay.settings.db)) as db:
        names = [r[0] for r in db.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'")]
        for name in names:
            columns = [r[1] for r in db.execute(f"PRAGMA table_info({name})") if r[1] != "seen_at"]
            tables[name] = sorted(map(repr, db.execute(f"SELECT {', '.join(columns)} FROM {name}")))
    files = {str(p): p.read_bytes() for folder in (relay.settings.recipes, relay.settings.data)
             for p in sorted(Path(folder).rglob("*")) if p.is_file()}
    return {"tables": tables, "files": files}


def test_every_action_needs_the_session_csrf_token(make_relay: Any, sink: Sink, tmp_path: Path) -> None:
    relay, values = populated(make_relay, tmp_path, sink)
    unsafe = [(f, m) for f, m in routes_of(relay) if m != "GET" and f not in EXPECTED_PUBLIC]
    assert {"/secrets", "/secrets/{name}/delete", "/sources/{name}/test", "/logout"} <= {f for f, _ in unsafe}
    with closing(relay.login()) as ui, closing(relay.login()) as other:
        before = snapshot(relay)
        variants: list[tuple[dict[str, str], Any]] = [
            ({}, {"data": FORM}),  # no token at all
            ({"X-CSRF-Token": ""}, {"data": FORM}),
            ({"X-CSRF-Token": "wrong-token"}, {"data": FORM}),
            ({"X-CSRF-Token": other.csrf}, {"data": FORM}),  # another session's token
            ({}, {"data": {**FORM, "csrf_token": "wrong-token"}}),
            ({}, {"data": {**FORM, "csrf_token": other.csrf}}),
            ({}, {"json": {**FORM, "csrf_token": ui.csrf}}),  # only forms and the header count
            ({}, {"files": {"file": ("a.yaml", b"x")}, "data": {**FORM, "csrf_token": "wrong"}}),
        ]
        with httpx.Client(base_url=relay.url, cookies=ui.cookies, timeout=30) as no_header:
            for path_format, method in unsafe:
                path = concrete(path_format, values)
                for headers, body in variants:
                    answer = no_header.request(method, path, headers=headers, **body)
                    assert answer.status_code == 403, (method, path, headers, answer.status_code)
                    assert "Reload the page and try again" in answer.text
        assert snapshot(relay) == before
        assert ui.get("/sources").status_code == 200  # /logout without the token logged nobody out
        # A login needs the login form's own token too (no login CSRF).
        with httpx.Client(base_url=relay.url, timeout=30) as anonymous:
            login_form_token(anonymous)
            for token in ("", "forged"):
                answer = anonymous.post("/login", data={"name": "admin", "password": ADMIN_PASSWORD,
                                                        "login_token": token})
                assert answer.status_code == 403 and auth.COOKIE not in answer.cookies
        assert snapshot(relay) == before


# --- a secret's value is never shown -------------------------------------------------------


def crawl(client: httpx.Client, start: list[str], limit: int = 400) -> dict[str, httpx.Response]:
    """GET every page reachable from ``start`` through links and htmx GETs on this site."""
    seen: dict[str, httpx.Response] = {}
    queue = list(start)
    while queue and len(seen) < limit:
        path = queue.pop(0).split("#")[0]
        if not path or path in seen:
            continue
        try:
            answer = client.get(path)
        except httpx.TransportError:  # the server dropped a reused connection: once more
            answer = client.get(path)
        seen[path] = answer
        if "text/html" not in answer.headers.get("content-type", ""):
            continue
        for link in re.findall(r'(?:href|hx-get|src|data-url)="([^"]+)"', answer.text):
            link = html.unescape(link)
            parts = urlsplit(link)
            if parts.scheme or parts.netloc or not link.startswith("/") or "/vendor/" in link:
                continue
            queue.append(link)
    return seen


def test_a_secret_value_is_in_no_page_no_log_and_not_metrics(sink: Sink, tmp_path: Path) -> None:
    """``relay serve`` as it runs in production, its log captured from its output."""
    shop_token = "shop-token-" + secrets.token_hex(8)
    crm_token = "crm-token-" + secrets.token_hex(8)
    folder = tmp_path / "recipes"
    write_sources(folder, "shop:\n  platform: quicket\n  token: ${SHOP_TOKEN}\n")
    write_recipe(folder, "shop-to-crm", f"""\
source: shop
events: ["checkout_completed"]
for_each: tickets
fields:
  email: attendee_email
  order: _event.reference
to:
  - type: http
    url: {sink.url}/crm
    headers:
      Authorization: "Bearer ${{CRM_TOKEN}}"
""")
    env = {k: v for k, v in os.environ.items() if not k.startswith("RELAY_")}
    env.update(RELAY_RECIPES=str(folder), RELAY_DB=str(tmp_path / "relay.db"),
               RELAY_DATA=str(tmp_path / "data"), RELAY_ADMIN_PASSWORD=ADMIN_PASSWORD)
    relay = RelayProcess(tmp_path, free_port(), env)
    try:
        with closing(UIClient(relay.url, "admin", ADMIN_PASSWORD)) as ui:
            for name, value in (("SHOP_TOKEN", shop_token), ("CRM_TOKEN", crm_token)):
                assert ui.post("/secrets", data={"name": name, "value": value}).status_code == 303
            # The UI's test button puts the token in a URL; a platform does too; so does a mistake.
            assert "Accepted" in ui.post("/sources/shop/test").text
            body = sample("quicket/checkout_completed.json")
            for path in (f"/hooks/shop/{shop_token}", f"/hooks/{shop_token}", f"/hooks/shop/{crm_token}x"):
                httpx.post(relay.url + path, content=body, timeout=30)
            wait_until(lambda: len(sink.received) >= 4)  # two tickets per purchase
            assert sink.received[0].headers["authorization"] == f"Bearer {crm_token}"
            store_rows = lambda: [r[0] for r in sqlite3.connect(tmp_path / "relay.db").execute(  # noqa: E731
                "SELECT status FROM deliveries")]
            wait_until(lambda: set(store_rows()) == {"delivered"})

            app = create_app_routes(tmp_path)
            event = str(max(int(r) for r in re.findall(r'href="/log/events/(\d+)"', ui.get("/sources").text)))
            values = {"sources": "shop", "recipes": "shop-to-crm", "events": event, "deliveries": "1",
                      "attempts": "1", "secrets": "SHOP_TOKEN", "name": "shop-to-crm", "id": event}
            start = [concrete(f, values) for f, m in app if m == "GET" and not f.startswith("/hooks")]
            start += ["/secrets?saved=SHOP_TOKEN", "/secrets?deleted=SHOP_TOKEN", "/sources/shop"]
            pages = crawl(ui, start)
            assert len(pages) > 10
            assert [p for p, a in pages.items() if a.status_code >= 500] == []
            leaks = [path for path, answer in pages.items() for value in (shop_token, crm_token)
                     if value in answer.text or value in str(answer.headers)]
            assert leaks == [], f"the value of a secret is on these pages: {leaks}"
        for path in ("/metrics", "/healthz"):
            answer = httpx.get(relay.url + path, timeout=30)
            assert answer.status_code == 200
            assert shop_token not in answer.text and crm_token not in answer.text
    finally:
        relay.terminate()
    log = b"".join(p.read_bytes() for p in tmp_path.glob("relay-*.log")).decode(errors="replace")
    assert "secret SHOP_TOKEN set in the web UI by admin" in log
    assert shop_token not in log and crm_token not in log
    # At rest, the database holds them encrypted only: even the refused request that put
    # the shop token where the source name goes is logged with the token hidden.
    stored = b"".join(p.read_bytes() for p in tmp_path.glob("relay.db*"))
    assert crm_token.encode() not in stored
    assert shop_token.encode() not in stored


def create_app_routes(tmp_path: Path) -> list[tuple[str, str]]:
    """The routes of the app ``relay serve`` runs (built, not started)."""
    from relay.app import create_app
    from relay.settings import Settings

    settings = Settings.from_env(environ={}, recipes=tmp_path / "recipes", db=tmp_path / "relay.db",
                                 data=tmp_path / "data")
    return routes_of(None, create_app(settings))  # type: ignore[arg-type]


def test_security_headers_on_every_page(make_relay: Any, sink: Sink, tmp_path: Path) -> None:
    relay, values = populated(make_relay, tmp_path, sink)
    start = [concrete(f, values) for f, m in routes_of(relay) if m == "GET" and not f.startswith("/hooks")]
    with closing(relay.login()) as ui:
        pages = crawl(ui, start + ["/no-such-page"])
    with httpx.Client(base_url=relay.url, timeout=30) as anonymous:
        pages["(login)"] = anonymous.get("/login")
        pages["(redirect)"] = anonymous.get("/sources")
    assert [p for p, a in pages.items() if a.status_code >= 500] == []
    html_pages = 0
    for path, answer in pages.items():
        headers = answer.headers
        assert headers.get("x-content-type-options") == "nosniff", path
        if "text/html" not in headers.get("content-type", "") and path != "(redirect)":
            continue
        html_pages += 1
        csp = headers.get("content-security-policy", "")
        for rule in ("default-src 'self'", "script-src 'self'", "style-src 'self'", "object-src 'none'",
                     "frame-ancestors 'none'", "base-uri 'none'", "form-action 'self'"):
            assert rule in csp, (path, rule)
        assert "unsafe-inline" not in csp and "unsafe-eval" not in csp, path
        assert headers.get("x-frame-options") == "DENY", path
        assert headers.get("referrer-policy") == "same-origin", path
        if path != "(redirect)":
            assert headers.get("cache-control") == "no-store", path  # pages may hold customer data
    assert html_pages > 5


def test_templates_have_no_inline_code() -> None:
    """What the CSP would block anyway: inline scripts, event handlers and styles."""
    for template in sorted((ROOT / "ui" / "templates").glob("*.html")):
        text = template.read_text()
        assert not re.search(r"<script(?![^>]*\bsrc=)(?![^>]*type=\"application/json\")[^>]*>", text), template
        assert not re.search(r"\son[a-z]+\s*=", text), template
        assert not re.search(r"\sstyle\s*=|<style", text), template
        assert "|safe" not in text.replace(" ", ""), template


# --- login throttling ----------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def attempt(client: httpx.Client, password: str) -> httpx.Response:
    return client.post("/login", data={"name": "admin", "password": password, "next": "/",
                                       "login_token": login_form_token(client)})


def test_ten_wrong_passwords_make_the_next_attempts_wait(make_relay: Any, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    clock = Clock()
    monkeypatch.setattr(auth, "throttle_clock", clock)
    write_sources(tmp_path / "recipes")
    relay: RelayServer = make_relay()
    with httpx.Client(base_url=relay.url, timeout=30) as client:
        for number in range(10):
            answer = attempt(client, f"wrong password {number}")
            assert answer.status_code == 401 and "do not match" in answer.text
        # The 11th waits, even with the right password, and says for how long.
        answer = attempt(client, ADMIN_PASSWORD)
        assert answer.status_code == 429
        assert "Too many wrong passwords. Wait 2 seconds, then try again." in html.unescape(answer.text)
        assert auth.COOKIE not in answer.cookies
        clock.now += 2
        # Once the wait is over, a wrong password counts again, and the next wait is longer.
        assert attempt(client, "still wrong").status_code == 401
        answer = attempt(client, ADMIN_PASSWORD)
        assert answer.status_code == 429 and "Wait 4 seconds" in answer.text
        clock.now += 3
        assert attempt(client, ADMIN_PASSWORD).status_code == 429  # not yet
        clock.now += 1
        answer = attempt(client, ADMIN_PASSWORD)
        assert answer.status_code == 303 and answer.headers["location"] == "/"
        assert client.get("/sources").status_code == 200
        # Success starts the count again.
        assert attempt(client, "wrong again").status_code == 401
        assert attempt(client, ADMIN_PASSWORD).status_code == 303


# --- sessions, redirects, cookies ------------------------------------------------------


def test_no_session_fixation_and_logout_ends_the_session(make_relay: Any, tmp_path: Path) -> None:
    write_sources(tmp_path / "recipes")
    relay: RelayServer = make_relay()
    planted = "planted-by-someone-else-0123456789"
    with httpx.Client(base_url=relay.url, timeout=30, cookies={auth.COOKIE: planted}) as client:
        assert client.get("/sources").status_code == 303  # a made-up cookie is no session
        answer = attempt(client, ADMIN_PASSWORD)
        assert answer.status_code == 303
        first = answer.cookies[auth.COOKIE]
        assert first != planted
        assert client.get("/sources").status_code == 200
        # Logging in again (same browser) starts another session.
        second = attempt(client, ADMIN_PASSWORD).cookies[auth.COOKIE]
        assert second not in (first, planted)
    with httpx.Client(base_url=relay.url, timeout=30, cookies={auth.COOKIE: second}) as client:
        page = client.get("/sources")
        assert page.status_code == 200
        csrf = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
        assert csrf
        answer = client.post("/logout", data={"csrf_token": csrf.group(1)})
        assert answer.status_code == 303 and answer.headers["location"] == "/login"
    # The old cookie, kept by someone (a copy of the browser's cookies), no longer works.
    with httpx.Client(base_url=relay.url, timeout=30, cookies={auth.COOKIE: second}) as client:
        answer = client.get("/sources")
        assert answer.status_code == 303 and answer.headers["location"].startswith("/login")
        assert client.post("/secrets", data={"name": "X", "value": "y"}).status_code == 401


@pytest.mark.parametrize("target", ["https://evil.example", "//evil.example", "/\\evil.example",
                                    "\\\\evil.example", "/\t/evil.example", "https:evil.example",
                                    "javascript:alert(1)", " //evil.example", "evil.example"])
def test_no_open_redirect_after_login(make_relay: Any, tmp_path: Path, target: str) -> None:
    write_sources(tmp_path / "recipes")
    relay: RelayServer = make_relay()
    with httpx.Client(base_url=relay.url, timeout=30) as client:
        form = client.get("/login", params={"next": target}).text
        assert re.search(r'name="next" value="/"', form), "the form carries the safe target"
        answer = client.post("/login", data={"name": "admin", "password": ADMIN_PASSWORD, "next": target,
                                             "login_token": login_form_token(client)})
        assert answer.status_code == 303 and answer.headers["location"] == "/"
        # A path on this site is kept, with its query.
        answer = client.post("/login", data={"name": "admin", "password": ADMIN_PASSWORD,
                                             "next": "/sources/tikkl?x=1",
                                             "login_token": login_form_token(client)})
        assert answer.headers["location"] == "/sources/tikkl?x=1"


def cookie_flags(answer: httpx.Response, name: str) -> set[str]:
    """The attributes of the cookie ``name`` the answer sets: ``httponly``, ``samesite=lax``, ..."""
    for header in answer.headers.get_list("set-cookie"):
        if header.startswith(name + "="):
            flags = {part.strip().lower() for part in header.split(";")[1:]}
            return {flag if flag.startswith("samesite=") else flag.split("=")[0] for flag in flags}
    raise AssertionError(f"no {name} cookie set")


def login_over(url: str, headers: dict[str, str]) -> tuple[httpx.Response, httpx.Response]:
    """GET the login form and POST it with ``headers`` on both; cookies passed by hand."""
    with httpx.Client(base_url=url, timeout=30, headers=headers) as client:
        form = client.get("/login")
        token = re.search(r'name="login_token" value="([^"]+)"', form.text)
        assert token
        answer = client.post("/login", data={"name": "admin", "password": ADMIN_PASSWORD, "next": "/",
                                             "login_token": token.group(1)},
                             headers={"Cookie": f"relay_login={token.group(1)}"})
        assert answer.status_code == 303, answer.text
        return form, answer


@pytest.mark.slow
@pytest.mark.parametrize("trusted", [True, False])
def test_cookies_are_httponly_samesite_and_secure_behind_https(tmp_path: Path, trusted: bool) -> None:
    """``relay serve`` behind a proxy: Secure when the trusted proxy says https, never otherwise."""
    write_sources(tmp_path / "recipes")
    env = {k: v for k, v in os.environ.items() if not k.startswith("RELAY_")}
    env.update(RELAY_RECIPES=str(tmp_path / "recipes"), RELAY_DB=str(tmp_path / "relay.db"),
               RELAY_DATA=str(tmp_path / "data"), RELAY_ADMIN_PASSWORD=ADMIN_PASSWORD,
               RELAY_FORWARDED_ALLOW_IPS="127.0.0.1" if trusted else "192.0.2.1")
    relay = RelayProcess(tmp_path, free_port(), env)
    try:
        form, answer = login_over(relay.url, {})
        assert cookie_flags(answer, auth.COOKIE) >= {"httponly", "samesite=lax", "path"}
        assert "secure" not in cookie_flags(answer, auth.COOKIE)
        assert cookie_flags(form, "relay_login") >= {"httponly", "samesite=strict"}
        form, answer = login_over(relay.url, {"X-Forwarded-Proto": "https", "X-Forwarded-For": "203.0.113.9"})
        flags = cookie_flags(answer, auth.COOKIE)
        assert flags >= {"httponly", "samesite=lax"}
        assert ("secure" in flags) is trusted
        assert ("secure" in cookie_flags(form, "relay_login")) is trusted
    finally:
        relay.terminate()


# --- relay user ------------------------------------------------------------------------


def run(*args: str, input: str | None = None) -> Result:
    return CliRunner().invoke(cli, list(args), input=input)


def plain_error(result: Result, *words: str) -> None:
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    for word in words:
        assert word in result.output, result.output


@pytest.fixture
def db(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    for name in list(os.environ):
        if name.startswith("RELAY_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    yield str(tmp_path / "relay.db")


def test_relay_user_commands(db: str) -> None:
    plain_error(run("user", "list", "--db", db), "there is no database")
    result = run("user", "add", "alice", "--db", db, input="alice's long password\n")
    assert result.exit_code == 0, result.output
    assert "Account alice added" in result.output
    plain_error(run("user", "add", "alice", "--db", db, input="another password\n"),
                "already an account named alice", "relay user password alice")
    plain_error(run("user", "add", "bob", "--db", db, input="short\n"), "at least 8 characters")
    plain_error(run("user", "add", "bad name!", "--db", db, input="long enough password\n"),
                "cannot be an account name")
    assert run("user", "add", "bob@example.org", "--db", db, input="bob's long password\n").exit_code == 0
    listed = run("user", "list", "--db", db)
    assert [line.split("\t")[0] for line in listed.output.splitlines()] == ["alice", "bob@example.org"]
    assert "password" not in listed.output.split("\t", 1)[0]
    result = run("user", "password", "alice", "--db", db, input="a brand new password\n")
    assert result.exit_code == 0 and "logged out everywhere" in result.output
    plain_error(run("user", "password", "carol", "--db", db, input="whatever password\n"),
                "no account named carol")
    plain_error(run("user", "password", "alice", "--db", db, input="short\n"), "at least 8 characters")
    assert run("user", "delete", "bob@example.org", "--db", db).exit_code == 0
    plain_error(run("user", "delete", "bob@example.org", "--db", db), "no account named bob@example.org")
    plain_error(run("user", "delete", "alice", "--db", db), "only account")
    with closing(sqlite3.connect(db)) as conn:
        hashes = [r[0] for r in conn.execute("SELECT password_hash FROM users")]
    assert len(hashes) == 1 and hashes[0].startswith("$argon2id$")
    assert "brand new" not in hashes[0]


def test_relay_user_against_a_running_relay(make_relay: Any, tmp_path: Path) -> None:
    write_sources(tmp_path / "recipes")
    relay: RelayServer = make_relay()
    db = str(relay.settings.db)
    with closing(relay.login()) as admin:
        assert admin.get("/sources").status_code == 200
        assert run("user", "add", "helper", "--db", db, input="the helper's password\n").exit_code == 0
        with closing(relay.login("helper", "the helper's password")) as helper:
            assert helper.get("/sources").status_code == 200
            # A new password logs the account out everywhere at once.
            assert run("user", "password", "admin", "--db", db, input="admin's new password\n").exit_code == 0
            assert admin.get("/sources").status_code == 303
            assert helper.get("/sources").status_code == 200
            assert run("user", "delete", "helper", "--db", db).exit_code == 0
            assert helper.get("/sources").status_code == 303
    with closing(relay.login("admin", "admin's new password")) as admin:
        assert admin.get("/sources").status_code == 200
