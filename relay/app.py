"""``create_app(settings)``: the relay as an ASGI app.

The lifespan opens the database (one writer thread), loads sources and recipes,
and starts four background tasks: the router (stored events -> deliveries), the
deliverer (deliveries -> destinations), the watcher, which reloads the recipes
folder when a file in it changes, so edits apply without a restart, and retention,
which prunes what is older than RELAY_RETENTION (relay/retention.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import AsyncIterator, Callable, Iterable
from pathlib import Path
from typing import TypedDict

import httpx
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from .delivery import Deliverer
from .destinations import DestinationContext, Pacers
from .errors import ConfigError, RelayError
from .ingest import receive
from .metrics import Metrics, metrics
from .outbound import Policy, guarded_client, parse_networks
from .recipes import Recipes, load_recipes, recipe_files
from .retention import Retention
from .routing import Router
from .secrets import SecretStore
from .settings import Settings
from .sources import Sources, load_sources
from .store import Readers, Store, Writer
from .ui import auth as ui_auth
from .ui import render
from .ui import routes as ui_routes

log = logging.getLogger("relay")


@dataclasses.dataclass
class Config:
    """Sources and recipes as loaded together; replaced whole on reload."""

    sources: Sources
    recipes: Recipes
    stamp: tuple[object, ...] = ()


def config_stamp(folder: Path, secrets: SecretStore) -> tuple[object, ...]:
    """Changes when any recipe, sources.yaml or stored secret changes."""
    return (folder_stamp(folder), secrets.stamp())


def folder_stamp(folder: Path) -> tuple[tuple[str, float, int], ...]:
    """What changes when any recipe or sources.yaml changes (names, mtimes, sizes)."""
    paths = recipe_files(folder) + [folder / "sources.yaml"]
    stamp = []
    for path in paths:
        try:
            st = path.stat()
        except OSError:
            continue
        stamp.append((str(path), st.st_mtime, st.st_size))
    return tuple(stamp)


def load_config(settings: Settings, secrets: SecretStore, pacers: Pacers | None = None) -> Config:
    folder = Path(settings.recipes)
    stamp = config_stamp(folder, secrets)
    sources = load_sources(folder, secrets.lookup)
    context = DestinationContext(data_dir=Path(settings.data), settings=settings,
                                 pacers=pacers or Pacers())
    recipes = load_recipes(folder, sources, secrets.lookup, context)
    return Config(sources, recipes, stamp)


def secret_values(config: Config, secrets: SecretStore) -> set[str]:
    """Every secret value relay holds: the sources', the recipes' and the stored ones."""
    values: set[str] = set()
    for source in config.sources.values():
        if source.platform is not None:
            values.update(source.platform.secrets)
    for recipe in config.recipes.items:
        values.update(recipe.secret_values)
    for row in secrets.names():
        with contextlib.suppress(ConfigError):
            value = secrets.lookup(str(row["name"]))
            if value:
                values.add(value)
    return values


class Runtime:
    """Everything the running relay shares: settings, database, config, workers.

    ``on_secrets``, if given, is told every secret value at start and after each
    reload (``relay serve`` hides them in its log).
    """

    def __init__(self, settings: Settings,
                 on_secrets: Callable[[Iterable[str]], None] | None = None,
                 loaded: tuple[Config, Pacers] | None = None) -> None:
        self.settings = settings
        self.on_secrets = on_secrets
        self.writer = Writer(settings.db)
        self.metrics = Metrics(settings.db)
        # A second connection for the event loop's own small reads (secrets at reload).
        self.reader = Store(settings.db)
        # Worker-thread connections for the web UI's pages, which may read a lot.
        self.readers = Readers(settings.db)
        self.secrets = SecretStore(self.reader, settings)
        ui_auth.ensure_admin(self.reader, settings.admin_password, log.warning)
        self.sessions = ui_auth.Sessions(self)
        # Pacers outlive reloads: a vendor's rate limit does not reset when a recipe changes.
        # ``loaded``: the configuration ``relay serve`` loaded a moment ago to report its
        # problems, with its pacers (100 recipes take a quarter of a second to load).
        self.pacers = loaded[1] if loaded else Pacers()
        self.config = loaded[0] if loaded else load_config(settings, self.secrets, self.pacers)
        self._tell_secrets()
        # Every delivery connection is checked against RELAY_ALLOW_NETWORKS (outbound.py).
        self.client = guarded_client(
            Policy(parse_networks(settings.allow_networks)),
            limits=httpx.Limits(max_connections=max(settings.concurrency, 10)),
            headers={"User-Agent": "relay"},
        )
        self.router = Router(self.writer, lambda: self.config.recipes, self._queued,
                             search=Store(settings.db))
        self.deliverer = Deliverer(self.writer, lambda: self.config.recipes, settings, self.client,
                                   metrics=self.metrics)
        self.retention = Retention(self.writer, settings)
        self.tasks: list[asyncio.Task[None]] = []

    def _queued(self) -> None:
        self.deliverer.wake.set()

    def reload(self) -> Config:
        self.config = load_config(self.settings, self.secrets, self.pacers)
        self._tell_secrets()
        return self.config

    def _tell_secrets(self) -> None:
        # Kept for what relay shows or stores from outside: a token pasted where the
        # source name goes (/hooks/<token>) must not reach the rejection log.
        self.secret_values = secret_values(self.config, self.secrets)
        if self.on_secrets is not None:
            self.on_secrets(self.secret_values)

    async def watch(self, interval: float = 1.0) -> None:
        while True:
            await asyncio.sleep(interval)
            if config_stamp(Path(self.settings.recipes), self.secrets) != self.config.stamp:
                config = self.reload()
                errors = len(config.sources.all_errors()) + len(config.recipes.errors())
                log.info("reloaded %d recipes (%d with errors)", len(config.recipes.items), errors)

    def start(self) -> None:
        for name, coro in (("router", self.router.run()), ("deliverer", self.deliverer.run()),
                           ("watcher", self.watch()), ("retention", self.retention.run())):
            task = asyncio.create_task(coro, name=f"relay-{name}")
            task.add_done_callback(_crashed)
            self.tasks.append(task)

    async def stop(self) -> None:
        for task in self.tasks:
            if task.get_name() != "relay-deliverer":
                task.cancel()
        deliverer = next((t for t in self.tasks if t.get_name() == "relay-deliverer"), None)
        if deliverer is not None:
            deliverer.cancel()
        # Attempts already on the wire get a moment to finish; the rest stay
        # 'sending' and go back to the queue at the next start. 3 s here plus
        # uvicorn's 4 s for open requests (relay serve) keep a stop under the 10 s
        # that Docker waits after SIGTERM before it kills.
        await self.deliverer.drain(timeout=3)
        for task in list(self.deliverer.in_flight):
            task.cancel()
        await asyncio.gather(*self.tasks, *self.deliverer.in_flight, return_exceptions=True)
        await self.client.aclose()
        self.router.close()
        self.writer.close()
        self.reader.close()
        self.readers.close()


def _crashed(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.critical("background task %s stopped", task.get_name(), exc_info=task.exception())


class State(TypedDict):
    runtime: Runtime


async def healthz(request: Request) -> JSONResponse:
    runtime: Runtime = request.state.runtime
    try:
        writable = await runtime.writer.run(lambda s: s.writable())
    except RelayError:  # locked past the busy timeout, say: not writable, and not a 500
        writable = False
    if not writable:
        return JSONResponse({"status": "error", "error": "the database is not writable"},
                            status_code=503)
    config = runtime.config
    return JSONResponse({
        "status": "ok",
        "sources": len(config.sources),
        "recipes": len(config.recipes.items),
        "errors": len(config.sources.all_errors()) + len(config.recipes.errors()),
    })


async def http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    messages = {404: "Nothing here. Webhooks go to /hooks/<source>.",
                405: "This address only takes POST requests from a webhook sender."}
    if "text/html" in request.headers.get("accept", "") and not request.url.path.startswith("/hooks"):
        return render(request, "error.html", status_code=exc.status_code, title="Not found",
                      message="There is no page at this address." if exc.status_code == 404
                      else str(exc.detail))
    return JSONResponse({"error": messages.get(exc.status_code, exc.detail)},
                        status_code=exc.status_code, headers=exc.headers)


def create_app(settings: Settings,
               on_secrets: Callable[[Iterable[str]], None] | None = None,
               loaded: tuple[Config, Pacers] | None = None) -> Starlette:
    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[State]:
        nonlocal loaded
        runtime = Runtime(settings, on_secrets, loaded)
        loaded = None  # once: a second lifespan (tests) loads its own
        runtime.start()
        try:
            yield {"runtime": runtime}
        finally:
            await runtime.stop()

    return Starlette(
        routes=[
            Route("/hooks/{source}", receive, methods=["POST"]),
            # A pasted URL often gains a trailing slash; a redirect would lose the POST.
            Route("/hooks/{source}/", receive, methods=["POST"]),
            Route("/hooks/{source}/{token}", receive, methods=["POST"]),
            Route("/healthz", healthz, methods=["GET"]),
            Route("/metrics", metrics, methods=["GET"]),
            *ui_routes(),
        ],
        middleware=[Middleware(ui_auth.AuthMiddleware)],
        exception_handlers={HTTPException: http_error},
        lifespan=lifespan,
    )
