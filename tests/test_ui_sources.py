"""The sources pages: webhook URLs, setup steps, activity, and "Send a test event".

The test button goes through relay's real ingest over HTTP, so a test event that is
accepted proves the sample is signed the way the platform's verifier checks.
"""

from __future__ import annotations

import json
import re
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

from conftest import (
    SECRETS,
    RelayServer,
    Sink,
    open_ui,
    sample,
    wait_until,
    write_recipe,
    write_sources,
)
from relay.sources import PLATFORMS
from relay.ui.sources import SETUP

# A source of every platform relay knows, beyond write_sources()'s seven.
MORE_SOURCES = """\
tito-new:
  platform: tito
  scheme: timestamped
  secrets: ["tito-new-token"]
stripe:
  platform: stripe
  secrets: ["stripe-secret-1"]
github:
  platform: github
  secrets: ["github-secret-1"]
shopify:
  platform: shopify
  secrets: ["shopify-secret-1"]
tickettailor:
  platform: ticket_tailor
  secrets: ["tt-secret-1"]
token-header:
  platform: token
  header: X-Token
  secrets: ["header-token-0123456789"]
token-path:
  platform: token
  token: path-token-0123456789
"""
OFF_SOURCE = """\
shop:
  platform: quicket
  token: ${SHOP_TOKEN}
"""


def result_of(html: str) -> str:
    """The text of the test-result box on a source page."""
    found = re.search(r'<div id="test-result".*?</div>\s*</div>', html, re.S)
    assert found, html
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", found.group(0))).strip()


def catch_all(folder: Path, sink: Sink, source: str) -> None:
    write_recipe(folder, f"to-sink-{source}", f"""\
source: {source}
fields:
  got: "@"
to:
  - type: http
    url: {sink.url}/{source}
""")


def test_sources_page_lists_urls_activity_and_problems(make_relay: Any, tmp_path: Path) -> None:
    folder = tmp_path / "recipes"
    write_sources(folder, OFF_SOURCE)
    relay: RelayServer = make_relay(public_url="https://relay.example.org")
    assert relay.send("tikkl", "tikkl", sample("tikkl/ticket.json")).status_code == 200
    refused = relay.send("tito", "tito", sample("tito/ticket.completed.json"), secret="wrong-token")
    assert refused.status_code == 401
    relay.client.post("/hooks/tikl", content=b"{}")  # a typo in a platform's URL
    with closing(relay.login()) as ui:
        page = ui.get("/sources")
    assert page.status_code == 200
    html = page.text
    for name in ("tikkl", "tito", "quicket", "openticket", "webconnex", "svix", "custom", "shop"):
        assert f'href="/sources/{name}"' in html
    assert 'data-copy="https://relay.example.org/hooks/tikkl"' in html
    # Quicket's token is a secret: the URL to copy ends where the token goes.
    assert 'data-copy="https://relay.example.org/hooks/quicket/"' in html
    assert SECRETS["quicket"] not in html
    assert 'href="/log/events/1"' in html  # tikkl's last event
    assert "signature does not match" in html  # tito's last refusal, with its reason
    assert "SHOP_TOKEN" in html and "is not set" in html  # the source that is off says why
    assert re.search(r"<td class=\"mono\">tikl</td>\s*<td>1 time</td>", html)


def test_source_page_has_setup_steps_and_secret_states(make_relay: Any, tmp_path: Path) -> None:
    folder = tmp_path / "recipes"
    write_sources(folder, OFF_SOURCE)
    (folder / "sources.yaml").write_text((folder / "sources.yaml").read_text().replace(
        f"token: {SECRETS['quicket']}", "token: ${QUICKET_TOKEN}"))
    relay: RelayServer = make_relay()
    with closing(relay.login()) as ui:
        saved = ui.post("/secrets", data={"name": "QUICKET_TOKEN", "value": SECRETS["quicket"]})
        assert saved.status_code == 303
        quicket, shop, tikkl = (ui.get(f"/sources/{name}").text for name in ("quicket", "shop", "tikkl"))
        missing = ui.get("/sources/nope", headers={"Accept": "text/html"})
    assert "Integrate &gt; Web hooks" in quicket  # Quicket's own steps
    assert "&lt;QUICKET_TOKEN&gt;" in quicket  # where the token goes, never the token
    assert SECRETS["quicket"] not in quicket
    assert re.search(r"<code>QUICKET_TOKEN</code>:\s*<span class=\"badge ok\">set</span>", quicket)
    assert "This source is off" in shop
    assert re.search(r"<code>SHOP_TOKEN</code>:\s*<span class=\"badge bad\">not set</span>", shop)
    assert 'href="/secrets?name=SHOP_TOKEN#set"' in shop
    assert "Organization Settings &gt; Webhook" in tikkl
    assert "written in <code>sources.yaml</code> itself" in tikkl  # the test's literal secret
    assert missing.status_code == 404
    assert "no source named" in missing.text


def test_every_platform_has_setup_steps_and_a_sample() -> None:
    assert set(SETUP) == set(PLATFORMS)
    samples = Path(__file__).parent.parent / "relay" / "sources" / "samples"
    for path in samples.glob("*.json"):
        json.loads(path.read_text())


def test_a_test_event_of_every_platform_is_accepted(make_relay: Any, sink: Sink, tmp_path: Path) -> None:
    folder = tmp_path / "recipes"
    write_sources(folder, MORE_SOURCES)
    relay: RelayServer = make_relay()
    sources = ["tikkl", "tito", "quicket", "openticket", "webconnex", "svix", "custom",
               "tito-new", "stripe", "github", "shopify", "tickettailor", "token-header", "token-path"]
    for source in sources:
        catch_all(folder, sink, source)
    with closing(relay.login()) as ui:
        wait_until(lambda: "to-sink-token-path" in ui.get("/sources/token-path").text)  # recipes loaded
        for source in sources:
            for _ in (1, 2):  # a second test is a new event, not a duplicate
                text = result_of(ui.post(f"/sources/{source}/test").text)
                if source == "github":  # GitHub's test is a ping: stored, sent only where named
                    assert "Stored as event" in text and "nothing is sent" in text, text
                else:
                    assert text.startswith("Accepted: relay stored the test event as event #"), (source, text)
                    assert f"to-sink-{source}" in text, text
    events = relay.rows("SELECT source, status FROM events ORDER BY id")
    assert [e["source"] for e in events] == [s for s in sources for _ in (1, 2)]
    assert {e["status"] for e in events if e["source"] != "github"} == {"accepted"}
    relay.settled(2 * (len(sources) - 1))
    assert relay.rows("SELECT COUNT(*) AS n FROM rejections")[0]["n"] == 0
    assert {r.path for r in sink.received} == {f"/{s}" for s in sources if s != "github"}


def test_a_test_event_for_a_source_that_is_off_says_which_secret(make_relay: Any, tmp_path: Path) -> None:
    write_sources(tmp_path / "recipes", OFF_SOURCE)
    relay: RelayServer = make_relay()
    with closing(relay.login()) as ui:
        text = result_of(ui.post("/sources/shop/test").text)
        assert ui.post("/sources/nope/test").status_code == 404
    assert "The test event was not sent: this source is off" in text
    assert "Set SHOP_TOKEN on the Secrets page, then try again." in text
    assert relay.rows("SELECT COUNT(*) AS n FROM events")[0]["n"] == 0


def test_a_test_event_no_recipe_takes_is_stored_and_says_so(make_relay: Any, tmp_path: Path) -> None:
    write_sources(tmp_path / "recipes")
    relay: RelayServer = make_relay()
    with closing(relay.login()) as ui:
        text = result_of(ui.post("/sources/webconnex/test").text)
    assert "Stored as event #1 (registration), but nothing is sent." in text
    assert "No recipe of this source that is on takes registration events" in text


# --- in a browser -------------------------------------------------------------------


def test_sources_in_a_browser(browser: Any, make_relay: Any, sink: Sink, tmp_path: Path) -> None:
    from playwright.sync_api import expect

    folder = tmp_path / "recipes"
    write_sources(folder, OFF_SOURCE)
    write_recipe(folder, "quicket-attendees", f"""\
source: quicket
events: ["checkout_completed"]
for_each: tickets
fields:
  order: _event.reference
  name: attendee_name
to:
  - type: http
    url: {sink.url}/attendees
""")
    relay: RelayServer = make_relay()
    assert relay.send("tikkl", "tikkl", sample("tikkl/ticket.json")).status_code == 200
    ui = open_ui(browser, relay)
    page = ui.page
    page.context.grant_permissions(["clipboard-read", "clipboard-write"], origin=relay.url)
    page.click("nav >> text=Sources")
    page.wait_for_url(relay.url + "/sources")
    row = page.locator("tr[data-source=quicket]")
    copy = row.locator("button[data-copy]")
    expect(copy).to_have_attribute("data-copy", "http://127.0.0.1:8000/hooks/quicket/")
    copy.click()
    expect(copy).to_have_text("Copied")
    assert page.evaluate("navigator.clipboard.readText()") == "http://127.0.0.1:8000/hooks/quicket/"
    expect(page.locator("tr[data-source=shop]")).to_contain_text("SHOP_TOKEN")
    assert SECRETS["quicket"] not in page.content()
    ui.screenshot("sources")

    row.locator("a.source-name").click()
    page.wait_for_url(relay.url + "/sources/quicket")
    expect(page.locator("ol.steps")).to_contain_text("Integrate > Web hooks")
    page.get_by_role("button", name="Send a test event").click()
    result = page.locator("#test-result")
    expect(result).to_contain_text("Accepted: relay stored the test event as event #2", timeout=20_000)
    expect(result).to_contain_text("quicket-attendees")
    expect(page.locator("#recent-events")).to_contain_text("checkout_completed")  # refreshed in place
    assert SECRETS["quicket"] not in page.content()
    ui.screenshot("source")
    deliveries = relay.settled(2)  # the sample purchase has two tickets
    assert all(d["status"] == "delivered" for d in deliveries)
    with page.expect_navigation() as navigation:
        result.locator("a.event-link").click()
    assert page.url == relay.url + "/log/events/2"
    assert navigation.value is not None and navigation.value.status == 200
    assert ui.problems == []


@pytest.mark.parametrize("platform", sorted(SETUP))
def test_setup_steps_name_the_secret(platform: str) -> None:
    steps = " ".join(SETUP[platform].steps)
    assert "{secret}" in steps or platform not in PLATFORMS
