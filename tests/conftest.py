"""Shared fixtures: a real HTTP sink, and relay itself served over loopback.

Nothing here mocks relay's own code. ``Sink`` is a small threaded HTTP server that
records what it receives and answers what a test tells it to; ``RelayServer``
runs the real app under uvicorn in a thread, on a free port, against real SQLite
files in ``tmp_path``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from hypothesis import settings

from relay.app import create_app
from relay.settings import Settings
from relay.sources import PLATFORMS
from relay.yamlfile import SECRET_REF

# Hypothesis: the same examples on every run (CI is repeatable), unless RELAY_FUZZ=N
# asks for a longer fuzzing run: N times the examples, new ones each time.
FUZZ_SCALE = max(1, int(os.environ.get("RELAY_FUZZ", "1") or 1))
settings.register_profile("relay", derandomize=FUZZ_SCALE == 1, database=None)
settings.load_profile("relay")

SAMPLES = Path(__file__).parent / "samples"
ROOT = Path(__file__).parent.parent


def shipped_secret_names(path: Path) -> list[str]:
    """The ``${NAME}``s a shipped YAML file uses (its comments skipped)."""
    text = "\n".join(line.split("#")[0] for line in path.read_text().splitlines())
    return sorted(set(SECRET_REF.findall(text)))


def shipped_secrets() -> dict[str, str]:
    """A value for every secret the shipped recipes folder names, shaped the way each
    destination checks it at load (a real service-account key, a Mailchimp key with its
    data centre, a webhook URL)."""
    names: set[str] = set()
    for path in sorted((ROOT / "recipes").glob("*.yaml")):
        names |= set(shipped_secret_names(path))
    values = {n: f"value-for-{n.lower()}-0123456789" for n in names}
    shaped = {
        "MAILCHIMP_API_KEY": "0123456789abcdef0123456789abcdef-us14",
        "SLACK_WEBHOOK_URL": "https://hooks.slack.com/services/T0000/B0000/XXXXXXXXXXXXXXXXXXXXXXXX",
    }
    values.update({k: v for k, v in shaped.items() if k in values})
    for name in values:
        if name.endswith("_URL") and name not in shaped:
            values[name] = f"https://crm.example.com/{name.lower()}"
    if "GOOGLE_SERVICE_ACCOUNT" in values:
        from fakes.google import service_account_key
        values["GOOGLE_SERVICE_ACCOUNT"] = json.dumps(
            service_account_key("https://oauth2.googleapis.com/token")[0])
    return values


def sample(name: str) -> bytes:
    return (SAMPLES / name).read_bytes()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(predicate: Callable[[], Any], timeout: float = 20.0, interval: float = 0.05) -> Any:
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        time.sleep(interval)


# --- the sink ---------------------------------------------------------------------


@dataclasses.dataclass
class Received:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    at: float

    def json(self) -> Any:
        return json.loads(self.body)


@dataclasses.dataclass
class Reply:
    status: int = 200
    body: bytes = b'{"ok":true}'
    headers: dict[str, str] = dataclasses.field(default_factory=dict)
    delay: float = 0.0


class Sink:
    """A real HTTP server on 127.0.0.1 that records requests.

    ``replies`` is consumed one per request; when empty, ``default`` answers.
    """

    def __init__(self) -> None:
        self.received: list[Received] = []
        self.replies: list[Reply] = []
        self.default = Reply()
        self.lock = threading.Lock()
        sink = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _handle(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length) if length else b""
                with sink.lock:
                    reply = sink.replies.pop(0) if sink.replies else sink.default
                if reply.delay:
                    time.sleep(reply.delay)
                with sink.lock:
                    sink.received.append(Received(
                        self.command, self.path, {k.lower(): v for k, v in self.headers.items()},
                        body, time.time()))
                self.send_response(reply.status)
                for k, v in reply.headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(reply.body)))
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(reply.body)

            do_POST = do_PUT = do_PATCH = do_DELETE = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def bodies(self) -> list[Any]:
        with self.lock:
            return [r.json() for r in self.received]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def sink() -> Iterator[Sink]:
    s = Sink()
    yield s
    s.close()


# --- raw TCP servers, for what a proper HTTP server will not do --------------------


class RawServer:
    """A TCP server on 127.0.0.1 that hands each connection to a thread of its own.

    ``accepted(conn)`` runs in the accepting thread, in the order connections
    arrive, and returns what serves that connection. ``close()`` ends the accept
    loop (it wakes every 0.2 s to look) and closes the listener.
    """

    def __init__(self, scheme: str = "http") -> None:
        self.lock = threading.Lock()
        self.closing = threading.Event()
        self.listener = socket.create_server(("127.0.0.1", 0), backlog=64)
        self.listener.settimeout(0.2)
        self.url = f"{scheme}://127.0.0.1:{self.listener.getsockname()[1]}"
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def accepted(self, conn: socket.socket) -> Callable[[], None]:
        raise NotImplementedError

    def _accept(self) -> None:
        while not self.closing.is_set():
            try:
                conn, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=self.accepted(conn), daemon=True).start()

    def close(self) -> None:
        self.closing.set()
        self.listener.close()
        self.thread.join(timeout=10)


def read_request(conn: socket.socket, buffer: bytes = b"") -> tuple[bytes, bytes, bytes] | None:
    """One HTTP/1.1 request from ``conn`` (after what ``buffer`` already holds):
    ``(head, body, what came after it)``, the body as long as its Content-Length;
    None when the client closes first."""
    while b"\r\n\r\n" not in buffer:
        chunk = conn.recv(65536)
        if not chunk:
            return None
        buffer += chunk
    head, _, rest = buffer.partition(b"\r\n\r\n")
    length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")[1:]
                   if line.lower().startswith(b"content-length:")), 0)
    while len(rest) < length:
        chunk = conn.recv(65536)
        if not chunk:
            return None
        rest += chunk
    return head, rest[:length], rest[length:]


# --- relay ----------------------------------------------------------------------


SECRETS = {
    "tikkl": "tikkl-secret-1",
    "tito": "tito-token-1",
    "quicket": "quicket-url-token-0123456789",
    "openticket": "5aK2HMgcUlDCWLuC3KWa",
    "webconnex": "webconnex-signing-secret",
    "standard_webhooks": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
    "hmac": "generic-secret",
}


def write_sources(folder: Path, extra: str = "") -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "sources.yaml").write_text(f"""\
tikkl:
  platform: tikkl
  secrets: ["{SECRETS['tikkl']}"]
tito:
  platform: tito
  secrets: ["another-event-token", "{SECRETS['tito']}"]
quicket:
  platform: quicket
  token: {SECRETS['quicket']}
openticket:
  platform: openticket
  nonce: {SECRETS['openticket']}
webconnex:
  platform: webconnex
  secrets: ["{SECRETS['webconnex']}"]
svix:
  platform: standard_webhooks
  secrets: ["{SECRETS['standard_webhooks']}"]
custom:
  platform: hmac
  secrets: ["{SECRETS['hmac']}"]
  header: X-Custom-Signature
  prefix: "sha256="
  type_path: kind
  dedup_path: id
{extra}""")


def sign(source: str, platform: str, body: bytes, *, secret: str | None = None,
         now: float | None = None, msg_id: str = "msg_1", config: dict[str, Any] | None = None,
         ) -> tuple[str, dict[str, str]]:
    """(path, headers) for posting ``body`` to ``source`` signed the platform's way."""
    secret = secret or SECRETS[platform]
    cfg = config or ({"header": "X-Custom-Signature", "prefix": "sha256="} if platform == "hmac" else {})
    signer = PLATFORMS[platform]([secret], cfg)
    signed = signer.sign(body, secret=secret, now=time.time() if now is None else now, msg_id=msg_id)
    path = f"/hooks/{source}" + (f"/{signed.token}" if signed.token else "")
    return path, {"Content-Type": "application/json", **signed.headers}


ADMIN_PASSWORD = "correct horse battery"
CSRF_FIELD = re.compile(r'name="csrf_token" value="([^"]+)"')
LOGIN_TOKEN = re.compile(r'name="login_token" value="([^"]+)"')


def login_form_token(client: httpx.Client) -> str:
    page = client.get("/login")
    found = LOGIN_TOKEN.search(page.text)
    assert found, page.text
    return found.group(1)


class UIClient(httpx.Client):
    """An httpx client with a web UI session; ``csrf`` is the session's token."""

    def __init__(self, base_url: str, name: str, password: str) -> None:
        super().__init__(base_url=base_url, timeout=30)
        response = self.post("/login", data={"name": name, "password": password, "next": "/",
                                              "login_token": login_form_token(self)})
        assert response.status_code == 303, response.text
        found = CSRF_FIELD.search(self.get("/").text)
        assert found
        self.csrf = found.group(1)
        self.headers["X-CSRF-Token"] = self.csrf


class RelayServer:
    """The real relay app under uvicorn, in a thread, on a free loopback port."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(create_app(settings), host="127.0.0.1", port=self.port,
                                log_level="warning", lifespan="on")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        wait_until(lambda: self.server.started, timeout=30)
        self.client = httpx.Client(base_url=self.url, timeout=30)

    def post(self, path: str, body: bytes, headers: dict[str, str]) -> httpx.Response:
        return self.client.post(path, content=body, headers=headers)

    def send(self, source: str, platform: str, body: bytes, **kw: Any) -> httpx.Response:
        path, headers = sign(source, platform, body, **kw)
        return self.post(path, body, headers)

    def db(self) -> Any:
        from relay.store import Store
        return Store(self.settings.db)

    def rows(self, sql: str, params: Any = ()) -> list[dict[str, Any]]:
        store = self.db()
        try:
            return store.rows(sql, params)
        finally:
            store.close()

    def settled(self, count: int, status: str | None = None,
                timeout: float = 20) -> list[dict[str, Any]]:
        """Wait until there are ``count`` deliveries, all finished (or all ``status``)."""
        def check() -> list[dict[str, Any]] | None:
            rows = self.rows("SELECT * FROM deliveries ORDER BY id")
            done = [r for r in rows
                    if (r["status"] == status if status else r["status"] in ("delivered", "dead"))]
            return rows if len(rows) == count and len(done) == count else None
        return wait_until(check, timeout=timeout)  # type: ignore[no-any-return]

    def attempts(self, delivery_id: int) -> list[dict[str, Any]]:
        """Every recorded attempt of one delivery, in order."""
        return self.rows("SELECT * FROM attempts WHERE delivery_id = ? ORDER BY number", [delivery_id])

    def login(self, name: str = "admin", password: str | None = None) -> UIClient:
        """An HTTP client logged in to the web UI, which sends the CSRF token itself."""
        return UIClient(self.url, name, ADMIN_PASSWORD if password is None else password)

    def stop(self) -> None:
        self.client.close()
        self.server.should_exit = True
        self.thread.join(timeout=30)


@pytest.fixture
def make_relay(tmp_path: Path) -> Iterator[Callable[..., RelayServer]]:
    started: list[RelayServer] = []

    def make(**overrides: Any) -> RelayServer:
        values: dict[str, Any] = dict(
            recipes=tmp_path / "recipes", db=tmp_path / "relay.db", data=tmp_path / "data",
            retry_base=0.2, retry_max_delay=2.0, delivery_timeout=5.0,
            admin_password=ADMIN_PASSWORD,
            # Sinks and fake vendor APIs listen on 127.0.0.1.
            allow_networks="loopback",
        )
        values.update(overrides)
        server = RelayServer(Settings.from_env(environ={}, **values))
        started.append(server)
        return server

    yield make
    for server in started:
        server.stop()


def write_recipe(folder: Path, name: str, text: str) -> Path:
    path = folder / f"{name}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def quicket_http_recipe(folder: Path, url: str, name: str = "crm") -> None:
    """sources.yaml, and a recipe sending each Quicket checkout's reference and email to ``url``."""
    write_sources(folder)
    write_recipe(folder, name, f"""\
source: quicket
events: ["checkout_completed"]
fields:
  reference: reference
  email: email
to:
  - type: http
    url: {url}
""")


# --- relay as a real process ------------------------------------------------------


class RelayProcess:
    """``relay serve`` as a separate OS process (for kill -9 tests)."""

    def __init__(self, tmp: Path, port: int, env: dict[str, str]) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.log = open(tmp / f"relay-{port}-{time.time_ns()}.log", "wb")
        # Sinks and fake vendor APIs listen on 127.0.0.1.
        env = {"RELAY_ALLOW_NETWORKS": "loopback", **env}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "relay", "serve", "--port", str(port)],
            cwd=tmp, env=env, stdout=self.log, stderr=subprocess.STDOUT,
        )
        try:
            wait_until(self.healthy, timeout=60, interval=0.1)
        except BaseException:
            self.kill()  # never leave a stray relay behind a failed start
            raise

    def healthy(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"relay exited with {self.proc.returncode}")
        with contextlib.suppress(httpx.HTTPError):
            return httpx.get(self.url + "/healthz", timeout=2).status_code == 200
        return False

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(timeout=30)
        self.log.close()

    def terminate(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=30)
        self.log.close()


# --- the web UI in a real browser ---------------------------------------------------


def missing(reason: str) -> None:
    """Skip for lack of a system tool; fail instead in CI (RELAY_TESTS_STRICT=1)."""
    import os
    if os.environ.get("RELAY_TESTS_STRICT") == "1":
        pytest.fail(reason)
    pytest.skip(reason)

CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    # Without these, Chromium keeps trying to reach Google's hosts (no internet here).
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
SCREENSHOTS = ROOT / "artifacts" / "screenshots"


def chromium_path() -> str | None:
    import shutil
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Debian's Chromium, headless, driven by Playwright (never a downloaded browser).

    Per module: Playwright's sync API keeps an asyncio loop marked running in this
    thread while it is started, which would break asyncio.run() in later test files.
    """
    path = chromium_path()
    if path is None:
        missing("Debian's chromium is not installed (apt-get install chromium); .ci/run installs it")
    from playwright.sync_api import sync_playwright
    with sync_playwright() as p:
        launched = p.chromium.launch(executable_path=path, args=CHROMIUM_ARGS)
        yield launched
        launched.close()


@dataclasses.dataclass
class Browsing:
    """One browser page logged in to one relay, and what its console complained about."""

    page: Any
    relay: RelayServer
    problems: list[str]

    def go(self, path: str) -> Any:
        return self.page.goto(self.relay.url + path)

    def screenshot(self, name: str) -> Path:
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        path = SCREENSHOTS / f"{name}.png"
        self.page.screenshot(path=str(path), full_page=True)
        return path


def open_ui(browser: Any, relay: RelayServer, *, login: bool = True) -> Browsing:
    """A new browser context (its own cookies) on ``relay``, logged in as admin."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.set_default_timeout(20_000)
    page = context.new_page()
    problems: list[str] = []
    # A CSP violation or a script error shows up in the console: the tests fail on it.
    # (A page answered with an error status, e.g. 401 for a wrong password, is not one.)
    page.on("console", lambda m: problems.append(m.text) if m.type == "error"
            and "the server responded with a status of" not in m.text else None)
    page.on("pageerror", lambda e: problems.append(str(e)))
    browsing = Browsing(page, relay, problems)
    if login:
        browsing.go("/login")
        page.fill("input[name=name]", "admin")
        page.fill("input[name=password]", ADMIN_PASSWORD)
        page.click("button[type=submit]")
        page.wait_for_url(relay.url + "/")
    return browsing
