"""The recipes pages: the list, the editor (checking, live preview, field picker,
saving), new recipes from templates, and deleting.

Everything the editor shows comes from relay's own code on the unsaved text:
``load_recipe_text`` (the loader, so errors are those ``relay check`` would print,
at the same line), and ``run_recipe`` plus each destination's ``preview`` on a
stored event (what ``relay try`` does, and what routing would do). The preview
never sends anything.

Saving checks the text first and writes nothing if it has an error (a secret that
is not set yet is not such an error: the recipe is saved and stays off until the
secret is set, like the shipped examples). It refuses to overwrite a file that
changed on disk since the editor opened it (the page sends the SHA-256 of the text
it started from). The file is replaced atomically, exactly as typed, and the
recipes are reloaded at once.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import hashlib
import json
import logging
import os
import re
import tempfile
import time
import urllib.parse
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from ..destinations import DestinationContext, Pacers, destination_types
from ..errors import ConfigError, MappingError, RelayError, SecretMissing
from ..recipe_templates import template
from ..recipes import SOURCES_FILE, Recipe, load_recipe_text, recipe_files, redact
from ..routing import Filtered, meta_of, payload_of, run_recipe
from ..sources import Request as SourceRequest
from ..store import Store
from ..yamlfile import SECRET_REF
from . import known_secrets, pretty_json, render, templates, when

log = logging.getLogger("relay.ui")

NEW_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
# Names that are pages of their own under /recipes/.
RESERVED = frozenset({"new", "check", "preview", "events"})
MAX_TEXT = 256 * 1024  # a recipe is a few KB; this is surely a mistake
MAX_PAYLOAD = 4 * 1024 * 1024
RECENT_EVENTS = 20
NEW_FILE = "new"  # the stamp of a file that does not exist yet
# Looks like a URL and a token alike, so most options accept it (see check_text).
STAND_IN = "https://relay.invalid/unset-secret"

Handler = Callable[[Request], Awaitable[Response]]


# --- recipe files -----------------------------------------------------------------


def folder_of(request: Request) -> Path:
    return Path(request.state.runtime.settings.recipes)


def recipe_path(folder: Path, name: str) -> Path | None:
    """The file of recipe ``name``, or None when the name is refused.

    Only names of recipe files relay loads, or a new plain name (letters, digits,
    ``-`` and ``_``) in the folder itself: nothing a URL says can reach another file.
    """
    for path in recipe_files(folder):
        if path.relative_to(folder).with_suffix("").as_posix() == name:
            return path
    path = folder / f"{name}.yaml"
    if NEW_NAME.match(name) and name not in RESERVED and path.name != SOURCES_FILE:
        return path
    return None


NO_SUCH_RECIPE = ("There is no recipe with that name. Recipe names use letters, digits, '-' and '_'; "
                  "the Recipes page lists them all.")


class NoSuchRecipe(Exception):
    """A name in a URL or request that is not a recipe relay may edit."""


def path_of(request: Request, name: str) -> Path:
    """:raises NoSuchRecipe: (answered by ``not_found``)"""
    path = recipe_path(folder_of(request), name)
    if path is None:
        raise NoSuchRecipe(name)
    return path


def named(handler: Handler) -> Handler:
    """``handler`` answering 404, in plain words, for a name that is not an editable recipe."""
    @functools.wraps(handler)
    async def wrapped(request: Request) -> Response:
        try:
            return await handler(request)
        except NoSuchRecipe:
            if "application/json" in request.headers.get("content-type", ""):
                return JSONResponse({"ok": False, "error": NO_SUCH_RECIPE, "message": NO_SUCH_RECIPE},
                                    status_code=404)
            return render(request, "error.html", status_code=404, nav="recipes", title="No such recipe",
                          message=NO_SUCH_RECIPE)
    return wrapped


def stamp_of(path: Path) -> str:
    """What the editor sends back to prove it edited the file as it is now."""
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except FileNotFoundError:
        return NEW_FILE


def write_atomically(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` in one step: a reader (or a crash) sees the old
    file or the new one, never half of it. The temporary file's name starts with a
    dot, so relay's reloader never takes it for a recipe."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        mode = path.stat().st_mode & 0o777
    except FileNotFoundError:
        mode = 0o644
    fd, temp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(temp, mode)
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


# --- checking text ----------------------------------------------------------------


@dataclasses.dataclass
class Checked:
    """A recipe loaded from unsaved text, and its problems as the editor shows them."""

    recipe: Recipe
    problems: list[dict[str, Any]]

    @property
    def blocking(self) -> list[dict[str, Any]]:
        return [p for p in self.problems if p["blocking"]]

    def as_json(self) -> dict[str, Any]:
        recipe = self.recipe
        # for_each is known once the loader got past it (it compiles before fields).
        known = recipe.error is None or recipe.fields is not None
        return {
            "ok": not self.blocking,
            "problems": self.problems,
            "notes": notes_for(recipe),
            "source": recipe.source,
            "for_each_known": known,
            "for_each": redact(recipe.for_each.source, recipe.secret_values)
            if known and recipe.for_each is not None else None,
        }


def problem(error: ConfigError, blocking: bool) -> dict[str, Any]:
    line = error.line or 1
    secret = None
    if isinstance(error, SecretMissing):
        found = SECRET_REF.search(error.message)
        secret = found.group(1) if found else None
    return {"line": line, "message": error.message, "text": f"line {line}: {error.message}",
            "severity": "error" if blocking else "warning", "blocking": blocking, "secret": secret}


def notes_for(recipe: Recipe) -> list[str]:
    if recipe.error is None and not recipe.enabled:
        return ["This recipe is turned off (enabled: false): it sends nothing until you set "
                "enabled: true."]
    return []


def check_text(request: Request, path: Path, text: str) -> Checked:
    """Load ``text`` as the recipe at ``path`` with relay's loader.

    A secret that is not set is only a warning; the text is then loaded once more
    with a stand-in value for every unset secret, to find any real mistake after it
    (one on a line that names a secret may come from the stand-in, and is left out).
    """
    runtime = request.state.runtime
    folder = Path(runtime.settings.recipes)
    context = DestinationContext(data_dir=Path(runtime.settings.data), settings=runtime.settings,
                                 pacers=Pacers())
    sources = runtime.config.sources
    lookup = runtime.secrets.lookup
    recipe = load_recipe_text(text, path, folder, sources, lookup, context)
    if recipe.error is None:
        return Checked(recipe, [])
    missing = isinstance(recipe.error, SecretMissing)
    problems = [problem(recipe.error, blocking=not missing)]
    if missing:
        stand_in = load_recipe_text(text, path, folder, sources,
                                    lambda name: lookup(name) or STAND_IN, context)
        lines = text.splitlines()
        error = stand_in.error
        if error is not None and not isinstance(error, SecretMissing):
            line_text = lines[error.line - 1] if error.line and error.line <= len(lines) else ""
            if "${" not in line_text:
                problems.append(problem(error, blocking=True))
    return Checked(recipe, problems)


def too_long(text: str) -> bool:
    return len(text) > MAX_TEXT


# --- events to preview with -------------------------------------------------------


def recent_events(store: Store, source: str | None, limit: int = RECENT_EVENTS) -> list[dict[str, Any]]:
    if not source:
        return []
    return store.rows(
        "SELECT id, type, is_test, received_at FROM events WHERE source = ? AND status != 'duplicate'"
        " ORDER BY id DESC LIMIT ?", [source, limit])


def event_label(row: dict[str, Any]) -> str:
    test = " (test)" if row["is_test"] else ""
    return f"#{row['id']} · {row['type']}{test} · {when(row['received_at'])}"


def event_options(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{"id": row["id"], "label": event_label(row)} for row in rows]


def stored_event(store: Store, event_id: int) -> dict[str, Any] | None:
    return store.one("SELECT id, source, type, is_test, received_at, body FROM events WHERE id = ?",
                     [event_id])


def last_deliveries(store: Store, names: list[str]) -> dict[str, dict[str, Any]]:
    """The newest delivery of each recipe (status and when).

    Walks the deliveries newest first and stops at the recipe's first one: quick for
    a recipe in use. (An index on deliveries(recipe, id) would make it quick for all.)
    """
    found: dict[str, dict[str, Any]] = {}
    for name in names:
        row = store.one(
            "SELECT id, status, queued_at, updated_at, delivered_at, last_error FROM deliveries"
            " WHERE recipe = ? ORDER BY id DESC LIMIT 1", [name])
        if row is not None:
            found[name] = row
    return found


# --- the preview ------------------------------------------------------------------


@dataclasses.dataclass
class Preview:
    """What the preview pane shows; ``outcome`` is sent, filtered, skipped or error."""

    outcome: str
    message: str = ""
    notes: list[str] = dataclasses.field(default_factory=list)
    event: str = ""
    results: list[dict[str, Any]] = dataclasses.field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self) | {"html": templates.get_template("_recipe_preview.html").render(
            preview=self)}


def secrets_to_hide(request: Request, recipe: Recipe) -> set[str]:
    """Every secret value the preview could show: the edited recipe's, and all relay holds."""
    values = set(recipe.secret_values)
    try:
        values |= known_secrets(request)
    except ConfigError:
        pass
    return values


def event_type_of(request: Request, recipe: Recipe, payload: Any, body: bytes) -> tuple[str, bool]:
    """A pasted payload's type and test flag, read the way its source's platform reads them."""
    runtime = request.state.runtime
    source = runtime.config.sources.get(recipe.source or "")
    if source is None or source.platform is None:
        return "webhook", False
    try:
        described = source.platform.describe(SourceRequest({}, body), payload)
    except Exception:  # a payload the platform cannot read: the user's type, or a plain one
        return "webhook", False
    return described.type, described.is_test


def run_preview(recipe: Recipe, checked: Checked, event: dict[str, Any], payload: Any,
                hide: set[str]) -> Preview:
    """Routing's decision for this event and recipe, and each destination's preview."""
    def show(value: Any) -> str:
        return redact(pretty_json(value), hide)

    label = f"{event['type']}{' (a test event)' if event['is_test'] else ''}"
    preview = Preview(outcome="sent", event=label, notes=notes_for(recipe))
    if recipe.fields is None:
        first = checked.problems[0]["text"] if checked.problems else "it did not load"
        return Preview("error", f"Nothing to preview until the recipe's mistake is fixed: {first}",
                       event=label)
    if recipe.source and event["source"] != recipe.source:
        preview.outcome, preview.message = "skipped", (
            f"Nothing would be sent: this event came from the source {event['source']!r}, and the "
            f"recipe is for {recipe.source!r}. Pick one of {recipe.source!r}'s events.")
        return preview
    if not recipe.wants(event["type"], bool(event["is_test"])):
        why = (" Test events reach only recipes that list their type exactly in `events:`."
               if event["is_test"] else "")
        preview.outcome, preview.message = "skipped", (
            f"Nothing would be sent: the recipe takes the events {recipe.events}, not "
            f"{event['type']!r}.{why}")
        return preview
    try:
        outputs = run_recipe(recipe, payload, meta_of(event))
    except Filtered as e:
        preview.outcome, preview.message = "filtered", f"Filtered out: {redact(str(e), hide)}"
        return preview
    except MappingError as e:
        preview.outcome, preview.message = "error", (
            f"This event would fail with: {redact(e.message, hide)}. Nothing would be sent; "
            "the log would show this error.")
        return preview
    except RecursionError:
        return Preview("error", "The recipe nested too deeply and was stopped.", event=label)
    except Exception as e:  # a bug must show as a message, not break the editor
        log.exception("preview of recipe %s failed", recipe.name)
        return Preview("error", f"relay hit an internal error: {type(e).__name__}: {e}", event=label)
    if recipe.error is not None:
        preview.notes.append("Below are the recipe's fields; what each destination receives shows "
                             f"once this is fixed: {checked.problems[0]['text']}")
    for item_index, fields in outputs:
        entry: dict[str, Any] = {"item": item_index, "fields": show(fields), "destinations": []}
        for number, destination in enumerate(recipe.to, 1):
            try:
                shown, error = show(destination.preview(fields)), None
            except RelayError as e:
                shown, error = None, redact(e.message, hide)
            entry["destinations"].append({"number": number, "name": destination.name,
                                          "type": destination.type, "shown": shown, "error": error})
        preview.results.append(entry)
    count = len(preview.results) * len(recipe.to)
    failing = sum(d["error"] is not None for r in preview.results for d in r["destinations"])
    if recipe.to:
        preview.message = (f"{count} deliver{'y' if count == 1 else 'ies'} would be queued: "
                           "this is exactly what each destination would receive.")
    if failing:
        preview.outcome = "error"
        preview.message = (f"{count} deliver{'y' if count == 1 else 'ies'} would be queued, and "
                           f"{failing} of them would fail: see below.")
    return preview


# --- pages ------------------------------------------------------------------------


async def recipes_page(request: Request) -> Response:
    runtime = request.state.runtime
    recipes = sorted(runtime.config.recipes.items, key=lambda r: r.name)
    names = [r.name for r in recipes]
    last = await runtime.readers.run(lambda s: last_deliveries(s, names))
    deleted = request.query_params.get("deleted")
    return render(request, "recipes.html", nav="recipes", title="Recipes", recipes=recipes,
                  last=last, folder=str(folder_of(request)), deleted=deleted,
                  source_errors=[e.located() for e in runtime.config.sources.all_errors()])


def new_form(request: Request, status_code: int = 200, errors: dict[str, str] | None = None,
             **values: str) -> Response:
    runtime = request.state.runtime
    sources = sorted(runtime.config.sources.values(), key=lambda s: s.name)
    return render(request, "_recipe_new.html", status_code=status_code, nav="recipes",
                  title="New recipe", sources=sources, types=sorted(destination_types()),
                  errors=errors or {}, values=values)


async def new_page(request: Request) -> Response:
    """The form; once filled in (a GET: nothing is written), the editor on a template."""
    params = request.query_params
    if not any(k in params for k in ("name", "source", "to")):
        return new_form(request)
    name = params.get("name", "").strip()
    source = params.get("source", "")
    kind = params.get("to", "")
    values = {"name": name, "source": source, "to": kind}
    errors: dict[str, str] = {}
    folder = folder_of(request)
    if not NEW_NAME.match(name):
        errors["name"] = "Give the recipe a name of letters, digits, '-' and '_' (for example tito-to-crm)."
    elif name in RESERVED:
        errors["name"] = f"{name!r} is the name of one of relay's pages: pick another name."
    elif (path := recipe_path(folder, name)) is None or path.exists():
        errors["name"] = f"There is already a recipe named {name!r}: open it from the list, or pick another name."
    if source not in request.state.runtime.config.sources:
        errors["source"] = "Pick the source whose events this recipe takes."
    if kind not in destination_types():
        errors["to"] = "Pick where the events should go."
    if errors:
        return new_form(request, 400, errors, **values)
    query = urllib.parse.urlencode({"source": source, "to": kind})
    return RedirectResponse(f"/recipes/{name}/edit?{query}", status_code=303)


def template_text(request: Request, name: str) -> str | None:
    """A new recipe's text from the template the query names, if it names a valid one."""
    runtime = request.state.runtime
    source = runtime.config.sources.get(request.query_params.get("source", ""))
    kind = request.query_params.get("to", "")
    if source is None or kind not in destination_types():
        return None
    return template(source.platform_name, source.name, kind, name)


@named
async def edit_page(request: Request) -> Response:
    name = request.path_params["name"]
    path = path_of(request, name)
    runtime = request.state.runtime
    stamp = stamp_of(path)
    if stamp == NEW_FILE:
        text = template_text(request, name)
        if text is None:
            return RedirectResponse("/recipes/new?" + urllib.parse.urlencode({"name": name}), status_code=303)
    else:
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            return render(request, "error.html", status_code=400, nav="recipes", title="Cannot edit",
                          message=f"{path.name} is not UTF-8 text, so it cannot be edited here. "
                                  "Fix or replace the file on the machine relay runs on.")
    checked = check_text(request, path, text)
    source = checked.recipe.source or request.query_params.get("source")
    events = await runtime.readers.run(lambda s: recent_events(s, source))
    saved = request.query_params.get("saved") == "1"
    return render(request, "recipe_edit.html", nav="recipes", title=f"Recipe {name}",
                  name=name, file=path.name, text=text, stamp=stamp, is_new=stamp == NEW_FILE,
                  checked=checked, state=checked.as_json(), source=source,
                  events=event_options(events), saved=saved,
                  save_message=saved_message(runtime.config.recipes.get(name)) if saved else "",
                  save_url=save_url(name))


def save_url(name: str) -> str:
    """Where the editor saves: ``/recipes/{name}``, or ``.../edit`` for a name that is a page."""
    quoted = urllib.parse.quote(name)
    return f"/recipes/{quoted}/edit" if name in RESERVED else f"/recipes/{quoted}"


async def read_json(request: Request, limit: int) -> dict[str, Any]:
    body = await request.body()
    if len(body) > limit:
        raise HTTPException(413, "That is too large to check: a recipe is a few thousand characters.")
    try:
        data = json.loads(body)
    except ValueError:
        raise HTTPException(400, "The editor sent something that is not JSON: reload the page.") from None
    if not isinstance(data, dict):
        raise HTTPException(400, "The editor sent something unexpected: reload the page.")
    return data


def text_from(data: dict[str, Any]) -> str:
    text = data.get("text")
    if not isinstance(text, str):
        raise HTTPException(400, "The editor sent no recipe text: reload the page.")
    if too_long(text):
        raise HTTPException(413, f"This recipe is longer than {MAX_TEXT // 1024} KB: that is surely "
                                 "a mistake (a pasted file?).")
    return text


@named
async def check_endpoint(request: Request) -> Response:
    """``{name, text}`` -> the problems the loader finds, each with its line."""
    data = await read_json(request, MAX_TEXT * 2)
    path = path_of(request, str(data.get("name", "")))
    checked = check_text(request, path, text_from(data))
    return JSONResponse(checked.as_json())


@named
async def preview_endpoint(request: Request) -> Response:
    """``{name, text, event_id | payload [, type]}`` -> what the recipe would do with the event."""
    data = await read_json(request, MAX_TEXT * 2 + MAX_PAYLOAD * 2)
    path = path_of(request, str(data.get("name", "")))
    checked = check_text(request, path, text_from(data))
    recipe = checked.recipe
    runtime = request.state.runtime
    pasted = data.get("payload")
    if isinstance(pasted, str) and pasted.strip():
        body = pasted.encode("utf-8")
        if len(body) > MAX_PAYLOAD:
            return JSONResponse(Preview("error", "The pasted payload is too large to preview.").as_json())
        try:
            payload = json.loads(pasted)
        except ValueError as e:
            return JSONResponse(Preview("error", f"The pasted payload is not valid JSON: {e}. "
                                                 "Paste the whole body the platform sends.").as_json())
        given = str(data.get("type") or "").strip()
        event_type, is_test = (given, False) if given else event_type_of(request, recipe, payload, body)
        event = {"id": 0, "source": recipe.source or "", "type": event_type, "is_test": is_test,
                 "received_at": time.time()}
    else:
        try:
            event_id = int(data.get("event_id") or 0)
        except (TypeError, ValueError):
            event_id = 0
        if not event_id:
            return JSONResponse(Preview("none", "Pick a received event, or paste a payload, to see "
                                                "what this recipe would send.").as_json())
        event = await runtime.readers.run(lambda s: stored_event(s, event_id))
        if event is None:
            return JSONResponse(Preview("error", f"Event #{event_id} is no longer stored (old events are "
                                                 "removed after a while). Pick another one.").as_json())
        payload = payload_of(event)
    hide = secrets_to_hide(request, recipe)
    # Like routing, off the event loop: a slow template must not hold up webhooks.
    preview = await asyncio.to_thread(run_preview, recipe, checked, event, payload, hide)
    return JSONResponse(preview.as_json() | {"source": recipe.source})


async def events_endpoint(request: Request) -> Response:
    """The recent events of a source, for the editor's event picker."""
    source = request.query_params.get("source", "")
    rows = await request.state.runtime.readers.run(lambda s: recent_events(s, source))
    return JSONResponse({"source": source, "events": event_options(rows)})


async def event_endpoint(request: Request) -> Response:
    """One stored event's payload, for the field picker."""
    event_id = request.path_params["event_id"]
    event = await request.state.runtime.readers.run(lambda s: stored_event(s, event_id))
    if event is None:
        return JSONResponse({"error": f"Event #{event_id} is no longer stored. Pick another one."},
                            status_code=404)
    payload = payload_of(event)
    return JSONResponse({"id": event["id"], "source": event["source"], "type": event["type"],
                         "label": event_label(event), "payload": payload,
                         "error": None if payload is not None else "This event's body is not JSON."})


def saved_message(recipe: Recipe | None) -> str:
    """What saving did, in plain words, from the recipe as relay now has it."""
    message = "Saved. Applied to new events."
    if recipe is None:
        return message
    if isinstance(recipe.error, SecretMissing):
        found = SECRET_REF.search(recipe.error.message)
        secret = f"${{{found.group(1)}}}" if found else "a secret"
        return (f"{message} It stays off until the secret {secret} is set: set it on the Secrets "
                "page and it starts by itself.")
    if recipe.error is not None:
        return f"{message} But relay reports: line {recipe.error.line or 1}: {recipe.error.message}"
    if not recipe.enabled:
        return f"{message} It is turned off (enabled: false), so it sends nothing yet."
    return message


@named
async def save(request: Request) -> Response:
    """Check, then write the file exactly as typed and apply it (see the module doc)."""
    name = request.path_params["name"]
    path = path_of(request, name)
    wants_json = "application/json" in request.headers.get("content-type", "")
    if wants_json:
        data = await read_json(request, MAX_TEXT * 2)
        text = text_from(data)
        sent_stamp = str(data.get("stamp", ""))
    else:
        form = await request.form()
        text = text_from({"text": form.get("text")})
        # A browser sends a textarea's lines with CRLF; the editor's own saves are exact.
        text = text.replace("\r\n", "\n")
        sent_stamp = str(form.get("stamp", ""))

    def refuse(status: int, message: str, problems: list[dict[str, Any]] | None = None) -> Response:
        if wants_json:
            return JSONResponse({"ok": False, "message": message, "problems": problems or []},
                                status_code=status)
        return render(request, "recipe_edit.html", status_code=status, nav="recipes", title=f"Recipe {name}",
                      name=name, file=path.name, text=text, stamp=sent_stamp,
                      is_new=sent_stamp == NEW_FILE, checked=checked, state=checked.as_json(),
                      source=checked.recipe.source, events=[], saved=False, save_message="",
                      save_url=save_url(name), refused=message)

    checked = check_text(request, path, text)
    # Nothing is awaited from here to the write: no other request can change the file between.
    current = stamp_of(path)
    if current != sent_stamp:
        if sent_stamp == NEW_FILE:
            message = (f"Not saved: a recipe named {name!r} was created meanwhile (in another tab, or "
                       "on disk). Copy your text, open that recipe from the list, and merge them.")
        elif current == NEW_FILE:
            message = (f"Not saved: {path.name} was deleted since you opened it. Copy your text, "
                       "then make it again as a new recipe.")
        else:
            message = (f"Not saved: {path.name} was changed on disk since you opened it (by someone "
                       "else, another tab, or an editor on the server). Your text is still here: copy "
                       "it, reload the page to see the file as it is now, and make your changes again.")
        return refuse(409, message)
    if checked.blocking:
        first = checked.blocking[0]["text"]
        return refuse(400, f"Not saved: the recipe has a mistake at {first}. Fix it, then save again.",
                      checked.problems)
    write_atomically(path, text)
    runtime = request.state.runtime
    runtime.reload()
    log.info("recipe %s saved from the web UI by %s", name, request.state.session.user)
    message = saved_message(runtime.config.recipes.get(name))
    if wants_json:
        return JSONResponse({"ok": True, "message": message, "stamp": stamp_of(path),
                             "problems": checked.problems})
    return RedirectResponse(f"/recipes/{urllib.parse.quote(name)}/edit?saved=1", status_code=303)


@named
async def delete_page(request: Request) -> Response:
    name = request.path_params["name"]
    path = path_of(request, name)
    if not path.exists():
        raise NoSuchRecipe(name)
    return render(request, "_recipe_delete.html", nav="recipes", title=f"Delete {name}", name=name,
                  file=path.name)


@named
async def delete(request: Request) -> Response:
    name = request.path_params["name"]
    path = path_of(request, name)
    if not path.exists():
        raise NoSuchRecipe(name)
    path.unlink()
    request.state.runtime.reload()
    log.info("recipe %s deleted from the web UI by %s", name, request.state.session.user)
    return RedirectResponse("/recipes?" + urllib.parse.urlencode({"deleted": name}), status_code=303)


routes = [
    Route("/recipes", recipes_page, methods=["GET"]),
    Route("/recipes/new", new_page, methods=["GET"]),
    Route("/recipes/check", check_endpoint, methods=["POST"]),
    Route("/recipes/preview", preview_endpoint, methods=["POST"]),
    Route("/recipes/events", events_endpoint, methods=["GET"]),
    Route("/recipes/events/{event_id:int}", event_endpoint, methods=["GET"]),
    # Recipes in sub-folders have a / in their name; the longer paths come first.
    Route("/recipes/{name:path}/edit", edit_page, methods=["GET"]),
    Route("/recipes/{name:path}/edit", save, methods=["POST"]),
    Route("/recipes/{name:path}/delete", delete_page, methods=["GET"]),
    Route("/recipes/{name:path}/delete", delete, methods=["POST"]),
    Route("/recipes/{name:path}", save, methods=["POST"]),
]
