"""The log: every event received or refused, every delivery, and what became of each.

``GET /log`` lists events, deliveries or refused requests (the status filter says
which), narrowed by source, recipe, time and words in the payload, newest first in
pages of 50 read by id, so it answers as fast with a million events as with ten. The
filters are query parameters: a filtered log is a link to bookmark or share. With
htmx, changing a filter swaps only the results.

An event's page shows its headers (stored with secrets masked), its body, each
recipe's outcome and every delivery with every attempt. A dead delivery can be
replayed (or dismissed) there; all dead deliveries a filter matches can be replayed
at once, and their progress is shown while they go out.
"""

from __future__ import annotations

import collections
import dataclasses
import datetime
import json
import secrets
import sqlite3
import time
import urllib.parse
from collections.abc import Mapping
from typing import Any

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from ..store import Store
from . import render
from .auth import safe_next

PAGE = 50
REPLAY_BATCH = 500  # dead deliveries replayed per transaction: ingest goes on in between
PERIODS = {"1h": ("Last hour", 3600), "24h": ("Last 24 hours", 86400),
           "7d": ("Last 7 days", 7 * 86400), "30d": ("Last 30 days", 30 * 86400)}
# One status filter picks both what is listed and which of it.
STATUSES = [
    ("Events received", [("", "All events"), ("accepted", "Accepted"),
                         ("duplicate", "Duplicates (sent again)"),
                         ("ignored", "Ignored (no recipe wanted it)"),
                         ("rejected", "Rejected (refused, not stored)")]),
    ("Deliveries", [("deliveries", "All deliveries"), ("pending", "Waiting for a first try"),
                    ("retrying", "Retrying"), ("delivered", "Delivered"), ("dead", "Dead (relay gave up)")]),
]
VIEWS = {"rejected": "rejections", "deliveries": "deliveries",
         **{status: "deliveries" for status in Store.DELIVERY_STATUSES}}
TABS = [("events", "", "Events"), ("deliveries", "deliveries", "Deliveries"),
        ("rejections", "rejected", "Rejected")]
NOTICES = {
    "replayed": "The delivery is queued again; relay sends it right away.",
    "not-replayed": "That delivery was not replayed: only a dead or delivered one can be. "
                    "It may be on its way already.",
    "dismissed": "Dismissed: relay no longer counts that delivery as waiting for you.",
    "not-dismissed": "That delivery was not dismissed: only a dead one that nobody reviewed yet can be.",
    "none-dead": "No dead delivery matches these filters, so there was nothing to replay.",
}


@dataclasses.dataclass(frozen=True)
class LogFilter:
    """The log's filters, as given in the query string (every value checked)."""

    status: str = ""
    source: str = ""
    recipe: str = ""
    period: str = ""
    since: str = ""  # a datetime-local value, local time: YYYY-MM-DDTHH:MM
    q: str = ""

    @classmethod
    def parse(cls, params: Mapping[str, Any]) -> LogFilter:
        def text(name: str, limit: int = 200) -> str:
            value = params.get(name)
            return value.strip()[:limit] if isinstance(value, str) else ""

        known = {value for _, options in STATUSES for value, _ in options}
        return cls(
            status=text("status") if text("status") in known else "",
            source=text("source"), recipe=text("recipe"),
            period=text("period") if text("period") in PERIODS else "",
            since=text("since", 32), q=text("q", 500))

    @property
    def view(self) -> str:
        return VIEWS.get(self.status, "events")

    def since_time(self, now: float) -> float | None:
        """The earliest time shown: the custom start when it parses, else the period's."""
        start = self.custom_start()
        if start is not None:
            return start
        if self.period:
            return now - PERIODS[self.period][1]
        return None

    def custom_start(self) -> float | None:
        for layout in ("%Y-%m-%dT%H:%M", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d"):
            try:
                return datetime.datetime.strptime(self.since, layout).timestamp()
            except ValueError:
                continue
        return None

    def problem(self) -> str | None:
        if self.since and self.custom_start() is None:
            return (f"The start time {self.since!r} was not understood, so it is not used. "
                    "Pick a date and time, like 2025-06-01T09:00.")
        return None

    def store_args(self, now: float) -> dict[str, Any]:
        """Filters as ``Store.log_*`` takes them."""
        args: dict[str, Any] = {"source": self.source or None, "since": self.since_time(now),
                                "search": self.q or None}
        if self.view != "rejections":
            args.update(recipe=self.recipe or None, status=self.status or None)
        return args

    def replay_args(self, now: float) -> dict[str, Any]:
        """The filters a bulk replay honours (the status is 'dead' by definition)."""
        return {"source": self.source or None, "recipe": self.recipe or None,
                "since": self.since_time(now), "search": self.q or None}

    def params(self, **changes: str) -> dict[str, str]:
        values = {**dataclasses.asdict(self), **changes}
        return {k: v for k, v in values.items() if v}

    def url(self, **changes: str) -> str:
        query = urllib.parse.urlencode(self.params(**changes))
        return "/log" + (f"?{query}" if query else "")

    @property
    def narrowed(self) -> bool:
        return any((self.source, self.recipe, self.period, self.since, self.q))


def _id(value: str | None) -> int | None:
    try:
        number = int(value or "")
    except ValueError:
        return None
    return number if 0 <= number < 2**63 else None


def with_notice(target: str, notice: str, **extra: str) -> str:
    """``target`` (a path on this site) with ``notice=`` and other query values set."""
    parts = urllib.parse.urlsplit(safe_next(target))
    query = [(k, v) for k, v in urllib.parse.parse_qsl(parts.query)
             if k not in ("notice", "replay", *extra)]
    query += [("notice", notice), *extra.items()] if notice else list(extra.items())
    return urllib.parse.urlunsplit(("", "", parts.path, urllib.parse.urlencode(query), ""))


# --- the list ------------------------------------------------------------------------


def _read_page(store: Store, f: LogFilter, before: int | None, after: int | None) -> dict[str, Any]:
    args = f.store_args(time.time())
    page: dict[str, Any] = {"outcomes": {}, "dead_count": 0}
    if f.view == "events":
        page["rows"], page["more"] = store.log_events(**args, before=before, after=after, limit=PAGE)
        page["outcomes"] = store.event_outcomes([r["id"] for r in page["rows"]])
    elif f.view == "deliveries":
        page["rows"], page["more"] = store.log_deliveries(**args, before=before, after=after, limit=PAGE)
        for row in page["rows"]:
            row["state"] = delivery_state(row)
        if f.status in ("deliveries", "dead"):
            page["dead_count"] = store.count_dead_matching(**f.replay_args(time.time()))
    else:
        page["rows"], page["more"] = store.log_rejections(**args, before=before, after=after, limit=PAGE)
    return page


def _pager(f: LogFilter, rows: list[dict[str, Any]], more: bool, before: int | None,
           after: int | None) -> dict[str, str | None]:
    """Links to the newest, newer and older pages (None where there is none)."""
    upward = after is not None and before is None
    paged = before is not None or after is not None
    newer = (more if upward else paged) and rows
    older = (paged if upward else more) and rows
    return {
        "newest": f.url() if paged else None,
        "newer": f.url(after=str(rows[0]["id"])) if newer else None,
        "older": f.url(before=str(rows[-1]["id"])) if older else None,
    }


async def log_page(request: Request) -> Response:
    runtime = request.state.runtime
    f = LogFilter.parse(request.query_params)
    before, after = _id(request.query_params.get("before")), _id(request.query_params.get("after"))
    problem = f.problem()
    try:
        page = await runtime.readers.run(lambda s: _read_page(s, f, before, after))
    except sqlite3.OperationalError as e:
        if "fts5" not in str(e):
            raise
        page = {"rows": [], "more": False, "outcomes": {}, "dead_count": 0}
        problem = "relay could not search for those words. Try fewer or simpler words."
    config = runtime.config
    replay_token = request.query_params.get("replay", "")
    context = {
        "f": f, "view": f.view, **page, "problem": problem,
        "pager": _pager(f, page["rows"], page["more"], before, after),
        "here": request.url.path + (f"?{request.url.query}" if request.url.query else ""),
        "statuses": STATUSES, "periods": PERIODS,
        "tabs": [(view, f.url(status=status), label) for view, status, label in TABS],
        "sources": sorted(set(config.sources) | ({f.source} if f.source else set())),
        "recipes": sorted({r.name for r in config.recipes.items} | ({f.recipe} if f.recipe else set())),
        "notice": NOTICES.get(request.query_params.get("notice", "")),
        "replay": await _with_counts(request, _progress_context(request, replay_token))
        if replay_token else None,
    }
    htmx = request.headers.get("hx-request") and not request.headers.get("hx-history-restore-request")
    if htmx and request.headers.get("hx-target") == "log-results":
        return render(request, "_log_results.html", oob=True, **context)
    return render(request, "log.html", nav="log", title="Log", oob=False, **context)


# --- one event, one rejection -------------------------------------------------------


def body_text(body: bytes) -> tuple[str, bool]:
    """The body to show: pretty JSON when it is JSON, else the text as it came."""
    text = bytes(body).decode("utf-8", errors="replace")
    try:
        return json.dumps(json.loads(text), indent=2, ensure_ascii=False), True
    except ValueError:
        return text, False


def _json_or(text: str | None, default: Any) -> Any:
    try:
        return json.loads(text) if text else default
    except ValueError:
        return default


def delivery_state(d: dict[str, Any]) -> str:
    """The log's word for a delivery's status: pending, retrying, delivered or dead."""
    if d["status"] in ("delivered", "dead"):
        return str(d["status"])
    return "retrying" if d["attempts"] else "pending"


def _not_found(request: Request, what: str) -> Response:
    return render(request, "error.html", status_code=404, title="Not found",
                  message=f"There is no {what}. It may have been pruned after RELAY_RETENTION; "
                          "the log lists what relay still keeps.")


async def event_page(request: Request) -> Response:
    event_id = request.path_params["event_id"]
    runtime = request.state.runtime
    data = await runtime.readers.run(lambda s: s.event_page(event_id))
    if data is None:
        return _not_found(request, f"event #{event_id}")
    event = data["event"]
    body, is_json = body_text(event["body"])
    for d in data["deliveries"]:
        d["state"] = delivery_state(d)
        d["payload_text"] = json.dumps(_json_or(d["payload"], d["payload"]), indent=2, ensure_ascii=False)
        for attempt in d["attempt_rows"]:
            attempt["headers"] = _json_or(attempt["response_headers"], {})
    return render(
        request, "event.html", nav="log", title=f"Event #{event_id}", event=event,
        headers=_json_or(event["headers"], {}), body=body, is_json=is_json, size=len(event["body"]),
        routes=data["routes"], deliveries=data["deliveries"], duplicates=data["duplicates"],
        here=request.url.path, notice=NOTICES.get(request.query_params.get("notice", "")),
        rejection=None)


async def rejection_page(request: Request) -> Response:
    rejection_id = request.path_params["rejection_id"]
    row = await request.state.runtime.readers.run(lambda s: s.rejection(rejection_id))
    if row is None:
        return _not_found(request, f"rejected request #{rejection_id}")
    body, is_json = body_text(row["body_prefix"])
    return render(request, "event.html", nav="log", title=f"Rejected request #{rejection_id}",
                  rejection=row, headers=_json_or(row["headers"], {}), body=body, is_json=is_json,
                  kept=len(row["body_prefix"]), notice=None)


# --- replay and dismiss ---------------------------------------------------------------


async def _back(request: Request, default: str) -> str:
    form = await request.form()
    target = form.get("next")
    return safe_next(target) if isinstance(target, str) and target else default


async def replay_one(request: Request) -> Response:
    delivery_id = request.path_params["delivery_id"]
    runtime = request.state.runtime
    back = await _back(request, "/log?status=deliveries")
    ids = await runtime.writer.run(lambda s: s.replay(delivery_id=delivery_id))
    if ids:
        runtime.deliverer.wake.set()
    return RedirectResponse(with_notice(back, "replayed" if ids else "not-replayed"), status_code=303)


async def dismiss_one(request: Request) -> Response:
    delivery_id = request.path_params["delivery_id"]
    back = await _back(request, "/log?status=dead")
    ids = await request.state.runtime.writer.run(lambda s: s.dismiss(delivery_id=delivery_id))
    return RedirectResponse(with_notice(back, "dismissed" if ids else "not-dismissed"), status_code=303)


class ReplayBatches:
    """The deliveries of recent bulk replays, by a random token, to show their progress.

    Kept in memory (the last few only): after a restart the log still shows where
    each delivery is, only this one summary is gone.
    """

    KEPT = 50

    def __init__(self) -> None:
        self._batches: collections.OrderedDict[str, tuple[list[int], float]] = collections.OrderedDict()

    def add(self, ids: list[int]) -> str:
        token = secrets.token_urlsafe(9)
        self._batches[token] = (ids, time.time())
        while len(self._batches) > self.KEPT:
            self._batches.popitem(last=False)
        return token

    def get(self, token: str) -> tuple[list[int], float] | None:
        return self._batches.get(token)


def batches(request: Request) -> ReplayBatches:
    state = request.app.state
    found = getattr(state, "log_replays", None)
    if found is None:
        found = state.log_replays = ReplayBatches()
    return found


async def replay_bulk(request: Request) -> Response:
    runtime = request.state.runtime
    f = LogFilter.parse(await request.form())
    now = time.time()
    listed = await runtime.readers.run(lambda s: s.dead_matching(**f.replay_args(now)))
    ids: list[int] = []
    for start in range(0, len(listed), REPLAY_BATCH):
        batch = listed[start:start + REPLAY_BATCH]
        ids += await runtime.writer.run(lambda s: s.replay_still_dead(batch, now))  # noqa: B023
        runtime.deliverer.wake.set()  # the first batch goes out while the next is queued
    listing = f.url(status="deliveries")
    if not ids:
        return RedirectResponse(with_notice(listing, "none-dead"), status_code=303)
    return RedirectResponse(with_notice(listing, "", replay=batches(request).add(ids)), status_code=303)


def _progress_context(request: Request, token: str) -> dict[str, Any]:
    found = batches(request).get(token)
    return {"token": token, "ids": found[0] if found else None, "started": found[1] if found else None}


async def replay_progress(request: Request) -> Response:
    token = request.path_params["token"]
    if not request.headers.get("hx-request"):
        return RedirectResponse(f"/log?status=deliveries&replay={urllib.parse.quote(token)}", status_code=303)
    context = _progress_context(request, token)
    return render(request, "_log_replay.html", replay=await _with_counts(request, context))


async def _with_counts(request: Request, replay: dict[str, Any]) -> dict[str, Any]:
    ids = replay["ids"]
    if ids is None:
        return replay
    counts = await request.state.runtime.readers.run(lambda s: s.progress(ids))
    waiting = counts["pending"] + counts["retrying"]
    return {**replay, **counts, "total": len(ids), "waiting": waiting, "done": waiting == 0,
            "finished": counts["delivered"] + counts["dead"]}


routes = [
    Route("/log", log_page, methods=["GET"]),
    Route("/log/events/{event_id:int}", event_page, methods=["GET"]),
    Route("/log/rejections/{rejection_id:int}", rejection_page, methods=["GET"]),
    Route("/log/deliveries/{delivery_id:int}/replay", replay_one, methods=["POST"]),
    Route("/log/deliveries/{delivery_id:int}/dismiss", dismiss_one, methods=["POST"]),
    Route("/log/replay", replay_bulk, methods=["POST"]),
    Route("/log/replay/{token}", replay_progress, methods=["GET"]),
]
