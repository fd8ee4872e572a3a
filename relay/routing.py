"""Routing: a stored event, run through its source's recipes, becomes queued deliveries.

Routing runs after the event is committed and answered, in the background, so a
slow or broken recipe never delays a platform's webhook. Each stored event is
routed exactly once: its recipe outcomes, its deliveries and its ``routed_at``
mark commit together, so a crash in between routes it again from scratch.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import json
import logging
import sqlite3
from collections.abc import Callable
from typing import Any

from .errors import MappingError
from .mapping import evaluate, event_root, item_root, truthy
from .recipes import Recipe, Recipes
from .store import Store, Writer

log = logging.getLogger("relay.routing")

MAX_ITEMS = 1000  # for_each beyond this is surely a mistake, not a ticket order


@dataclasses.dataclass
class Routed:
    routes: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    deliveries: list[dict[str, Any]] = dataclasses.field(default_factory=list)


def meta_of(event: dict[str, Any]) -> dict[str, Any]:
    return {"source": event["source"], "type": event["type"], "id": event["id"],
            "received_at": event["received_at"]}


class Filtered(Exception):
    """The recipe decided not to send anything for this event; the message says why."""


def run_recipe(recipe: Recipe, payload: Any, meta: dict[str, Any]) -> list[tuple[int | None, Any]]:
    """The payloads this recipe produces for one event: ``[(item_index, fields), ...]``.

    :raises Filtered: when ``when`` is false or ``for_each`` gives no items.

    :raises MappingError: naming the part of the recipe that failed.
    """
    root = event_root(payload, meta)
    if recipe.when is not None:
        try:
            passed = truthy(recipe.when.evaluate(root))
        except MappingError as e:
            raise MappingError(f"when: {e.message}") from None
        if not passed:
            raise Filtered(f"when: {recipe.when.source!r} was false for this event")
    assert recipe.fields is not None
    if recipe.for_each is None:
        return [(None, evaluate(recipe.fields, root))]
    try:
        items = recipe.for_each.evaluate(root)
    except MappingError as e:
        raise MappingError(f"for_each: {e.message}") from None
    if items is None:
        items = []
    if not isinstance(items, list):
        raise MappingError(
            f"for_each: {recipe.for_each.source!r} gave {type(items).__name__}, not a list")
    if not items:
        raise Filtered(f"for_each: {recipe.for_each.source!r} gave no items")
    if len(items) > MAX_ITEMS:
        raise MappingError(f"for_each: {len(items)} items is more than the {MAX_ITEMS} allowed")
    return [(i, evaluate(recipe.fields, item_root(payload, meta, item, i)))
            for i, item in enumerate(items)]


def payload_of(event: dict[str, Any]) -> Any:
    """A stored event's parsed body; None when it is not JSON (ingest refuses such
    bodies, but a row stored by an older relay may hold one)."""
    try:
        return json.loads(bytes(event["body"]))
    except (ValueError, UnicodeDecodeError):
        return None


def route_event(recipes: Recipes, event: dict[str, Any]) -> Routed:
    """Apply every recipe of the event's source. Pure: touches no database."""
    routed = Routed()
    payload = payload_of(event)
    meta = meta_of(event)
    for recipe in recipes.for_source(event["source"]):
        if not recipe.wants(event["type"], bool(event["is_test"])):
            continue
        if recipe.error is not None:
            routed.routes.append({"recipe": recipe.name, "outcome": "error",
                                  "message": "the recipe is disabled by an error: "
                                             + recipe.error.located()})
            continue
        if not recipe.enabled:
            routed.routes.append({"recipe": recipe.name, "outcome": "filtered",
                                  "message": "the recipe is turned off (enabled: false)"})
            continue
        try:
            outputs = run_recipe(recipe, payload, meta)
        except Filtered as e:
            routed.routes.append({"recipe": recipe.name, "outcome": "filtered", "message": str(e)})
            continue
        except MappingError as e:
            routed.routes.append({"recipe": recipe.name, "outcome": "error", "message": e.message})
            continue
        except RecursionError:
            routed.routes.append({"recipe": recipe.name, "outcome": "error",
                                  "message": "the recipe nested too deeply and was stopped"})
            continue
        except Exception as e:  # a bug must cost this recipe this event, not stop routing
            log.exception("recipe %s failed on event %s", recipe.name, event["id"])
            routed.routes.append({"recipe": recipe.name, "outcome": "error",
                                  "message": f"relay hit an internal error: {type(e).__name__}: {e}"})
            continue
        count = 0
        for item_index, fields in outputs:
            for index, destination in enumerate(recipe.to):
                routed.deliveries.append({
                    "recipe": recipe.name, "destination": index, "dest_type": destination.type,
                    "item_index": item_index, "payload": fields,
                })
                count += 1
        routed.routes.append({"recipe": recipe.name, "outcome": "queued",
                              "message": None, "deliveries": count})
    return routed


def record(store: Store, event: dict[str, Any], routed: Routed) -> int:
    """Store one event's outcomes; an event that cannot be stored as routed is marked
    failed, so that one bad event never holds up the ones behind it.

    A storage error (disk full, database locked) is not the event's fault: it goes up,
    and the whole batch is tried again.
    """
    try:
        return store.record_routing(event["id"], routed.routes, routed.deliveries)
    except sqlite3.OperationalError:
        raise
    except Exception as e:
        log.exception("event %s could not be routed", event["id"])
        store.record_routing(event["id"], [{
            "recipe": "*", "outcome": "error",
            "message": f"relay could not queue this event's deliveries: {type(e).__name__}: {e}"}], [])
        return 0


class Router:
    """Routes stored events in the background, oldest first, and adds them to the
    log's text search in batches (``Store.index_for_search``)."""

    BATCH = 100
    #: Seconds between two text-search batches while events keep arriving: the
    #: search lags by at most about this much, and each batch holds many events.
    INDEX_EVERY = 0.5

    def __init__(self, writer: Writer, recipes: Callable[[], Recipes],
                 on_queued: Callable[[], None], search: Store) -> None:
        self.writer = writer
        self.recipes = recipes
        self.on_queued = on_queued
        self.wake = asyncio.Event()
        self._index_at = 0.0
        # The text search is filled on a connection of its own (``search``), in a
        # thread, off the event loop.
        self.search = search
        self._indexer = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="relay-search")

    async def index_for_search(self) -> int:
        return await asyncio.get_running_loop().run_in_executor(
            self._indexer, self.search.index_for_search)

    def close(self) -> None:
        """Wait for an index batch under way, and close the search's connection."""
        self._indexer.shutdown(wait=True)
        self.search.close()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                routed_any = await self.route_pending()
                caught_up = True
                if not routed_any or loop.time() >= self._index_at:
                    indexed = await self.index_for_search()
                    caught_up = indexed < Store.INDEX_BATCH
                    self._index_at = loop.time() + self.INDEX_EVERY
            except Exception:  # e.g. the disk is full: the events wait, routing goes on
                log.exception("routing failed; trying again in a second")
                await asyncio.sleep(1.0)
                continue
            if not routed_any and caught_up:
                self.wake.clear()
                # Events no recipe wants are stored routed and wake nobody: the
                # timeout is what adds them to the search.
                try:
                    await asyncio.wait_for(self.wake.wait(), timeout=self.INDEX_EVERY)
                except TimeoutError:
                    pass

    async def route_pending(self) -> bool:
        """Route one batch of unrouted events. Returns whether there were any."""
        events = await self.writer.run(lambda s: s.unrouted_events(self.BATCH))
        if not events:
            return False
        recipes = self.recipes()
        routed = await asyncio.to_thread(lambda: [route_event(recipes, e) for e in events])

        def save(store: Store) -> int:
            return sum(record(store, e, r) for e, r in zip(events, routed, strict=True))

        if await self.writer.run(save):
            self.on_queued()
        return True
