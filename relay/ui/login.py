"""The login and logout pages."""

from __future__ import annotations

import hmac
import math
import secrets

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from . import render
from .auth import COOKIE, Sessions, safe_next, set_cookie

LOGIN_COOKIE = "relay_login"


def login_form(request: Request, status_code: int = 200, *, error: str | None = None, name: str = "",
               target: str = "/", no_accounts: bool = False) -> Response:
    """The form, with a fresh token also set as a cookie: a login needs both (no login CSRF)."""
    token = secrets.token_urlsafe(24)
    response = render(request, "login.html", status_code=status_code, next=target, error=error,
                      name=name, no_accounts=no_accounts, login_token=token)
    response.set_cookie(LOGIN_COOKIE, token, max_age=3600, httponly=True, samesite="strict",
                        secure=request.url.scheme == "https", path="/login")
    return response


async def login_page(request: Request) -> Response:
    runtime = request.state.runtime
    no_accounts = not await runtime.readers.run(lambda s: s.users())
    return login_form(request, target=safe_next(request.query_params.get("next")),
                      no_accounts=no_accounts)


async def login(request: Request) -> Response:
    form = await request.form()
    name = str(form.get("name", ""))[:200].strip()
    password = str(form.get("password", ""))[:1000]
    target = safe_next(str(form.get("next", "")))
    sent = str(form.get("login_token", ""))
    expected = request.cookies.get(LOGIN_COOKIE, "")
    if not sent or not expected or not hmac.compare_digest(sent.encode(), expected.encode()):
        return login_form(request, 403, name=name, target=target,
                          error="The login form expired (or cookies are blocked). Try again.")
    sessions: Sessions = request.state.runtime.sessions
    client = request.client.host if request.client else "unknown"
    result = await sessions.login(name, password, client)
    if isinstance(result, float):
        if result > 0:
            error = (f"Too many wrong passwords. Wait {math.ceil(result)} seconds, then try again.")
            status = 429
        else:
            error = "That name and password do not match an account. Check both and try again."
            status = 401
        return login_form(request, status, error=error, name=name, target=target)
    token, _ = result
    response = RedirectResponse(target, status_code=303)
    set_cookie(response, request, token)
    response.delete_cookie(LOGIN_COOKIE, path="/login")
    return response


async def logout(request: Request) -> Response:
    session = request.state.session
    await request.state.runtime.sessions.end(session)
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(COOKIE, path="/")
    return response


routes = [
    Route("/login", login_page, methods=["GET"]),
    Route("/login", login, methods=["POST"]),
    Route("/logout", logout, methods=["POST"]),
]
