"""Stored XSS: event data and recipe names reach every page as text, never as markup.

A real browser visits each page that shows them. Any script that ran would show up
as a dialog, a console error (the Content-Security-Policy refusing it) or a changed
page, and each is checked.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from conftest import RelayServer, Sink, open_ui, sample, sign, wait_until, write_recipe, write_sources

ATTACKS = [
    "<script>window.__pwned = 1</script>",
    "\"><img src=x onerror=\"window.__pwned = 2\">",
    "javascript:window.__pwned=3",
    "<svg onload=\"window.__pwned = 4\"></svg>",
    "{{ 7 * 7 }}<style>body{display:none}</style>",
]
RECIPE_NAME = "<img src=x onerror=window.__pwned=5>"


def test_payloads_and_recipe_names_are_shown_as_text(browser: Any, make_relay: Any, sink: Sink,
                                                     tmp_path: Path) -> None:
    folder = tmp_path / "recipes"
    write_sources(folder)
    write_recipe(folder, RECIPE_NAME, f"""\
source: tikkl
fields:
  name: registrantName
  email: registrantEmail
to:
  - type: http
    url: {sink.url}/crm
""")
    relay: RelayServer = make_relay()
    event = json.loads(sample("tikkl/ticket.json"))
    event["registrantName"] = " ".join(ATTACKS)
    event["registrantEmail"] = ATTACKS[1]
    event["objectType"] = ATTACKS[0]  # the event type is shown in lists too
    body = json.dumps(event).encode()
    path, headers = sign("tikkl", "tikkl", body)
    headers["X-Evil"] = ATTACKS[1]
    assert relay.post(path, body, headers).status_code == 200
    wait_until(lambda: relay.rows("SELECT * FROM deliveries WHERE status = 'delivered'"))
    [row] = relay.rows("SELECT id FROM events")
    # A refused request carries attacks too: in its path, headers and body.
    relay.post("/hooks/" + "%3Cscript%3Ewindow.__pwned%3D6%3C%2Fscript%3E", body, headers)

    ui = open_ui(browser, relay)
    dialogs: list[str] = []
    ui.page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    pages = ["/", "/log", "/log?status=delivered", "/log?status=rejected", f"/log/events/{row['id']}",
             "/recipes", "/sources", "/sources/tikkl", f"/log?q={ATTACKS[0]}", "/log/rejections/1"]
    for number, page in enumerate(pages):
        ui.go(page)
        assert ui.page.evaluate("() => window.__pwned") is None, page
        assert ui.page.locator("img[src=x], svg[onload], script:not([src])").count() == 0, page
        assert ui.page.locator("body").is_visible(), page
        if number == 4:
            ui.screenshot("event-with-attacks")
    ui.go(f"/log/events/{row['id']}")
    assert ATTACKS[0] in ui.page.inner_text("main")  # shown, as text
    assert dialogs == []
    assert [p for p in ui.problems if "Content Security Policy" not in p] == []
    assert ui.problems == [], "a script or style was refused by the CSP: something was not escaped"
