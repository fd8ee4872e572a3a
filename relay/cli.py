"""The ``relay`` command. ``relay`` alone is ``relay serve``.

Errors reach the user here as one plain line on stderr and a non-zero exit code;
nothing below this module prints.
"""

from __future__ import annotations

import json
import logging
import re
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from click_default_group import DefaultGroup

from .destinations import DestinationContext
from .destinations.pacing import Pacers
from .errors import ConfigError, MappingError, RelayError
from .logs import SecretFilter, setup_logging
from .recipes import check_messages, load_recipe, load_recipes, redact
from .routing import Filtered, run_recipe
from .secrets import SecretStore
from .settings import Settings, _duration
from .sources import Request, load_sources
from .store import Store

if TYPE_CHECKING:
    from .app import Config


def settings_from(**options: Any) -> Settings:
    try:
        return Settings.from_env(**options)
    except ConfigError as e:
        raise click.ClickException(e.message) from None


def secret_store(settings: Settings, create: bool = False) -> SecretStore:
    """Secrets from the database when it exists (or ``create``), else the environment."""
    if create or Path(settings.db).exists():
        return SecretStore(Store(settings.db), settings)
    return SecretStore(None, settings)


def common(f: Callable[..., Any]) -> Callable[..., Any]:
    f = click.option("--db", type=click.Path(path_type=Path), default=None,
                     help="SQLite database file [env RELAY_DB; default ./relay.db]")(f)
    f = click.option("--recipes", type=click.Path(path_type=Path), default=None,
                     help="Recipes folder [env RELAY_RECIPES; default ./recipes]")(f)
    return f


@click.group(cls=DefaultGroup, default="serve", default_if_no_args=True)
@click.version_option(package_name="relay")
def cli() -> None:
    """relay: receive ticketing webhooks, map them with recipes, deliver them anywhere."""


@cli.command()
@common
@click.option("--host", default=None, help="Address to listen on [env RELAY_HOST; default 127.0.0.1]")
@click.option("--port", type=int, default=None, help="Port [env RELAY_PORT; default 8000]")
@click.option("--data", type=click.Path(path_type=Path), default=None,
              help="Data folder [env RELAY_DATA; default ./data]")
def serve(recipes: Path | None, db: Path | None, host: str | None, port: int | None,
          data: Path | None) -> None:
    """Start relay: receive webhooks and deliver them."""
    import uvicorn

    from .app import create_app

    settings = settings_from(recipes=recipes, db=db, host=host, port=port, data=data)
    hidden = setup_logging(settings.log_format)
    if settings.log_format == "json":  # every line of output is then one JSON object
        say: Callable[[str], None] = logging.getLogger("relay").info
    else:
        say = lambda line: click.echo(f"relay: {line}", err=True)  # noqa: E731
    loaded = report_problems(settings, say, hidden)
    say(f"webhooks go to {settings.public_url}/hooks/<source>")
    # uvicorn shuts down gracefully on SIGTERM, then raises the signal again, which
    # would end the process "killed by SIGTERM" (exit -15/143) after a clean stop.
    # Exit 0 instead: a SIGTERM asks relay to stop, and relay stopped as asked.
    signal.signal(signal.SIGTERM, _stopped)
    uvicorn.run(create_app(settings, on_secrets=hidden.update, loaded=loaded),
                host=settings.host, port=settings.port,
                # uvicorn's access log would print Quicket's token (a secret) from the URL;
                # relay logs each webhook itself, without it.
                log_level="info", access_log=False, server_header=False,
                # Behind a reverse proxy, the client's address and https come from its
                # X-Forwarded-* headers, trusted only from the listed addresses.
                proxy_headers=bool(settings.forwarded_allow_ips),
                forwarded_allow_ips=settings.forwarded_allow_ips or None,
                # None: uvicorn keeps the handlers setup_logging gave every logger.
                log_config=None,
                # On SIGTERM, requests still open get 4 s (an answer lost is no loss:
                # the platform sends again), then deliveries in flight 3 s (Runtime.stop):
                # relay is gone well within the 10 s Docker waits before SIGKILL.
                timeout_graceful_shutdown=4)


def _stopped(signum: int, frame: Any) -> None:
    sys.exit(0)


def report_problems(settings: Settings, say: Callable[[str], None],
                    hidden: SecretFilter) -> tuple[Config, Pacers]:
    """Print every configuration problem at start-up; relay still starts.

    Returns what it loaded, for the server to start with rather than load it again.
    """
    from .app import load_config, secret_values

    secrets = secret_store(settings)
    folder = Path(settings.recipes)
    pacers = Pacers()
    config = load_config(settings, secrets, pacers)
    sources, recipes = config.sources, config.recipes
    hidden.update(secret_values(config, secrets))
    for line in check_messages(sources, recipes):
        say(f"{line} (this part is disabled until fixed)")
    say(f"{len(sources)} sources, {len(recipes.items)} recipes "
        f"({sum(r.active for r in recipes.items)} active) in {folder}")
    return config, pacers


@cli.command()
@click.argument("folder", required=False, type=click.Path(path_type=Path))
@click.option("--db", type=click.Path(path_type=Path), default=None,
              help="Database holding secrets [env RELAY_DB; default ./relay.db]")
def check(folder: Path | None, db: Path | None) -> None:
    """Check the recipes folder; print each problem as FILE:LINE: message."""
    settings = settings_from(recipes=folder, db=db)
    secrets = secret_store(settings)
    folder = Path(settings.recipes)
    if not folder.is_dir():
        raise click.ClickException(f"{folder} is not a folder")
    sources = load_sources(folder, secrets.lookup)
    recipes = load_recipes(folder, sources, secrets.lookup, DestinationContext(Path(settings.data), settings))
    problems = check_messages(sources, recipes)
    for line in problems:
        click.echo(line)
    if problems:
        click.echo(f"{len(problems)} problem(s) found.", err=True)
        sys.exit(1)
    click.echo(f"OK: {len(sources)} sources, {len(recipes.items)} recipes.", err=True)


@cli.command(name="try")
@click.argument("recipe", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.argument("payload", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--type", "event_type", default=None,
              help="Event type to assume (default: read from the payload where the platform puts it there)")
@click.option("--db", type=click.Path(path_type=Path), default=None,
              help="Database holding secrets [env RELAY_DB; default ./relay.db]")
def try_(recipe: Path, payload: Path, event_type: str | None, db: Path | None) -> None:
    """Dry run: show what RECIPE would send for the event in PAYLOAD.json. Sends nothing."""
    folder = recipe.resolve().parent
    settings = settings_from(recipes=folder, db=db)
    secrets = secret_store(settings)
    sources = load_sources(folder, secrets.lookup)
    loaded = load_recipe(recipe.resolve(), folder, sources, secrets.lookup,
                         DestinationContext(Path(settings.data), settings))
    if loaded.error is not None:
        raise click.ClickException(loaded.error.located())
    body = payload.read_bytes()
    try:
        event = json.loads(body)
    except ValueError as e:
        raise click.ClickException(f"{payload} is not valid JSON: {e}") from None
    source = sources.get(loaded.source or "")
    if source is not None and source.platform is None:
        # Reading the event type needs no secret: a dry run works before the
        # source's secret is set (a stand-in value only lets the platform be built).
        stand_in = load_sources(folder, lambda name: secrets.lookup(name) or "unset-for-try")
        source = stand_in.get(source.name, source)
    is_test = False
    if event_type is None and source is not None and source.platform is not None:
        described = source.platform.describe(Request({}, body), event)
        event_type, is_test = described.type, described.is_test
    event_type = event_type or "webhook"
    show = lambda value: redact(json.dumps(value, indent=2, ensure_ascii=False),  # noqa: E731
                                loaded.secret_values)
    click.echo(f"event type: {event_type}{' (a test event)' if is_test else ''}")
    if not loaded.wants(event_type, is_test):
        click.echo(f"Nothing would be sent: the recipe takes events {loaded.events}, "
                   f"not {event_type!r}.")
        return
    if not loaded.enabled:
        click.echo("Note: the recipe is turned off (enabled: false); this is what it would send.")
    meta = {"source": loaded.source, "type": event_type, "id": 0, "received_at": time.time()}
    try:
        outputs = run_recipe(loaded, event, meta)
    except Filtered as e:
        click.echo(f"Nothing would be sent: {e}.")
        return
    except MappingError as e:
        raise click.ClickException(f"{recipe}: {e.message}") from None
    for item_index, fields in outputs:
        label = f" (item {item_index})" if item_index is not None else ""
        for number, destination in enumerate(loaded.to, 1):
            try:
                preview = destination.preview(fields)
            except RelayError as e:
                preview = {"type": destination.type, "error": e.message}
            click.echo(f"--- destination {number}{label}: {destination.name}")
            click.echo(show(preview))


@cli.command()
@click.argument("delivery_id", required=False, type=int)
@click.option("--dead", "all_dead", is_flag=True, help="Replay every dead delivery matching the filters.")
@click.option("--source", default=None, help="Only deliveries of events from this source.")
@click.option("--recipe", default=None, help="Only deliveries of this recipe.")
@click.option("--since", default=None, help="Only deliveries queued in this window, e.g. 2h or 3d.")
@click.option("--db", type=click.Path(path_type=Path), default=None,
              help="SQLite database file [env RELAY_DB; default ./relay.db]")
def replay(delivery_id: int | None, all_dead: bool, source: str | None, recipe: str | None,
           since: str | None, db: Path | None) -> None:
    """Send a delivery again: one by id, or every dead one matching the filters (--dead).

    A running relay picks replayed deliveries up within a second.
    """
    if delivery_id is None and not all_dead:
        raise click.UsageError("give a delivery id, or --dead to replay dead deliveries")
    settings = settings_from(db=db)
    if not Path(settings.db).exists():
        raise click.ClickException(f"there is no database at {settings.db}")
    since_ts = None
    if since:
        try:
            since_ts = time.time() - _duration(since)
        except ValueError:
            raise click.BadParameter("use a duration such as 30m, 2h or 3d", param_hint="--since") from None
    store = Store(settings.db)
    try:
        ids = store.replay(delivery_id=delivery_id, source=source, recipe=recipe, since=since_ts)
    finally:
        store.close()
    if delivery_id is not None and not ids:
        raise click.ClickException(
            f"delivery {delivery_id} was not found, or is still pending (only dead or "
            "delivered deliveries can be replayed)")
    click.echo(f"{len(ids)} deliveries queued again" + (f": {', '.join(map(str, ids[:20]))}"
                                                          + (" ..." if len(ids) > 20 else "")
                                                          if ids else "."))


@cli.command()
@click.argument("delivery_id", required=False, type=int)
@click.option("--dead", "all_dead", is_flag=True, help="Dismiss every dead delivery not yet reviewed.")
@click.option("--db", type=click.Path(path_type=Path), default=None,
              help="SQLite database file [env RELAY_DB; default ./relay.db]")
def dismiss(delivery_id: int | None, all_dead: bool, db: Path | None) -> None:
    """Mark a dead delivery as reviewed (one by id, or all with --dead) without sending it.

    Dead deliveries are kept until reviewed; once dismissed they are removed with
    their event after RELAY_RETENTION.
    """
    if (delivery_id is None) == (not all_dead):
        raise click.UsageError("give a delivery id, or --dead to dismiss every dead delivery")
    settings = settings_from(db=db)
    if not Path(settings.db).exists():
        raise click.ClickException(f"there is no database at {settings.db}")
    store = Store(settings.db)
    try:
        ids = store.dismiss(delivery_id=delivery_id)
    finally:
        store.close()
    if delivery_id is not None and not ids:
        raise click.ClickException(
            f"delivery {delivery_id} was not found, is not dead, or was already reviewed")
    click.echo(f"{len(ids)} dead deliveries dismissed.")


@cli.command()
@click.argument("path", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--force", is_flag=True, help="Overwrite PATH if it exists.")
@click.option("--db", type=click.Path(path_type=Path), default=None,
              help="SQLite database file [env RELAY_DB; default ./relay.db]")
def backup(path: Path, force: bool, db: Path | None) -> None:
    """Copy the database to PATH; safe while relay runs.

    To restore: stop relay, copy the backup over the database file, start relay.
    Keep the secret key (data/secret.key or RELAY_SECRET_KEY) with it: stored
    secrets cannot be read without it.
    """
    from .backup import backup as take_backup

    settings = settings_from(db=db)
    try:
        result = take_backup(Path(settings.db), path, force=force)
    except RelayError as e:
        raise click.ClickException(e.message) from None
    click.echo(f"Backed up {result.events} events to {result.path} "
               f"({result.size / 2**20:.1f} MiB).")


@cli.group()
def secret() -> None:
    """Manage the named secrets that recipes use as ${NAME}."""


@secret.command(name="set")
@click.argument("name")
@click.option("--db", type=click.Path(path_type=Path), default=None,
              help="SQLite database file [env RELAY_DB; default ./relay.db]")
def secret_set(name: str, db: Path | None) -> None:
    """Set NAME; the value is asked for (hidden), or read from standard input."""
    settings = settings_from(db=db)
    store = secret_store(settings, create=True)
    try:
        store.check_name(name)
        if sys.stdin.isatty():
            value = click.prompt(f"Value for {name}", hide_input=True, confirmation_prompt=True)
        else:
            value = sys.stdin.read().rstrip("\r\n")
        store.set(name, value)
    except ConfigError as e:
        raise click.ClickException(e.message) from None
    click.echo(f"Secret {name} saved. A running relay uses it within a few seconds "
               "(touch a recipe to reload now).")


@secret.command(name="list")
@click.option("--db", type=click.Path(path_type=Path), default=None,
              help="SQLite database file [env RELAY_DB; default ./relay.db]")
def secret_list(db: Path | None) -> None:
    """List secret names and when they were set (never their values)."""
    settings = settings_from(db=db)
    for row in secret_store(settings).names():
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(float(row["updated_at"])))  # type: ignore[arg-type]
        click.echo(f"{row['name']}\t{when}")


@secret.command(name="delete")
@click.argument("name")
@click.option("--db", type=click.Path(path_type=Path), default=None,
              help="SQLite database file [env RELAY_DB; default ./relay.db]")
def secret_delete(name: str, db: Path | None) -> None:
    """Delete the secret NAME."""
    settings = settings_from(db=db)
    if not secret_store(settings).delete(name):
        raise click.ClickException(f"there is no secret named {name}")
    click.echo(f"Secret {name} deleted.")


# --- web UI accounts ------------------------------------------------------------------

USER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@+-]{0,63}$")


def user_store(db: Path | None, create: bool = False) -> Store:
    """The database holding the accounts; ``create`` makes it (``user add`` before a first start)."""
    settings = settings_from(db=db)
    if not create and not Path(settings.db).exists():
        raise click.ClickException(f"there is no database at {settings.db}: start relay once, or pass --db")
    return Store(settings.db)


def new_password(name: str) -> str:
    """The password, asked for twice (hidden) on a terminal, else read from standard input."""
    from .ui.auth import MIN_PASSWORD

    if sys.stdin.isatty():
        return str(click.prompt(f"Password for {name} (at least {MIN_PASSWORD} characters)",
                                hide_input=True, confirmation_prompt=True))
    return sys.stdin.read().rstrip("\r\n")


def hashed(password: str) -> str:
    from .ui.auth import hash_password

    try:
        return hash_password(password)
    except ConfigError as e:
        raise click.ClickException(e.message) from None


@cli.group()
def user() -> None:
    """Manage the web UI's accounts (who may log in)."""


@user.command(name="add")
@click.argument("name")
@click.option("--db", type=click.Path(path_type=Path), default=None,
              help="SQLite database file [env RELAY_DB; default ./relay.db]")
def user_add(name: str, db: Path | None) -> None:
    """Add an account NAME; its password is asked for (hidden), or read from standard input."""
    if not USER_NAME.match(name):
        raise click.ClickException(
            f"{name!r} cannot be an account name: use up to 64 letters, digits and . _ @ + -, "
            "starting with a letter or digit.")
    store = user_store(db, create=True)
    try:
        if store.user(name) is not None:
            raise click.ClickException(
                f"there is already an account named {name}; to change its password: "
                f"relay user password {name}")
        store.put_user(name, hashed(new_password(name)))
    finally:
        store.close()
    click.echo(f"Account {name} added: it can log in to the web UI now.")


@user.command(name="password")
@click.argument("name")
@click.option("--db", type=click.Path(path_type=Path), default=None,
              help="SQLite database file [env RELAY_DB; default ./relay.db]")
def user_password(name: str, db: Path | None) -> None:
    """Set a new password for NAME (asked for, or read from standard input); logs NAME out everywhere."""
    store = user_store(db)
    try:
        if store.user(name) is None:
            raise click.ClickException(f"there is no account named {name} (relay user list shows them)")
        store.put_user(name, hashed(new_password(name)))
    finally:
        store.close()
    click.echo(f"Password of {name} changed. {name} was logged out everywhere: log in again with it.")


@user.command(name="list")
@click.option("--db", type=click.Path(path_type=Path), default=None,
              help="SQLite database file [env RELAY_DB; default ./relay.db]")
def user_list(db: Path | None) -> None:
    """List the accounts, when each was added and when its password last changed."""
    store = user_store(db)
    try:
        rows = store.users()
    finally:
        store.close()
    for row in rows:
        added, changed = (time.strftime("%Y-%m-%d %H:%M", time.localtime(float(row[k])))
                          for k in ("created_at", "updated_at"))
        click.echo(f"{row['name']}\tadded {added}\tpassword set {changed}")


@user.command(name="delete")
@click.argument("name")
@click.option("--db", type=click.Path(path_type=Path), default=None,
              help="SQLite database file [env RELAY_DB; default ./relay.db]")
def user_delete(name: str, db: Path | None) -> None:
    """Delete the account NAME and end its sessions."""
    store = user_store(db)
    try:
        names = [str(row["name"]) for row in store.users()]
        if name not in names:
            raise click.ClickException(f"there is no account named {name} (relay user list shows them)")
        if names == [name]:
            raise click.ClickException(
                f"{name} is the only account: nobody could log in without it. Add another first "
                f"(relay user add NAME), or change its password (relay user password {name}).")
        store.delete_user(name)
    finally:
        store.close()
    click.echo(f"Account {name} deleted; its sessions ended.")
