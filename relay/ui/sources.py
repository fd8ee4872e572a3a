"""The sources pages: each source's webhook URL, setup steps, activity and a test button.

"Send a test event" signs a sample payload the platform's own way with the
source's own secret and posts it over HTTP to relay's own ``/hooks/<source>``, so
the test goes through the real ingest path (the signature is really checked, the
event is really stored and routed) exactly as the platform's would.

Secrets are never rendered: a URL token (Quicket) is shown as a placeholder with
the name of the secret that holds it.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import logging
import re
import secrets
import time
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ..recipes import redact
from ..sources import PLATFORMS, Platform, Source
from ..store import Store
from . import known_secrets, render
from .secrets import References, references, where_set

log = logging.getLogger("relay.ui")

SAMPLES = Path(__file__).resolve().parent.parent / "sources" / "samples"
RECENT = 20  # events and rejections listed on a source's page


# --- setup steps, per platform ---------------------------------------------------------
#
# In each step, `...` is shown as code and {secret} as the name of the source's
# secret (a link to set it). Kept in line with README's "Platform setup" and
# ../shared/docs/platforms.md.


@dataclasses.dataclass(frozen=True)
class Setup:
    label: str  # the platform as organisers know it
    secret: str  # the usual name of its secret, when sources.yaml does not name one
    steps: tuple[str, ...]
    note: str = ""


SETUP: dict[str, Setup] = {
    "tikkl": Setup("Tikkl", "TIKKL_SECRET", (
        "In Tikkl, open Organization Settings > Webhook and tick “Enable webhook”.",
        "Paste the webhook URL above into “Webhook URL”.",
        "Type a long random text into “Webhook Secret”, and save the same text here as the secret {secret}.",
        "In each campaign's settings, turn on webhook notifications and choose “New sales transaction” "
        "(event type `transaction`) and/or “Ticket purchase” (event type `ticket`).",
    ), "relay checks the `X-Tikkl-Signature` header. If Tikkl's webhooks are refused with “the header "
       "holds the webhook secret itself”, add `signature: secret` to this source in sources.yaml."),
    "tito": Setup("Tito", "TITO_TOKEN", (
        "In Tito, open your event's Settings > Webhook Endpoints and add the webhook URL above.",
        "Tick the triggers you want, for example `ticket.completed` and `registration.finished`.",
        "Copy the event's security token (Settings > Webhooks) and save it here as the secret {secret}.",
        "Several Tito events can send here: each has its own token, so list one secret per event "
        "under `secrets:` in sources.yaml.",
    ), "relay checks Tito's `Tito-Signature` header, and the newer timestamped `X-Tito-Signature` "
       "(refused when more than 5 minutes old: keep this server's clock right)."),
    "quicket": Setup("Quicket", "QUICKET_TOKEN", (
        "Make a long random token, for example with "
        "`python3 -c \"import secrets; print(secrets.token_urlsafe(32))\"`, and save it here as the "
        "secret {secret}.",
        "In Quicket, open your event's Integrate > Web hooks page. For each hook you want, paste the "
        "webhook URL above and add your token at its end, after the last `/`.",
        "Click “Send test” in Quicket: relay stores Quicket's sample purchase as a test event and "
        "does not forward it.",
    ), "Quicket does not sign its webhooks: the token in the URL is the proof, so keep it secret "
       "and use an https address."),
    "openticket": Setup("OpenTicket (Weeztix, Eventix)", "OPENTICKET_NONCE", (
        "In the OpenTicket webhook dashboard, click Create new and paste the webhook URL above as "
        "the destination URL. Choose the resource and trigger you want (for example order, paid).",
        "Copy the webhook's `nonce` and save it here as the secret {secret}.",
    ), "OpenTicket retries a webhook only after a 4xx answer, so relay answers 429 (“try again "
       "later”) to OpenTicket whenever it cannot store an event."),
    "webconnex": Setup("Webconnex (RegFox, TicketSpice, GivingFuel, Redpanda)", "WEBCONNEX_SECRET", (
        "In Webconnex, open Extras > Integrations > Add Integration > Webhooks.",
        "Paste the webhook URL above as the Endpoint URL and choose the events.",
        "Copy the webhook's Signing Secret and save it here as the secret {secret}.",
        "“Send a Test” in Webconnex sends a `test` event: relay stores it and forwards it only to "
        "recipes that list `test` in `events`.",
    )),
    "standard_webhooks": Setup("Standard Webhooks (Svix and others)", "", (
        "In the sending service, add an endpoint with the webhook URL above.",
        "Copy the endpoint's signing secret (it starts with `whsec_`) and save it here as the secret {secret}.",
    )),
    "stripe": Setup("Stripe", "", (
        "In Stripe, add a webhook endpoint with the webhook URL above and choose the events.",
        "Copy the endpoint's signing secret (it starts with `whsec_`) and save it here as the secret {secret}.",
    )),
    "github": Setup("GitHub", "", (
        "In GitHub, open Settings > Webhooks > Add webhook. Payload URL: the webhook URL above; "
        "content type: `application/json`.",
        "Type a long random text as the Secret, and save the same text here as the secret {secret}.",
    )),
    "shopify": Setup("Shopify", "", (
        "In Shopify, create a webhook in JSON format with the webhook URL above.",
        "Copy the key Shopify signs webhooks with and save it here as the secret {secret}.",
    )),
    "ticket_tailor": Setup("Ticket Tailor", "", (
        "In Ticket Tailor, add a webhook with the webhook URL above and choose the events.",
        "Copy the webhook's secret and save it here as the secret {secret}.",
    )),
    "hmac": Setup("A sender that signs its webhooks (HMAC)", "", (
        "In the sending service, set the webhook address to the webhook URL above.",
        "Save its signing secret here as the secret {secret}.",
        "This source's entry in sources.yaml says which header carries the signature and how it is "
        "made (the README's “Any other HMAC sender” lists the options).",
    )),
    "token": Setup("A sender that does not sign (token)", "", (
        "Make a long random token and save it here as the secret {secret}.",
        "In the sending service, set the webhook address to the webhook URL above, with the token "
        "where this source expects it (see below the URL).",
    )),
}


def setup_for(platform: str) -> Setup:
    return SETUP.get(platform) or Setup(platform or "Unknown platform", "", (
        "Set `platform:` for this source in sources.yaml: one of " + ", ".join(sorted(PLATFORMS)) + ".",
    ))


def default_secret(source: str) -> str:
    """A name to suggest for a source whose entry names no secret: ``my-shop`` -> ``MY_SHOP_SECRET``."""
    name = re.sub(r"[^A-Z0-9_]", "_", source.upper()) + "_SECRET"
    return "_" + name if name[0].isdigit() else name


STEP_PART = re.compile(r"(`[^`]+`|\{secret\})")


def step_parts(step: str, secret: str) -> list[tuple[str, str]]:
    """A step as ``(kind, text)`` parts: ``text``, ``code`` or ``secret`` (a link to set it)."""
    parts = []
    for piece in STEP_PART.split(step):
        if not piece:
            continue
        if piece == "{secret}":
            parts.append(("secret", secret))
        elif piece.startswith("`"):
            parts.append(("code", piece[1:-1]))
        else:
            parts.append(("text", piece))
    return parts


# --- what the pages show about a source ----------------------------------------------


def token_in_path(source: Source) -> bool:
    """Does this source's secret travel at the end of the URL (Quicket, token without header)?"""
    if source.platform is not None:
        return bool(source.platform.token_in_path)
    cls = PLATFORMS.get(source.platform_name)
    return bool(cls and cls.token_in_path)


def webhook_url(request: Request, source: Source) -> str:
    return f"{request.state.runtime.settings.public_url}/hooks/{urllib.parse.quote(source.name)}"


def secret_states(request: Request, source: Source, refs: References,
                  stored: dict[str, float]) -> list[dict[str, Any]]:
    environ = request.state.runtime.secrets.environ
    return [{"name": name, "where": where_set(name, set(stored), environ), "set_at": stored.get(name)}
            for name in refs.of_source(source.name)]


def describe_source(request: Request, source: Source, refs: References,
                    stored: dict[str, float]) -> dict[str, Any]:
    names = refs.of_source(source.name)
    setup = setup_for(source.platform_name)
    return {
        "name": source.name,
        "platform": source.platform_name,
        "label": setup.label,
        "ok": source.platform is not None,
        "error": source.error.located() if source.error else None,
        "url": webhook_url(request, source),
        "token_in_path": token_in_path(source),
        "token_header": (source.platform.config.get("header") if source.platform is not None
                         and source.platform_name == "token" else None),
        "secret_names": names,
        "secrets": secret_states(request, source, refs, stored),
    }


def _last_activity(store: Store, names: list[str]) -> dict[str, dict[str, Any]]:
    out = {}
    for name in names:
        out[name] = {
            "event": store.one("SELECT id, received_at, type, status, is_test FROM events"
                               " WHERE source = ? ORDER BY id DESC LIMIT 1", [name]),
            "rejection": store.one("SELECT id, received_at, status_code, reason FROM rejections"
                                   " WHERE source = ? ORDER BY id DESC LIMIT 1", [name]),
        }
    return out


def _unknown_rejections(store: Store, names: list[str]) -> list[dict[str, Any]]:
    """Refused webhooks for names not in sources.yaml: usually a typo in a URL."""
    marks = ",".join("?" * len(names))
    return store.rows(
        "SELECT source, COUNT(*) AS count, MAX(received_at) AS last FROM rejections"
        f" WHERE source NOT IN ({marks}) GROUP BY source ORDER BY last DESC LIMIT 10", names)


async def _stored(request: Request) -> dict[str, float]:
    rows = await request.state.runtime.readers.run(lambda s: s.secret_names())
    return {str(r["name"]): float(r["updated_at"]) for r in rows}


async def sources_page(request: Request) -> Response:
    runtime = request.state.runtime
    sources = runtime.config.sources
    names = list(sources)
    refs = await references(request)
    stored = await _stored(request)
    activity = await runtime.readers.run(lambda s: _last_activity(s, names))
    unknown = await runtime.readers.run(lambda s: _unknown_rejections(s, names))
    # A name from a URL may be a secret (a token pasted where the source name goes).
    hidden = known_secrets(request)
    for row in unknown:
        row["source"] = redact(str(row["source"]), hidden)
    rows = []
    for source in sources.values():
        row = describe_source(request, source, refs, stored)
        row.update(activity[source.name])
        rejection, event = row["rejection"], row["event"]
        if rejection is not None:
            rejection["reason"] = redact(str(rejection["reason"]), hidden)
        # The last request was refused: the platform's setup (or relay's) needs a look.
        row["failing"] = rejection is not None and (
            event is None or rejection["received_at"] > event["received_at"])
        rows.append(row)
    return render(request, "sources.html", nav="sources", title="Sources", sources=rows,
                  file_errors=[e.located() for e in sources.errors], unknown=unknown,
                  folder=str(runtime.settings.recipes))


async def source_page(request: Request, result: dict[str, Any] | None = None) -> Response:
    runtime = request.state.runtime
    name = request.path_params["name"]
    source = runtime.config.sources.get(name)
    if source is None:
        return render(request, "error.html", status_code=404, title="No such source",
                      message=f"There is no source named {name!r} in sources.yaml.")
    refs = await references(request)
    stored = await _stored(request)
    info = describe_source(request, source, refs, stored)
    setup = setup_for(source.platform_name)
    secret_name = info["secret_names"][0] if info["secret_names"] else setup.secret or default_secret(name)
    events = await runtime.readers.run(lambda s: s.rows(
        "SELECT id, received_at, type, status, is_test, duplicate_of FROM events WHERE source = ?"
        " ORDER BY id DESC LIMIT ?", [name, RECENT]))
    rejections = await runtime.readers.run(lambda s: s.rows(
        "SELECT id, received_at, status_code, reason, client FROM rejections WHERE source = ?"
        " ORDER BY id DESC LIMIT ?", [name, RECENT]))
    hidden = known_secrets(request)
    for rejection in rejections:
        rejection["reason"] = redact(str(rejection["reason"]), hidden)
    recipes = [{"name": r.name, "active": r.active, "enabled": r.enabled,
                "error": r.error.located() if r.error else None, "events": r.events}
               for r in runtime.config.recipes.for_source(name)]
    return render(
        request, "source.html", nav="sources", title=f"Source {name}", source=info, setup=setup,
        steps=[step_parts(step, secret_name) for step in setup.steps],
        note=step_parts(setup.note, secret_name) if setup.note else [],
        literal_secret=not info["secret_names"] and source.error is None,
        events=events, rejections=rejections, recipes=recipes, result=result)


# --- "Send a test event" -------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Sample:
    """A platform's sample payload, the headers that name its type, and what makes it new."""

    file: str
    headers: dict[str, str] = dataclasses.field(default_factory=dict)
    fresh: Callable[[dict[str, Any], str, float], None] = lambda body, unique, now: None


def _iso(now: float) -> str:
    return datetime.datetime.fromtimestamp(now, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")


def _fresh_tikkl(body: dict[str, Any], unique: str, now: float) -> None:
    body["orderId"] = f"TEST-{unique}"
    body["ticketId"] = f"TEST-{unique}-001"
    body["orderTimeUtc"] = _iso(now).replace(".000", "")


def _fresh_tito(body: dict[str, Any], unique: str, now: float) -> None:
    body["slug"] = f"test-{unique}"
    body["updated_at"] = _iso(now)


def _fresh_quicket(body: dict[str, Any], unique: str, now: float) -> None:
    body["reference"] = f"TEST-{unique}"


def _fresh_openticket(body: dict[str, Any], unique: str, now: float) -> None:
    body["guid"] = f"test-{unique}"  # OpenTicket-Dedupe-Key (the signed msg_id) is new too
    body["updated_at"] = _iso(now).replace(".000", "")


def _fresh_webconnex(body: dict[str, Any], unique: str, now: float) -> None:
    body["eventId"] = time.time_ns() // 1000


def _fresh_generic(body: dict[str, Any], unique: str, now: float) -> None:
    body["id"] = f"evt_test_{unique}"


SAMPLES_BY_PLATFORM: dict[str, Sample] = {
    "tikkl": Sample("tikkl.json", fresh=_fresh_tikkl),
    "tito": Sample("tito.json", {"X-Webhook-Name": "ticket.completed"}, _fresh_tito),
    "quicket": Sample("quicket.json", fresh=_fresh_quicket),
    "openticket": Sample("openticket.json", fresh=_fresh_openticket),
    "webconnex": Sample("webconnex.json", {"X-Webconnex-Event": "registration",
                                           "User-Agent": "Webconnex-Divvy"}, _fresh_webconnex),
    "github": Sample("generic.json", {"X-GitHub-Event": "ping"}, _fresh_generic),
    "shopify": Sample("generic.json", {"X-Shopify-Topic": "orders/create"}, _fresh_generic),
}
GENERIC = Sample("generic.json", fresh=_fresh_generic)


PLAIN_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def setting(platform: Platform, name: str) -> str | None:
    """A preset's class attribute (GitHub's type header) or the source's own option."""
    value = getattr(platform, name, None) or platform.config.get(name)
    return str(value) if value else None


def sample_request(platform: Platform, now: float) -> tuple[bytes, dict[str, str], str | None]:
    """``(body, headers, URL token)`` of a new sample event signed with the first secret."""
    sample = SAMPLES_BY_PLATFORM.get(platform.name, GENERIC)
    body: Any = json.loads((SAMPLES / sample.file).read_text(encoding="utf-8"))
    unique = f"{int(now)}-{secrets.token_hex(3)}"
    sample.fresh(body, unique, now)
    headers = {"Content-Type": "application/json", **sample.headers}
    if platform.name == "tito" and platform.config.get("scheme") == "timestamped":
        # Tito's newer platform wraps the object in an envelope whose id dedups.
        body = {"id": f"whe_{unique}", "webhook_event": "ticket.completed", "state": "delivered",
                "attempts": 1, "created_at": _iso(now), "data": body}
        headers["X-Tito-Webhook-Event"] = "ticket.completed"
    # The configurable platforms read the type and delivery id where sources.yaml says.
    type_header = setting(platform, "type_header")
    if type_header and type_header not in headers:
        headers[type_header] = str(body.get("type", "order.completed"))
    dedup_header = setting(platform, "dedup_header")
    if dedup_header:
        headers[dedup_header] = f"test-{unique}"
    type_path, dedup_path = setting(platform, "type_path"), setting(platform, "dedup_path")
    if type_path and PLAIN_KEY.match(type_path) and type_path not in body:
        body[type_path] = str(body.get("type", "order.completed"))
    if dedup_path and PLAIN_KEY.match(dedup_path):
        body[dedup_path] = f"test-{unique}"
    raw = json.dumps(body, indent=2, ensure_ascii=False).encode("utf-8")
    signed = platform.sign(raw, secret=platform.secrets[0], now=now, msg_id=f"test-{unique}")
    return raw, {**headers, **signed.headers}, signed.token


def own_address(request: Request) -> str:
    """Where this relay listens, as seen by the request's own connection."""
    server = request.scope.get("server")
    settings = request.state.runtime.settings
    host, port = (str(server[0]), int(server[1])) if server and server[1] else (settings.host, settings.port)
    host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


async def send_test(request: Request) -> Response:
    runtime = request.state.runtime
    name = request.path_params["name"]
    source = runtime.config.sources.get(name)
    if source is None:
        return await source_page(request)
    result = await post_test_event(request, source)
    return await source_page(request, result)


async def post_test_event(request: Request, source: Source) -> dict[str, Any]:
    """Sign and post a sample for ``source``; what happened, in plain words."""
    runtime = request.state.runtime
    if source.platform is None:
        message = source.error.message if source.error else "it is not configured"
        return {"ok": False, "headline": "The test event was not sent: this source is off.",
                "detail": message, "missing": True}
    body, headers, token = sample_request(source.platform, time.time())
    path = f"/hooks/{urllib.parse.quote(source.name)}"
    if token:
        path += "/" + urllib.parse.quote(token, safe="")
    address = own_address(request)
    try:
        # trust_env=False: a proxy from the environment must not see (or break) this loopback call.
        async with httpx.AsyncClient(base_url=address, timeout=30, trust_env=False) as client:
            response = await client.post(path, content=body, headers=headers)
    except httpx.HTTPError as e:
        log.warning("the test event for %r could not reach %s: %s", source.name, address, type(e).__name__)
        return {"ok": False, "headline": "The test event could not reach relay's webhook address.",
                "detail": f"relay tried {address}/hooks/{source.name} and got no answer "
                          f"({type(e).__name__}). Is something between relay and itself blocking it?"}
    try:
        answer = response.json()
    except ValueError:
        answer = {}
    if response.status_code != 200:
        reason = answer.get("error") if isinstance(answer, dict) else None
        return {"ok": False, "headline": f"relay refused the test event (HTTP {response.status_code}).",
                "detail": reason or response.text[:500]}
    event_id = int(answer.get("event", 0))
    status = str(answer.get("status", ""))
    event = await runtime.readers.run(lambda s: s.one("SELECT type, is_test FROM events WHERE id = ?",
                                                      [event_id]))
    event_type = str(event["type"]) if event else "?"
    recipes = [r.name for r in runtime.config.recipes.for_source(source.name)
               if r.active and event is not None and r.wants(event_type, bool(event["is_test"]))]
    log.info("test event %d (%s) sent to %r from the web UI by %s", event_id, status, source.name,
             request.state.session.user)
    if status == "accepted":
        return {"ok": True, "event": event_id, "type": event_type, "recipes": recipes,
                "headline": f"Accepted: relay stored the test event as event #{event_id} ({event_type}).",
                "detail": "These recipes run on it and deliver it like a real one: " + ", ".join(recipes) + "."
                if recipes else ""}
    if status == "ignored":
        return {"ok": True, "event": event_id, "type": event_type, "recipes": [],
                "headline": f"Stored as event #{event_id} ({event_type}), but nothing is sent.",
                "detail": f"No recipe of this source that is on takes {event_type} events. "
                          "Make one on the Recipes page to send such events somewhere."}
    return {"ok": True, "event": event_id, "type": event_type, "recipes": [],
            "headline": f"relay already had this event (event #{event_id}); it was not processed again.",
            "detail": "Send another test: each one gets a new id."}


routes = [
    Route("/sources", sources_page, methods=["GET"]),
    Route("/sources/{name}", source_page, methods=["GET"]),
    Route("/sources/{name}/test", send_test, methods=["POST"]),
]
