"""``GET /metrics``: what relay has done and what it is holding, for Prometheus.

Counters and histograms live in one ``CollectorRegistry`` per app (never the
process-wide one, so that many apps can run in one process). The queue's depth and
the age of its oldest pending delivery are read from the database at scrape time,
so they are right after a restart. Labels hold source names and destination types
only: never a URL, a header or a token.
"""

from __future__ import annotations

import asyncio
import hmac
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

if TYPE_CHECKING:
    from .app import Runtime

#: the source label of requests to a name that is not in sources.yaml: anyone can
#: post to any path, and each new label value would be a new series.
UNKNOWN_SOURCE = "(unknown)"

# From a quick webhook to a delivery that waited out a day of retries.
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 4 * 3600, 86400)
ATTEMPT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class QueueCollector(Collector):
    """Queue depth and the oldest pending delivery's age, read when scraped.

    Uses its own short-lived read-only connection (scrapes run in a worker thread),
    so a scrape never waits behind the writer or blocks the event loop.
    """

    def __init__(self, db: Path | str) -> None:
        self.db = Path(db)

    def collect(self) -> Iterator[Metric]:
        depth = GaugeMetricFamily("relay_queue_deliveries",
                                  "Deliveries waiting to be sent (pending) or on the wire (sending).",
                                  labels=["state"])
        oldest = GaugeMetricFamily("relay_queue_oldest_pending_age_seconds",
                                   "Seconds since the oldest pending delivery was queued (0 when none).")
        counts = {"pending": 0, "sending": 0}
        first: float | None = None
        conn = sqlite3.connect(f"{self.db.resolve().as_uri()}?mode=ro", uri=True, timeout=5)
        try:
            for state, n in conn.execute(
                    "SELECT status, COUNT(*) FROM deliveries WHERE status IN ('pending', 'sending')"
                    " GROUP BY status"):
                counts[state] = int(n)
            (first,) = conn.execute(
                "SELECT MIN(queued_at) FROM deliveries WHERE status = 'pending'").fetchone()
        finally:
            conn.close()
        for state, n in counts.items():
            depth.add_metric([state], n)
        oldest.add_metric([], max(0.0, time.time() - first) if first is not None else 0.0)
        yield depth
        yield oldest


class Metrics:
    """One app's metrics: what ingest and the deliverer count, plus the queue."""

    def __init__(self, db: Path | str | None = None) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.events = Counter(
            "relay_events_received", "Webhooks received, by source and outcome "
            "(accepted, duplicate, ignored, rejected) and the HTTP status relay answered.",
            ["source", "outcome", "status"], registry=self.registry)
        self.deliveries = Counter(
            "relay_delivery_attempts", "Delivery attempts by destination type and outcome "
            "(delivered, retry, dead).", ["destination_type", "outcome"], registry=self.registry)
        self.latency = Histogram(
            "relay_delivery_latency_seconds", "Seconds from queued to delivered.",
            ["destination_type"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.attempt_duration = Histogram(
            "relay_delivery_attempt_duration_seconds",
            "Seconds one attempt took (one request, or one batch for batching destinations).",
            ["destination_type"], buckets=ATTEMPT_BUCKETS, registry=self.registry)
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}
        if db is not None:
            self.registry.register(QueueCollector(db))

    def received(self, source: str, outcome: str, status: int) -> None:
        self._child(self.events, source, outcome, str(status)).inc()

    def attempted(self, dest_type: str, outcome: str, queued_at: float,
                  now: float | None = None) -> None:
        self._child(self.deliveries, dest_type, outcome).inc()
        if outcome == "delivered":
            now = time.time() if now is None else now
            self._child(self.latency, dest_type).observe(max(0.0, now - queued_at))

    def attempt_took(self, dest_type: str, seconds: float) -> None:
        self._child(self.attempt_duration, dest_type).observe(seconds)

    def _child(self, metric: Any, *labels: str) -> Any:
        """``metric.labels(*labels)``, looked up once: the labels are few (sources,
        outcomes, statuses, destination types), and each lookup checks and locks."""
        key = (id(metric), labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def render(self) -> bytes:
        return generate_latest(self.registry)


def authorized(request: Request, token: str | None) -> bool:
    """No token set: public (like /healthz). Else ``Authorization: Bearer <token>``."""
    if not token:
        return True
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token.encode())


async def metrics(request: Request) -> Response:
    runtime: Runtime = request.state.runtime
    if not authorized(request, runtime.settings.metrics_token):
        return JSONResponse(
            {"error": "/metrics needs the header Authorization: Bearer <RELAY_METRICS_TOKEN>."},
            status_code=401, headers={"WWW-Authenticate": "Bearer"})
    try:
        body = await asyncio.to_thread(runtime.metrics.render)
    except sqlite3.Error as e:
        return JSONResponse({"error": f"the database cannot be read: {e}"}, status_code=503)
    return Response(body, media_type=CONTENT_TYPE_LATEST)
