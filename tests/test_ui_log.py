"""The log in the web UI: filters, search, paging, an event's page, replay and dismiss.

Events are posted signed to a real relay on loopback, from two sources: Quicket's go
to a sink that accepts them, Tito's to one that answers 400, so they die. Fixing that
sink and replaying (one, or all a filter matches) brings them through.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from filldb import fill as fill_db

from conftest import (
    SECRETS,
    RelayServer,
    Reply,
    Sink,
    UIClient,
    open_ui,
    sample,
    sign,
    wait_until,
    write_recipe,
    write_sources,
)
from relay.retention import Retention
from relay.settings import Settings
from relay.store import Store, Writer
from relay.ui.queries import LogQueries

QUICKET = json.loads(sample("quicket/checkout_completed.json"))
TITO = json.loads(sample("tito/ticket.completed.json"))
SCRIPT = "<script>alert(1)</script>"
IMG = '"><img src=x onerror=alert(1)>'
ROW = re.compile(r'class="log-row" data-id="(\d+)"')


def quicket(relay: RelayServer, reference: str, headers: dict[str, str] | None = None,
            **fields: Any) -> int:
    """Post a signed Quicket checkout; returns its event id."""
    body = json.dumps(dict(QUICKET, reference=reference, **fields)).encode()
    path, signed = sign("quicket", "quicket", body)
    response = relay.post(path, body, {**signed, **(headers or {})})
    assert response.status_code == 200, response.text
    return int(response.json()["event"])


def tito(relay: RelayServer, slug: str, event_type: str = "ticket.completed", **fields: Any) -> int:
    body = json.dumps(dict(TITO, slug=slug, reference=slug, **fields)).encode()
    path, headers = sign("tito", "tito", body)
    response = relay.post(path, body, {**headers, "X-Webhook-Name": event_type})
    assert response.status_code == 200, response.text
    return int(response.json()["event"])


def row_ids(page: httpx.Response) -> list[int]:
    assert page.status_code == 200, page.text
    return [int(i) for i in ROW.findall(page.text)]


class Traffic:
    """A relay with three Quicket events delivered and two Tito events dead."""

    def __init__(self, relay: RelayServer, ui: UIClient, bad: Sink) -> None:
        self.relay, self.ui, self.bad = relay, ui, bad
        self.plain = quicket(relay, "Q-1")
        self.findme = quicket(relay, "Q-2", email="findme@example.org", name="Find Me")
        self.xss = quicket(relay, "Q-3", headers={"X-Note": SCRIPT + IMG}, email=SCRIPT, name=IMG)
        self.tito = [tito(relay, "t-1"), tito(relay, "t-2")]
        self.deliveries = relay.settled(5)
        # The text search takes routed events in batches, a moment after routing.
        wait_until(lambda: relay.rows("SELECT COUNT(*) AS n FROM events_fts_docsize")[0]["n"] == 5)

    def delivery_of(self, event_id: int) -> dict[str, Any]:
        [row] = self.relay.rows("SELECT * FROM deliveries WHERE event_id = ?", [event_id])
        return row

    def status(self, delivery_id: int) -> str:
        return str(self.relay.rows("SELECT status FROM deliveries WHERE id = ?", [delivery_id])[0]["status"])


@pytest.fixture
def traffic(make_relay: Callable[..., RelayServer], tmp_path: Path, sink: Sink) -> Iterator[Traffic]:
    bad = Sink()
    bad.default = Reply(400, json.dumps({"error": "email rejected by the CRM " + SCRIPT}).encode())
    folder = tmp_path / "recipes"
    write_sources(folder)
    write_recipe(folder, "quicket-crm", f"""\
source: quicket
events: ["checkout_completed"]
fields:
  reference: reference
  email: email
to:
  - type: http
    url: {sink.url}/crm
""")
    write_recipe(folder, "tito-crm", f"""\
source: tito
events: ["ticket.*"]
fields:
  email: email
to:
  - type: http
    url: {bad.url}/crm
""")
    relay = make_relay()
    ui = relay.login()
    try:
        yield Traffic(relay, ui, bad)
    finally:
        ui.close()
        bad.close()


# --- filters, search, pages ---------------------------------------------------------


def test_filters_pick_the_right_rows(traffic: Traffic) -> None:
    ui, t = traffic.ui, traffic
    quickets = [t.xss, t.findme, t.plain]
    assert row_ids(ui.get("/log")) == [*t.tito[::-1], *quickets]
    assert row_ids(ui.get("/log?source=tito")) == t.tito[::-1]
    assert row_ids(ui.get("/log?source=quicket&status=accepted")) == quickets
    assert row_ids(ui.get("/log?recipe=tito-crm")) == t.tito[::-1]
    assert row_ids(ui.get("/log?status=duplicate")) == []

    dead = {t.delivery_of(e)["id"] for e in t.tito}
    delivered = {t.delivery_of(e)["id"] for e in quickets}
    assert set(row_ids(ui.get("/log?status=dead"))) == dead
    assert set(row_ids(ui.get("/log?status=delivered"))) == delivered
    assert set(row_ids(ui.get("/log?status=deliveries&recipe=quicket-crm"))) == delivered
    assert row_ids(ui.get("/log?status=dead&source=quicket")) == []
    assert row_ids(ui.get("/log?status=retrying")) == []
    page = ui.get("/log?status=dead&source=tito")
    assert "HTTP 400: the destination refused the request" in page.text
    assert "Replay all 2 dead deliveries matching this filter" in page.text

    assert len(row_ids(ui.get("/log?period=1h"))) == 5
    assert row_ids(ui.get("/log?since=2999-01-01T00:00")) == []
    odd = ui.get("/log?since=yesterday")
    assert len(row_ids(odd)) == 5 and "was not understood" in odd.text

    # A redelivery, and a request with a wrong token: a duplicate and a rejection.
    body = json.dumps(dict(QUICKET, reference="Q-1")).encode()
    path, headers = sign("quicket", "quicket", body)
    assert t.relay.post(path, body, headers).json()["status"] == "duplicate"
    [duplicate] = row_ids(ui.get("/log?status=duplicate"))
    assert f'/log/events/{t.plain}"' in ui.get("/log?status=duplicate").text
    refused = t.relay.post("/hooks/quicket/wrong-token", body, {"Content-Type": "application/json"})
    assert refused.status_code == 401
    [rejected] = row_ids(ui.get("/log?status=rejected"))
    assert row_ids(ui.get("/log?status=rejected&source=tito")) == []
    page = ui.get(f"/log/rejections/{rejected}")
    assert page.status_code == 200 and "Rejected request" in page.text
    assert "The token in the URL is not this source&#39;s token" in page.text  # why, in plain words
    assert "&#34;reference&#34;: &#34;Q-1&#34;" in page.text  # the start of the body is kept
    event = ui.get(f"/log/events/{duplicate}")
    assert f"repeat of <a href=\"/log/events/{t.plain}\">" in event.text


def test_htmx_swaps_only_the_results(traffic: Traffic) -> None:
    page = traffic.ui.get("/log?source=tito", headers={"HX-Request": "true", "HX-Target": "log-results"})
    assert row_ids(page) == traffic.tito[::-1]
    assert "<html" not in page.text and 'id="log-tabs" class="tabs" aria-label="What to list" hx-swap-oob="true"' \
        in page.text


def test_search_finds_an_email_and_nothing_else(traffic: Traffic) -> None:
    ui, t = traffic.ui, traffic
    assert row_ids(ui.get("/log", params={"q": "findme@example.org"})) == [t.findme]
    assert row_ids(ui.get("/log", params={"q": "FINDME"})) == [t.findme]
    assert row_ids(ui.get("/log", params={"q": "find"})) == [t.findme]  # the start of a word
    assert row_ids(ui.get("/log", params={"q": "nobody@example.org"})) == []
    assert row_ids(ui.get("/log", params={"q": "findme@example.org", "source": "tito"})) == []
    delivery = t.delivery_of(t.findme)["id"]
    assert row_ids(ui.get("/log", params={"q": "findme@example.org", "status": "delivered"})) == [delivery]
    assert row_ids(ui.get("/log", params={"q": "findme@example.org", "status": "dead"})) == []
    # FTS5 syntax is searched for as text, never run.
    for raw in ['"', "findme OR winter", "NEAR(a b)", "*", "email:findme", "a AND", "-", "(("]:
        assert ui.get("/log", params={"q": raw}).status_code == 200, raw
    assert row_ids(ui.get("/log", params={"q": "findme OR winter"})) == []


def test_an_event_no_recipe_takes_is_stored_routed_and_found(traffic: Traffic) -> None:
    t = traffic
    # tito-crm takes "ticket.*" only: nothing will route this one, so it is stored routed.
    ignored = tito(t.relay, "t-nobody", event_type="checkin.created", email="nobody-wants@example.org")
    [event] = t.relay.rows("SELECT status, received_at, routed_at FROM events WHERE id = ?", [ignored])
    assert event["status"] == "ignored" and event["routed_at"] == event["received_at"]
    assert t.relay.rows("SELECT * FROM routes WHERE event_id = ?", [ignored]) == []
    # Nothing wakes the router for it; the search still gets it within a second or so.
    found = wait_until(lambda: row_ids(t.ui.get("/log", params={"q": "nobody-wants@example.org"})))
    assert found == [ignored]


def test_pagination_walks_every_row_once(make_relay: Callable[..., RelayServer], tmp_path: Path,
                                         sink: Sink) -> None:
    folder = tmp_path / "recipes"
    write_sources(folder)
    write_recipe(folder, "crm", f"""\
source: quicket
fields:
  reference: reference
to:
  - type: http
    url: {sink.url}/crm
""")
    relay = make_relay()
    ids = [quicket(relay, f"P-{i}", email=f"page{i}@example.org") for i in range(61)]
    relay.settled(61)
    with contextlib.closing(relay.login()) as ui:
        seen, url = [], "/log"
        while url:
            page = ui.get(url)
            seen += row_ids(page)
            found = re.search(r'href="([^"]+)"[^>]*rel="next"', page.text)
            url = found.group(1).replace("&amp;", "&") if found else ""
        assert seen == ids[::-1]
        # And back up from the last page with "Newer".
        back = re.search(r'href="([^"]+)"[^>]*rel="prev"', ui.get(f"/log?before={ids[10]}").text)
        assert back and row_ids(ui.get(back.group(1).replace("&amp;", "&"))) == ids[10:60][::-1]

    # Every list, both directions, with a small page: nothing twice, nothing missed.
    store = relay.db()
    try:
        for name, kwargs in [("log_events", {}), ("log_deliveries", {}),
                             ("log_events", {"search": "example"}), ("log_deliveries", {"search": "example"}),
                             ("log_deliveries", {"search": "P", "status": "delivered"})]:
            walked, before = [], None
            while True:
                rows, more = getattr(store, name)(**kwargs, before=before, limit=7)
                walked += [r["id"] for r in rows]
                if not more:
                    break
                before = rows[-1]["id"]
            assert len(walked) == 61 and walked == sorted(walked, reverse=True), (name, kwargs)
            upward, after = [], walked[-1]
            while True:
                rows, more = getattr(store, name)(**kwargs, after=after, limit=7)
                upward = [r["id"] for r in rows] + upward
                if not more:
                    break
                after = rows[0]["id"]
            assert upward == walked[:-1], (name, kwargs)
    finally:
        store.close()


# --- the event page ------------------------------------------------------------------


def test_payloads_and_headers_are_shown_escaped(traffic: Traffic) -> None:
    ui, t = traffic.ui, traffic
    ignored = tito(t.relay, "t-xss", event_type=SCRIPT + IMG)  # no recipe takes this type
    pages = [ui.get("/log"), ui.get("/log", params={"q": SCRIPT + IMG}), ui.get("/log?status=dead"),
             ui.get(f"/log/events/{t.xss}"), ui.get(f"/log/events/{ignored}"),
             ui.get(f"/log/events/{t.tito[0]}")]
    for page in pages:
        assert page.status_code == 200
        assert SCRIPT not in page.text and "<img src=x" not in page.text, page.url
    for page in (pages[0], pages[1], pages[3], pages[4], pages[5]):  # its type, the words, body, answer
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page.text, page.url
    event = pages[3].text
    assert "&#34;&gt;&lt;img src=x onerror=alert(1)&gt;" in event  # in the header
    assert "\\&#34;&gt;&lt;img src=x onerror=alert(1)&gt;" in event  # in the JSON body


def test_event_page_shows_what_happened(traffic: Traffic) -> None:
    ui, t = traffic.ui, traffic
    secret = "Bearer super-secret-value-123"
    event_id = quicket(t.relay, "Q-9", headers={"Authorization": secret, "X-Api-Key": "key-987654321"})
    t.relay.settled(6)
    page = ui.get(f"/log/events/{event_id}").text
    assert "authorization" in page and "[redacted]" in page and "x-relay-path-token" in page
    for value in (secret, "super-secret-value-123", "key-987654321", SECRETS["quicket"]):
        assert value not in page
    assert "quicket-crm" in page and "1 delivery queued" in page and "delivered" in page
    assert "&#34;reference&#34;: &#34;Q-9&#34;" in page  # what was sent, and the body, pretty

    dead = ui.get(f"/log/events/{t.tito[0]}").text
    assert "relay gave up after 1 attempt" in dead and "HTTP 400" in dead
    assert "email rejected by the CRM" in dead  # the destination's own answer
    assert ">Replay</button>" in dead and ">Dismiss</button>" in dead

    assert ui.get("/log/events/999999").status_code == 404
    assert ui.get("/log/rejections/999999").status_code == 404


def test_recipe_outcomes_filtered_and_failed(make_relay: Callable[..., RelayServer], tmp_path: Path,
                                             sink: Sink) -> None:
    folder = tmp_path / "recipes"
    write_sources(folder)
    write_recipe(folder, "paid-only", f"""\
source: quicket
when: "amount > `1000`"
fields:
  reference: reference
to:
  - type: http
    url: {sink.url}/crm
""")
    write_recipe(folder, "typo", f"""\
source: quicket
fields:
  name: "{{{{ no_such_field }}}}"
to:
  - type: http
    url: {sink.url}/crm
""")
    relay = make_relay()
    event_id = quicket(relay, "F-1")
    wait_until(lambda: len(relay.rows("SELECT * FROM routes WHERE event_id = ?", [event_id])) == 2)
    with contextlib.closing(relay.login()) as ui:
        page = ui.get(f"/log/events/{event_id}").text
        assert "filtered out" in page and "was false for this event" in page
        assert "failed" in page and "no_such_field" in page
        listed = ui.get("/log").text
        assert "1 filtered out" in listed and "1 recipe error" in listed


# --- replay and dismiss --------------------------------------------------------------


def test_replay_one_dead_delivery_after_fixing_the_sink(traffic: Traffic) -> None:
    ui, t = traffic.ui, traffic
    first, second = (t.delivery_of(e)["id"] for e in t.tito)
    t.bad.default = Reply(200)
    response = ui.post(f"/log/deliveries/{first}/replay", data={"next": f"/log/events/{t.tito[0]}"})
    assert response.status_code == 303
    assert response.headers["location"] == f"/log/events/{t.tito[0]}?notice=replayed"
    wait_until(lambda: t.status(first) == "delivered")
    page = ui.get(f"/log/events/{t.tito[0]}?notice=replayed").text
    assert "The delivery is queued again" in page and "after 2 attempts" in page
    assert t.status(second) == "dead"

    # Dismissed: reviewed, no longer waiting for a person; a second time does nothing.
    response = ui.post(f"/log/deliveries/{second}/dismiss", data={"next": "/log?status=dead"})
    assert response.headers["location"] == "/log?status=dead&notice=dismissed"
    assert t.relay.rows("SELECT reviewed_at FROM deliveries WHERE id = ?", [second])[0]["reviewed_at"]
    again = ui.post(f"/log/deliveries/{second}/dismiss", data={"next": "/log?status=dead"})
    assert again.headers["location"].endswith("notice=not-dismissed")
    assert "dismissed" in ui.get("/log?status=dead").text
    # Only a dead or delivered delivery can be replayed; an unknown one is no error.
    assert ui.post("/log/deliveries/999999/replay").headers["location"].endswith("notice=not-replayed")
    # Somewhere else than relay is never where a form sends you back to.
    assert ui.post(f"/log/deliveries/{first}/replay",
                   data={"next": "https://evil.example/"}).headers["location"] == "/?notice=replayed"


def test_bulk_replay_shows_progress_until_done(traffic: Traffic) -> None:
    ui, t = traffic.ui, traffic
    dead = {t.delivery_of(e)["id"] for e in t.tito}
    response = ui.post("/log/replay", data={"source": "quicket"})  # no dead one there
    assert response.headers["location"] == "/log?status=deliveries&source=quicket&notice=none-dead"
    t.bad.default = Reply(200)
    response = ui.post("/log/replay", data={"source": "tito", "recipe": "tito-crm", "period": "24h"})
    assert response.status_code == 303
    location = response.headers["location"]
    token = re.search(r"replay=([\w-]+)", location)
    assert token and location.startswith("/log?status=deliveries&source=tito&recipe=tito-crm&period=24h")
    assert "Replaying 2 dead deliveries" in ui.get(location).text or "Replay finished" in ui.get(location).text

    def progress() -> str | None:
        text = ui.get(f"/log/replay/{token.group(1)}", headers={"HX-Request": "true"}).text
        return text if "Replay finished" in text else None

    done = wait_until(progress)
    assert 'data-count="2">2 delivered' in done and "hx-trigger" not in done
    assert {t.status(i) for i in dead} == {"delivered"}
    store = t.relay.db()
    try:  # a batch listed as dead but delivered since is not sent again
        assert store.replay_still_dead(sorted(dead)) == [] and {t.status(i) for i in dead} == {"delivered"}
    finally:
        store.close()
    gone = ui.get("/log/replay/unknown-token", headers={"HX-Request": "true"}).text
    assert "no longer shown" in gone
    assert ui.get(f"/log/replay/{token.group(1)}").status_code == 303


def test_log_needs_a_session_and_its_forms_a_token(traffic: Traffic) -> None:
    anonymous = httpx.Client(base_url=traffic.relay.url)
    try:
        assert anonymous.get("/log").status_code == 303
        assert anonymous.get(f"/log/events/{traffic.plain}").status_code == 303
        assert anonymous.post("/log/replay", data={}).status_code == 401
    finally:
        anonymous.close()
    delivery = traffic.delivery_of(traffic.tito[0])["id"]
    without = traffic.ui.post(f"/log/deliveries/{delivery}/replay", headers={"X-CSRF-Token": "wrong"})
    assert without.status_code == 403 and traffic.status(delivery) == "dead"


# --- the search index stays in step ------------------------------------------------------


def integrity(path: Path) -> None:
    """FTS5's own check, comparing the index with the events it should hold (rank 1)."""
    conn = sqlite3.connect(str(path))
    try:
        conn.execute("INSERT INTO events_fts (events_fts, rank) VALUES ('integrity-check', 1)")
    finally:
        conn.close()


def test_counting_the_dead_a_filter_matches_is_given_up_in_time(
        make_relay: Callable[..., RelayServer], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The log offers to replay what a filter matches; counting them gets a time budget
    (a search for the start of a common name can match a quarter of a big log), and
    past it the offer stands without a number. The replay itself takes them all."""
    db = tmp_path / "relay.db"
    fill_db(db, 2000, received_from=time.time() - 3600)
    with contextlib.closing(sqlite3.connect(db)) as conn, conn:
        conn.execute("UPDATE deliveries SET status = 'dead' WHERE id % 2 = 0")
    store = Store(db)
    try:
        assert store.count_dead_matching(budget=60) == 1000
        assert store.count_dead_matching(budget=0) is None
        assert len(store.dead_matching()) == 1000
    finally:
        store.close()

    write_sources(tmp_path / "recipes")
    ui = make_relay().login()
    try:
        assert "Replay all 1000 dead deliveries matching this filter" in ui.get("/log?status=dead").text
        monkeypatch.setattr(LogQueries, "COUNT_BUDGET", 0.0)
        page = ui.get("/log?status=dead")
        assert "Replay all dead deliveries matching this filter" in page.text
        assert len(row_ids(page)) == 50  # the page itself is whole
        asked = time.time()
        ui.post("/log/replay", data={"status": "dead"})
        with contextlib.closing(sqlite3.connect(db)) as conn:  # every one of them was queued again
            assert conn.execute("SELECT COUNT(*) FROM deliveries WHERE queued_at >= ?",
                                [asked]).fetchone() == (1000,)
    finally:
        ui.close()


def test_pruning_keeps_the_search_index_consistent(traffic: Traffic) -> None:
    ui, t = traffic.ui, traffic
    db = Path(t.relay.settings.db)
    integrity(db)
    assert row_ids(ui.get("/log", params={"q": "findme@example.org"})) == [t.findme]
    ui.post("/log/deliveries/0/dismiss")  # nothing; then dismiss every dead one so all may go
    for event_id in t.tito:
        ui.post(f"/log/deliveries/{t.delivery_of(event_id)['id']}/dismiss")
    settings = Settings.from_env(environ={}, db=db, retention=3600.0, recipes=t.relay.settings.recipes)
    writer = Writer(db)
    try:
        pruned = asyncio.run(Retention(writer, settings, pause=0).prune(now=time.time() + 7200))
    finally:
        writer.close()
    assert pruned.events == 5
    integrity(db)
    assert row_ids(ui.get("/log", params={"q": "findme@example.org"})) == []
    assert row_ids(ui.get("/log")) == []
    # New events are searchable again, and the index still checks out.
    again = quicket(t.relay, "Q-after", email="after@example.org")
    wait_until(lambda: row_ids(ui.get("/log", params={"q": "after@example.org"})) == [again])
    integrity(db)


def test_an_upgraded_database_gets_its_events_indexed(tmp_path: Path) -> None:
    """Migration 006 indexes the events already there (and skips redeliveries)."""
    path = tmp_path / "old.db"
    store = Store(path)
    store.close()
    conn = sqlite3.connect(str(path))
    conn.executescript("DROP TABLE events_fts; DROP VIEW events_searchable;"
                       " DELETE FROM _sqlite_migrations WHERE name = '006_search';"
                       " DROP INDEX events_source; DROP INDEX deliveries_dead;"
                       " DROP INDEX deliveries_recipe;")
    rows = [(i, f"k{i}", "duplicate" if i == 3 else "accepted", 2 if i == 3 else None,
             json.dumps({"email": f"old{i}@example.org"}).encode(), None if i == 4 else 1.0)
            for i in range(1, 5)]
    conn.executemany("INSERT INTO events (id, source, platform, type, dedup_key, status, duplicate_of,"
                     " received_at, headers, body, routed_at) VALUES (?, 'tito', 'tito', 'x', ?, ?, ?, 1.0,"
                     " '{}', ?, ?)", rows)
    conn.commit()
    conn.close()
    store = Store(path)  # migrates
    try:
        assert "006_search" in {r["name"] for r in store.rows("SELECT name FROM _sqlite_migrations")}
        assert [r["id"] for r in store.log_events(search="old1@example.org")[0]] == [1]
        assert store.log_events(search="old3@example.org")[0] == []  # a redelivery: not indexed
        assert [r["id"] for r in store.log_events(search="old3@example.org", status="duplicate")[0]] == []
        assert store.log_events(search="old4@example.org")[0] == []  # indexed when routed
    finally:
        store.close()
    integrity(path)


def test_search_words_become_a_safe_query() -> None:
    match = Store.match_query
    assert match("") is None and match("  ") is None and match("- * (") is None
    assert match("ann@example.org") == '"ann@example.org"'
    assert match("Ann Smi") == '"Ann" "Smi"*'
    assert match('say "hi') == '"say" """hi"*'
    assert match("NEAR(a b)") == '"NEAR(a" "b)"'
    assert match("ab") == '"ab"'


# --- in a browser ------------------------------------------------------------------------


def test_browser_filter_open_replay(browser: Any, traffic: Traffic) -> None:
    from playwright.sync_api import expect

    t = traffic
    ui = open_ui(browser, t.relay)
    page = ui.page
    expect(page.locator("h1")).to_have_text("Dashboard")
    ui.screenshot("dashboard")
    ui.go("/log")
    expect(page.locator("tr.log-row")).to_have_count(5)
    page.select_option("select[name=status]", "dead")  # htmx swaps the results
    expect(page.locator("tr.log-row")).to_have_count(2)
    page.wait_for_url(re.compile(r"/log\?status=dead"))
    expect(page.locator("#log-tabs a[aria-current]")).to_have_text("Deliveries")
    ui.screenshot("log")

    first = t.delivery_of(t.tito[0])["id"]
    page.click(f'tr.log-row[data-id="{first}"] a[href^="/log/events/"]')
    page.wait_for_url(re.compile(rf"/log/events/{t.tito[0]}"))
    card = page.locator(f"#delivery-{first}")
    expect(card.locator(".badge").first).to_have_text("dead")
    ui.screenshot("event")

    t.bad.default = Reply(200)  # the destination is fixed
    card.locator("button", has_text="Replay").click()
    expect(page.locator(".flash")).to_contain_text("queued again")
    wait_until(lambda: t.status(first) == "delivered")
    page.reload()
    expect(page.locator(f"#delivery-{first} .badge").first).to_have_text("delivered")

    # The other one, with every dead delivery the filter matches, and its progress.
    ui.go("/log?status=dead&source=tito")
    page.click("text=Replay all 1 dead delivery matching this filter")
    expect(page.locator("#replay-progress")).to_contain_text("Replay finished")
    expect(page.locator("#replay-progress .replay-count.delivered")).to_have_text("1 delivered")
    assert ui.problems == []
