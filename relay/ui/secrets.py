"""The secrets page: set, replace and delete named secrets; values are never shown back.

A value goes from the form straight into the encrypted store (through the writer
thread) and the configuration is reloaded at once, so every ``${NAME}`` that uses
it applies without waiting for the watcher. Pages show only names, when each was
set, and which sources and recipes use it (read from the files, so a name that is
used but not set is listed too).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import re
import urllib.parse
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from ..errors import ConfigError
from ..recipes import SOURCES_FILE, recipe_files
from ..secrets import SecretStore
from ..yamlfile import SECRET_REF, load
from . import render

log = logging.getLogger("relay.ui")

MAX_VALUE = 64 * 1024  # a service-account key is ~2.5 KB; nothing real comes near this


@dataclasses.dataclass
class References:
    """Which sources and recipes name each ``${NAME}``, read from the files as they are."""

    sources: dict[str, set[str]] = dataclasses.field(default_factory=dict)  # secret -> sources
    recipes: dict[str, set[str]] = dataclasses.field(default_factory=dict)  # secret -> recipes

    def names(self) -> set[str]:
        return set(self.sources) | set(self.recipes)

    def of_source(self, source: str) -> list[str]:
        return sorted(name for name, users in self.sources.items() if source in users)

    def users(self, name: str) -> list[tuple[str, str]]:
        """``(kind, name)`` of everything using the secret ``name``, sources first."""
        return ([("source", s) for s in sorted(self.sources.get(name, ()))]
                + [("recipe", r) for r in sorted(self.recipes.get(name, ()))])


def names_in(value: Any) -> set[str]:
    """Every ``${NAME}`` in the strings of a loaded YAML value (comments are not values)."""
    if isinstance(value, str):
        return set(SECRET_REF.findall(value))
    if isinstance(value, Mapping):
        return set().union(*(names_in(v) for v in value.values()))
    if isinstance(value, list):
        return set().union(*(names_in(v) for v in value))
    return set()


def names_in_text(text: str) -> set[str]:
    """For a file that does not parse: ``${NAME}``s outside ``#`` comments, roughly."""
    return set(SECRET_REF.findall("\n".join(re.sub(r"(^|\s)#.*$", "", line) for line in text.splitlines())))


def _read(path: Path) -> tuple[Any, str | None]:
    """The file's YAML, or (None, its text) when it does not parse."""
    try:
        return load(path), None
    except ConfigError:
        try:
            return None, path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return None, ""


def scan_references(folder: Path) -> References:
    """Read sources.yaml and every recipe for ``${NAME}``s (file reads: run it in a thread)."""
    refs = References()

    def add(table: dict[str, set[str]], names: Iterable[str], user: str) -> None:
        for name in names:
            table.setdefault(name, set()).add(user)

    path = folder / SOURCES_FILE
    if path.exists():
        data, text = _read(path)
        if isinstance(data, Mapping):
            for source, entry in data.items():
                add(refs.sources, names_in(entry), str(source))
        elif text is not None:
            add(refs.sources, names_in_text(text), SOURCES_FILE)
    for recipe in recipe_files(folder):
        name = recipe.relative_to(folder).with_suffix("").as_posix()
        data, text = _read(recipe)
        add(refs.recipes, names_in(data) if text is None else names_in_text(text), name)
    return refs


async def references(request: Request) -> References:
    return await asyncio.to_thread(scan_references, Path(request.state.runtime.settings.recipes))


def where_set(name: str, stored: set[str], environ: Mapping[str, str]) -> str:
    """``stored``, ``environment`` or ``missing``: where relay finds ``${name}`` (store first)."""
    if name in stored:
        return "stored"
    if environ.get(name):
        return "environment"
    return "missing"


def user_states(request: Request, users: list[tuple[str, str]]) -> list[dict[str, Any]]:
    """Each user of a secret with whether it works now (after the reload)."""
    config = request.state.runtime.config
    states = []
    for kind, name in users:
        thing = config.sources.get(name) if kind == "source" else config.recipes.get(name)
        error = getattr(thing, "error", None) if thing is not None else None
        states.append({"kind": kind, "name": name, "ok": thing is not None and error is None,
                       "error": error.located() if isinstance(error, ConfigError) else None})
    return states


def check(name: str, value: str) -> None:
    """:raises ConfigError: in plain words, when the form cannot be saved."""
    if not name:
        raise ConfigError("Give the secret a name, for example TITO_TOKEN: it is the NAME in ${NAME}.")
    SecretStore.check_name(name)
    if not value:
        raise ConfigError(f"The value for {name} is empty. Paste the secret itself, then save.")
    if len(value) > MAX_VALUE:
        raise ConfigError(f"That value is over {MAX_VALUE // 1024} KB, far longer than any key or "
                          "token: check that you pasted the right thing.")


async def secrets_page(request: Request, *, status_code: int = 200, error: str | None = None,
                       name: str | None = None) -> Response:
    runtime = request.state.runtime
    rows = await runtime.readers.run(lambda s: s.secret_names())
    refs = await references(request)
    stored = {str(r["name"]) for r in rows}
    environ = runtime.secrets.environ
    params = request.query_params
    flash = None
    if params.get("saved"):
        saved = params["saved"]
        flash = {"kind": "saved", "name": saved, "users": user_states(request, refs.users(saved))}
    elif params.get("deleted"):
        deleted = params["deleted"]
        flash = {"kind": "deleted", "name": deleted, "users": user_states(request, refs.users(deleted)),
                 "still": where_set(deleted, stored, environ)}
    referenced = sorted(refs.names() - stored)
    return render(
        request, "secrets.html", status_code=status_code, nav="secrets", title="Secrets",
        stored=[{"name": r["name"], "updated_at": r["updated_at"], "users": refs.users(str(r["name"]))}
                for r in rows],
        missing=[{"name": n, "users": refs.users(n)} for n in referenced if not environ.get(n)],
        from_env=[{"name": n, "users": refs.users(n)} for n in referenced if environ.get(n)],
        flash=flash, error=error,
        name=name if name is not None else params.get("name", "")[:128],
    )


async def set_secret(request: Request) -> Response:
    runtime = request.state.runtime
    form = await request.form()
    name = str(form.get("name", "")).strip()[:200]
    # A pasted value often gains a space or a line break at either end; none is meant.
    value = str(form.get("value", "")).strip()
    try:
        check(name, value)
    except ConfigError as e:
        # The value is never sent back, not even in the refilled form.
        return await secrets_page(request, status_code=400, error=e.message, name=name)
    token = runtime.secrets.fernet.encrypt(value.encode("utf-8"))
    await runtime.writer.run(lambda s: s.put_secret(name, token))
    runtime.reload()  # sources and recipes using ${name} apply now, not at the next watch
    log.info("secret %s set in the web UI by %s", name, request.state.session.user)
    return RedirectResponse("/secrets?" + urllib.parse.urlencode({"saved": name}), status_code=303)


async def delete_secret(request: Request) -> Response:
    runtime = request.state.runtime
    name = request.path_params["name"]
    deleted = await runtime.writer.run(lambda s: s.delete_secret(name))
    if not deleted:
        return await secrets_page(request, status_code=404,
                                  error=f"There is no stored secret named {name} (it may have been "
                                        "deleted already).")
    runtime.reload()
    log.info("secret %s deleted in the web UI by %s", name, request.state.session.user)
    return RedirectResponse("/secrets?" + urllib.parse.urlencode({"deleted": name}), status_code=303)


routes = [
    Route("/secrets", secrets_page, methods=["GET"]),
    Route("/secrets", set_secret, methods=["POST"]),
    Route("/secrets/{name}/delete", delete_secret, methods=["POST"]),
]
