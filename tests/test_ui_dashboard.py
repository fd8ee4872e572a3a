"""The dashboard: counts, the hourly chart, and what needs attention, each with its link."""

from __future__ import annotations

import contextlib
import datetime
import json
import re
import time
from collections.abc import Callable
from pathlib import Path

from conftest import RelayServer, Reply, Sink, sample, sign, wait_until, write_recipe, write_sources
from relay.ui.dashboard import HOURS, chart, hour_start, nice_ceiling

QUICKET = json.loads(sample("quicket/checkout_completed.json"))
TITO = sample("tito/ticket.completed.json")
HOUR_ROW = re.compile(r"<tr><td>\d\d:\d\d</td><td>(\d+)</td><td>(\d+)</td><td>(\d+)</td></tr>")


def post_quicket(relay: RelayServer, reference: str) -> None:
    response = relay.send("quicket", "quicket", json.dumps(dict(QUICKET, reference=reference)).encode())
    assert response.status_code == 200, response.text


def post_tito(relay: RelayServer, *, secret: str | None = None) -> int:
    path, headers = sign("tito", "tito", TITO, secret=secret)
    return relay.post(path, TITO, {**headers, "X-Webhook-Name": "ticket.completed"}).status_code


def test_dashboard_counts_chart_and_attention(make_relay: Callable[..., RelayServer], tmp_path: Path,
                                              sink: Sink) -> None:
    bad = Sink()
    bad.default = Reply(400)
    folder = tmp_path / "recipes"
    write_sources(folder, extra="broken:\n  platform: tito\n  secrets: [\"${NOT_SET_ANYWHERE}\"]\n")
    write_recipe(folder, "quicket-crm", f"source: quicket\nfields:\n  reference: reference\n"
                                        f"to:\n  - type: http\n    url: {sink.url}/crm\n")
    write_recipe(folder, "tito-crm", f"source: tito\nfields:\n  email: email\n"
                                     f"to:\n  - type: http\n    url: {bad.url}/crm\n")
    write_recipe(folder, "off", f"source: quicket\nenabled: false\nfields:\n  a: reference\n"
                                f"to:\n  - type: http\n    url: {sink.url}/off\n")
    write_recipe(folder, "failing", f"source: quicket\nfields:\n  name: \"{{{{ no_such_field }}}}\"\n"
                                    f"to:\n  - type: http\n    url: {sink.url}/failing\n")
    write_recipe(folder, "broken", "source: [quicket\n")
    relay = make_relay()
    try:
        post_quicket(relay, "D-1")
        post_quicket(relay, "D-2")
        assert post_tito(relay) == 200
        assert post_tito(relay, secret="not-the-secret") == 401
        relay.settled(3)
        wait_until(lambda: len(relay.rows("SELECT * FROM routes WHERE recipe = 'failing'")) == 2)
        with contextlib.closing(relay.login()) as ui:
            page = ui.get("/")
    finally:
        bad.close()
    assert page.status_code == 200
    html = page.text
    assert re.search(r'id="count-dead">1<', html) and re.search(r'id="count-retrying">0<', html)
    hours = [tuple(map(int, row)) for row in HOUR_ROW.findall(html)]
    assert len(hours) == HOURS
    assert sum(h[0] for h in hours) == 3 and sum(h[1] for h in hours) == 2 and sum(h[2] for h in hours) == 1
    assert '<svg viewBox="0 0 ' in html and 'class="bar-events"' in html and 'class="bar-dead"' in html

    attention = re.search(r'<ul class="attention">(.*?)</ul>', html, re.S)
    assert attention
    items = attention.group(1)
    assert "Recipe “broken” is switched off by an error" in items and 'href="/recipes/broken/edit"' in items
    assert "Recipe “off” is turned off (enabled: false)" in items and 'href="/recipes/off/edit"' in items
    assert "Source “broken” is off" in items and "NOT_SET_ANYWHERE" in items and 'href="/sources/broken"' in items
    assert "Recipe “failing” failed on 2 events in the last 24 hours" in items
    assert "no_such_field" in items
    assert "1 request to source “tito” was refused in the last 24 hours" in items
    assert 'href="/log?status=rejected&amp;source=tito"' in items
    assert "1 delivery is dead" in items and 'href="/log?status=dead"' in items
    # The Content-Security-Policy allows no inline style or script.
    assert " style=" not in html and not re.search(r"<script(?![^>]*\bsrc=)", html)


def test_a_delivery_waiting_long_needs_attention(make_relay: Callable[..., RelayServer], tmp_path: Path,
                                                 sink: Sink) -> None:
    sink.default = Reply(503)
    folder = tmp_path / "recipes"
    write_sources(folder)
    write_recipe(folder, "crm", f"source: quicket\nfields:\n  reference: reference\n"
                                f"to:\n  - type: http\n    url: {sink.url}/crm\n")
    relay = make_relay()
    post_quicket(relay, "W-1")
    wait_until(lambda: relay.rows("SELECT * FROM deliveries WHERE attempts > 0"))
    store = relay.db()
    try:  # as if it had been failing for an hour
        store.db.execute("UPDATE deliveries SET queued_at = ?", [time.time() - 3600])
    finally:
        store.close()
    with contextlib.closing(relay.login()) as ui:
        html = ui.get("/").text
    assert re.search(r'id="count-retrying">1<', html)
    assert "A delivery of recipe “crm” has waited since" in html and "1 hour ago" in html
    assert "HTTP 503" in html and "#delivery-" in html


def test_nothing_needs_attention_on_a_quiet_relay(make_relay: Callable[..., RelayServer],
                                                  tmp_path: Path) -> None:
    write_sources(tmp_path / "recipes")
    relay = make_relay()
    with contextlib.closing(relay.login()) as ui:
        html = ui.get("/").text
    assert "Nothing needs your attention" in html
    assert re.search(r'id="count-dead">0<', html)


def test_chart_geometry() -> None:
    assert [nice_ceiling(n) for n in (0, 1, 2, 3, 6, 11, 120, 999)] == [1, 1, 2, 5, 10, 20, 200, 1000]
    now = time.time()
    start = hour_start(now)
    assert datetime.datetime.fromtimestamp(start).minute == 0
    assert now - 24 * 3600 < start <= now - 23 * 3600
    series = {"events": [0] * HOURS, "delivered": [0] * HOURS, "dead": [0] * HOURS}
    series["events"][-1], series["delivered"][-1], series["dead"][-1] = 8, 6, 4
    drawn = chart(series, start)
    assert drawn["totals"] == {"events": 8, "delivered": 6, "dead": 4}
    events, delivered, dead = drawn["hours"][-1]["bars"]
    assert events["h"] == 8 / 10 * (drawn["base"] - 10) and events["y"] + events["h"] == drawn["base"]
    assert dead["y"] + dead["h"] == delivered["y"]  # dead stacked on delivered
    assert all(bar["h"] == 0 for hour in drawn["hours"][:-1] for bar in hour["bars"])
    assert [g["label"] for g in drawn["grid"]] == ["0", "5", "10"]
