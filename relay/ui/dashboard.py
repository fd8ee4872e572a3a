"""The dashboard: the last day at a glance, and what needs a person.

Events received and deliveries finished per hour over the last 24 hours, drawn as
an inline SVG chart on the server (no chart library, no script); how many
deliveries are waiting, retrying and dead; and a list of what needs attention, each
item linking to where to fix it: recipes switched off by an error or by hand,
sources that are off, sources whose requests are refused, recipes failing on
events, dead deliveries nobody reviewed, and a delivery waiting too long.
"""

from __future__ import annotations

import dataclasses
import datetime
import time
import urllib.parse
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ..store import Store
from . import ago, render, when

HOURS = 24
SLOW = 15 * 60  # a delivery waiting longer than this is worth a look
# The chart's drawing area, in SVG user units (the SVG scales to its box).
WIDTH, HEIGHT, LEFT, BOTTOM, TOP = 1000, 220, 48, 22, 10


@dataclasses.dataclass
class Attention:
    """One thing that needs a person: what is wrong, in plain words, and where to fix it."""

    level: str  # "bad" or "warn"
    text: str
    link: str
    action: str


def hour_start(now: float) -> float:
    """The start of the local hour ``HOURS - 1`` hours before the current one."""
    this_hour = datetime.datetime.fromtimestamp(now).replace(minute=0, second=0, microsecond=0)
    return this_hour.timestamp() - (HOURS - 1) * 3600


def nice_ceiling(value: int) -> int:
    """The smallest of 1, 2, 5, 10, 20, 50, ... at or above ``value`` (the chart's top)."""
    step = 1
    while True:
        for factor in (1, 2, 5):
            if step * factor >= value:
                return step * factor
        step *= 10


def chart(series: dict[str, list[int]], start: float) -> dict[str, Any]:
    """Bars (geometry in SVG units) for events and finished deliveries per hour.

    Each hour has two bars side by side: events received, and deliveries finished,
    delivered with dead stacked on top.
    """
    top = nice_ceiling(max([1, *series["events"],
                            *(d + x for d, x in zip(series["delivered"], series["dead"], strict=True))]))
    plot_w, plot_h = WIDTH - LEFT - 4, HEIGHT - BOTTOM - TOP
    slot = plot_w / HOURS
    bar = slot * 0.36

    def height(count: int) -> float:
        return round(count / top * plot_h, 2)

    base = TOP + plot_h
    hours = []
    for i in range(HOURS):
        at = start + i * 3600
        events, delivered, dead = series["events"][i], series["delivered"][i], series["dead"][i]
        x = LEFT + i * slot + slot * 0.12
        label = datetime.datetime.fromtimestamp(at).strftime("%H:%M")
        hours.append({
            "label": label, "events": events, "delivered": delivered, "dead": dead,
            "title": f"{label}: {events} events received, {delivered} delivered, {dead} dead",
            "bars": [
                {"cls": "bar-events", "x": round(x, 2), "y": base - height(events), "h": height(events)},
                {"cls": "bar-delivered", "x": round(x + bar, 2), "y": base - height(delivered),
                 "h": height(delivered)},
                {"cls": "bar-dead", "x": round(x + bar, 2), "y": base - height(delivered) - height(dead),
                 "h": height(dead)},
            ],
            "tick": i % 3 == 0, "tick_x": round(x + bar, 2),
        })
    grid = [{"y": round(base - height(v), 2), "label": f"{v:,}"} for v in sorted({0, top // 2, top})]
    return {"width": WIDTH, "height": HEIGHT, "left": LEFT, "right": WIDTH - 4, "bar": round(bar, 2),
            "base": base, "label_y": HEIGHT - 6, "hours": hours, "grid": grid,
            "totals": {k: sum(v) for k, v in series.items()}}


def _read(store: Store, now: float) -> dict[str, Any]:
    start = hour_start(now)
    day = now - 86400
    return {"series": store.hourly(start, HOURS), "start": start, "queue": store.queue_state(),
            "rejections": store.rejections_by_source(day), "failures": store.recipe_failures(day)}


def recipe_link(name: str) -> str:
    """The recipe's editor (a name may hold a '/': recipes in sub-folders)."""
    return f"/recipes/{urllib.parse.quote(name)}/edit"


def attention(config: Any, data: dict[str, Any], now: float) -> list[Attention]:
    """Everything that needs a person, worst first."""
    items: list[Attention] = []
    for error in config.sources.errors:
        items.append(Attention("bad", f"sources.yaml has a problem: {error.located()}", "/sources",
                               "Open sources"))
    for source in config.sources.values():
        if source.error is not None:
            items.append(Attention(
                "bad", f"Source “{source.name}” is off: {source.error.message} Its webhooks are "
                       "answered “try again later” until this is fixed.",
                f"/sources/{urllib.parse.quote(source.name, safe='')}", "Fix the source"))
    for recipe in config.recipes.items:
        if recipe.error is not None:
            items.append(Attention("bad", f"Recipe “{recipe.name}” is switched off by an error: "
                                          f"{recipe.error.located()}", recipe_link(recipe.name), "Fix the recipe"))
        elif not recipe.enabled:
            items.append(Attention("warn", f"Recipe “{recipe.name}” is turned off (enabled: false), "
                                           "so it sends nothing.", recipe_link(recipe.name), "Open the recipe"))
    queue = data["queue"]
    if queue["unreviewed"]:
        n = queue["unreviewed"]
        items.append(Attention(
            "bad", f"{n:,} deliver{'y is' if n == 1 else 'ies are'} dead: relay gave up sending "
                   f"{'it' if n == 1 else 'them'}. Fix the cause, then replay, or dismiss.",
            "/log?status=dead", "See the dead deliveries"))
    for failure in data["failures"]:
        n = failure["n"]
        items.append(Attention(
            "bad", f"Recipe “{failure['recipe']}” failed on {n:,} event{'s' if n != 1 else ''} in the "
                   f"last 24 hours. Latest: {failure['message']}", f"/log/events/{failure['event_id']}",
            "See the latest"))
    for rejected in data["rejections"]:
        n = rejected["n"]
        known = rejected["source"] in config.sources
        name = (f"source “{rejected['source']}”" if known
                else f"“{rejected['source']}”, which is not a source in sources.yaml")
        items.append(Attention(
            "warn" if not known else "bad",
            f"{n:,} request{'s' if n != 1 else ''} to {name} {'were' if n != 1 else 'was'} refused in the "
            f"last 24 hours. Latest ({ago(rejected['received_at'], now)}): {rejected['reason']}",
            "/log?" + urllib.parse.urlencode({"status": "rejected", "source": rejected["source"]}),
            "See them"))
    oldest = queue["oldest"]
    if oldest and now - oldest["queued_at"] > SLOW:
        error = f" Last error: {oldest['last_error']}" if oldest["last_error"] else ""
        items.append(Attention(
            "warn", f"A delivery of recipe “{oldest['recipe']}” has waited since {when(oldest['queued_at'])}"
                    f" ({ago(oldest['queued_at'], now)}), {oldest['attempts']} attempt"
                    f"{'s' if oldest['attempts'] != 1 else ''} so far.{error}",
            f"/log/events/{oldest['event_id']}#delivery-{oldest['id']}", "See it"))
    return sorted(items, key=lambda item: item.level != "bad")


async def dashboard_page(request: Request) -> Response:
    runtime = request.state.runtime
    now = time.time()
    data = await runtime.readers.run(lambda s: _read(s, now))
    return render(request, "dashboard.html", nav="dashboard", title="Dashboard",
                  chart=chart(data["series"], data["start"]), queue=data["queue"],
                  attention=attention(runtime.config, data, now))


routes = [
    Route("/", dashboard_page, methods=["GET"]),
]
