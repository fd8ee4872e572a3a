"""The web UI: server-rendered pages over the same runtime that receives webhooks.

Each page lives in the module named after it (``dashboard``, ``sources``,
``recipes``, ``secrets``, ``log``; ``login`` and ``auth`` for accounts), and each
module lists its ``routes``. Templates and static files are in the top-level
``ui/`` folder (installed as ``relay.assets``). Every asset is served by relay
itself: the UI works without internet.

``AuthMiddleware`` (``auth.py``) guards every path but the public ones, so a page
added here is behind the login and CSRF checks without doing anything.
"""

from __future__ import annotations

import datetime
import json
import time
from pathlib import Path
from typing import Any

import jinja2
from markupsafe import Markup
from starlette.requests import Request
from starlette.responses import HTMLResponse
from starlette.routing import BaseRoute, Mount
from starlette.staticfiles import StaticFiles


def assets_dir() -> Path:
    """``relay/assets`` when installed from a wheel, the checkout's ``ui/`` otherwise."""
    package = Path(__file__).resolve().parent.parent
    installed = package / "assets"
    if (installed / "templates").is_dir():
        return installed
    return package.parent / "ui"


ASSETS = assets_dir()


def when(ts: float | None) -> str:
    """A timestamp as local date and time, to the second."""
    if ts is None:
        return ""
    return datetime.datetime.fromtimestamp(float(ts)).strftime("%Y-%m-%d %H:%M:%S")


def ago(ts: float | None, now: float | None = None) -> str:
    """'3 min ago', 'yesterday'-ish, in plain words."""
    if ts is None:
        return "never"
    seconds = max(0.0, (now or time.time()) - float(ts))
    if seconds < 60:
        return "just now"
    for size, unit in ((86400, "day"), (3600, "hour"), (60, "min")):
        if seconds >= size:
            n = int(seconds // size)
            return f"{n} {unit}{'s' if n != 1 and unit != 'min' else ''} ago"
    return "just now"


def pretty_json(value: Any) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False, sort_keys=False, default=str)


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(ASSETS / "templates"),
        autoescape=True,  # every value is escaped: payloads are shown, never run
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["when"] = when
    env.filters["ago"] = ago
    env.filters["pretty_json"] = pretty_json
    return env


templates = _environment()


def known_secrets(request: Request) -> set[str]:
    """Every secret value relay holds now (read afresh: one set a moment ago counts too),
    to hide wherever a page could show one."""
    from ..app import secret_values  # the app imports the UI: import it at call time

    runtime = request.state.runtime
    return secret_values(runtime.config, runtime.secrets)


def render(request: Request, template: str, status_code: int = 200, **context: Any) -> HTMLResponse:
    """Render a page with what every template may use: ``session``, ``csrf_token``, ``nav``."""
    session = request.scope.get("state", {}).get("session")
    base = {
        "request": request,
        "session": session,
        "csrf_token": session.csrf_token if session else "",
        "csrf_field": Markup('<input type="hidden" name="csrf_token" value="{}">').format(
            session.csrf_token if session else ""),
        "nav": context.pop("nav", ""),
        "public_url": request.state.runtime.settings.public_url,
    }
    html = templates.get_template(template).render({**base, **context})
    return HTMLResponse(html, status_code=status_code, headers={"Cache-Control": "no-store"})


def routes() -> list[BaseRoute]:
    from . import dashboard, log, login, recipes, secrets, sources

    found: list[BaseRoute] = []
    for module in (login, dashboard, sources, recipes, secrets, log):
        found.extend(module.routes)
    found.append(Mount("/static", StaticFiles(directory=ASSETS / "static"), name="static"))
    return found
