"""The recipes pages of the web UI: checking, previewing, saving, templates.

Everything goes through the real relay served on loopback (uvicorn, SQLite in
tmp_path) and, for the editor itself, a real browser. The check endpoint is held
to relay's loader: the same message at the same line as ``relay check``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import expect
from test_recipes import CASES

from conftest import (
    SAMPLES,
    RelayServer,
    Sink,
    UIClient,
    open_ui,
    sample,
    sign,
    wait_until,
    write_recipe,
    write_sources,
)
from relay.destinations import DestinationContext, destination_types
from relay.recipe_templates import PROFILES, template
from relay.recipes import load_recipe_text
from relay.routing import run_recipe
from relay.secrets import SecretStore
from relay.sources import PLATFORMS, load_sources
from relay.store import Store

STAMP = re.compile(r'name="stamp" value="([^"]*)"')
# A busy machine may take a while to answer a preview: wait as long as actions do.
expect.set_options(timeout=20_000)


def tito_recipe(url: str, *, when: str = "registration.receipt.paid || `true`") -> str:
    return f"""\
# Tito tickets to the CRM (a comment that must survive saving)
source: tito
events: ["ticket.completed"]
when: "{when}"
fields:
  email: email
  name: "{{{{ first_name }}}} {{{{ last_name }}}}"
  event: event.title
to:
  - type: http
    url: {url}
"""


@pytest.fixture
def relay(make_relay: Any, tmp_path: Path) -> RelayServer:
    write_sources(tmp_path / "recipes")
    return make_relay()


@pytest.fixture
def ui(relay: RelayServer) -> Iterator[UIClient]:
    """A logged-in client of ``relay``'s web UI."""
    client = relay.login()
    yield client
    client.close()


def received_event(relay: RelayServer, source: str = "tito", platform: str = "tito",
                   name: str = "tito/ticket.completed.json", body: bytes | None = None) -> int:
    """Post a signed sample to relay (a classic Tito one says its type in a header); the
    stored event's id."""
    before = {r["id"] for r in relay.rows("SELECT id FROM events")}
    body = sample(name) if body is None else body
    path, headers = sign(source, platform, body)
    if platform == "tito":
        headers["X-Webhook-Name"] = "ticket.completed"
    assert relay.post(path, body, headers).status_code == 200
    rows = wait_until(lambda: [r for r in relay.rows("SELECT id FROM events WHERE source = ?", [source])
                               if r["id"] not in before])
    return int(rows[0]["id"])


def set_secret(relay: RelayServer, name: str, value: str) -> None:
    store = Store(relay.settings.db)
    try:
        SecretStore(store, relay.settings).set(name, value)
    finally:
        store.close()


def stamp_of_page(html: str) -> str:
    found = STAMP.search(html)
    assert found, html
    return found.group(1)


# --- checking -----------------------------------------------------------------------


def test_check_gives_the_loaders_message_at_its_line(ui: UIClient, tmp_path: Path) -> None:
    folder = tmp_path / "recipes"
    sources = load_sources(folder, lambda name: None)
    context = DestinationContext(tmp_path / "data")
    # Every kind of mistake of tests/test_recipes.py that needs no secret.
    names = [n for n, case in CASES.items() if "${" not in case.text]
    assert len(names) >= 10
    for name in names:
        case = CASES[name]
        answer = ui.post("/recipes/check", json={"name": "broken", "text": case.text})
        assert answer.status_code == 200, answer.text
        data = answer.json()
        assert data["ok"] is False, name
        [found] = data["problems"]
        loaded = load_recipe_text(case.text, folder / "broken.yaml", folder, sources, lambda n: None, context)
        assert loaded.error is not None
        assert (found["line"], found["message"]) == (case.line, loaded.error.message), name
        assert found["text"] == f"line {case.line}: {loaded.error.message}"
        assert found["severity"] == "error" and found["blocking"] is True
        if case.field is not None:
            assert found["message"].startswith(f"{case.field}: "), found
    good = ui.post("/recipes/check", json={"name": "broken", "text": tito_recipe("http://127.0.0.1:9/x")})
    assert good.json()["ok"] is True and good.json()["problems"] == []
    assert not (folder / "broken.yaml").exists()  # checking writes nothing


def test_an_unset_secret_is_a_warning_and_later_mistakes_still_show(ui: UIClient) -> None:
    text = """\
source: tito
for_each: tickets
fields:
  email: email
to:
  - type: http
    url: ${RELAY_UI_TEST_UNSET_URL}
  - type: ftp
"""
    data = ui.post("/recipes/check", json={"name": "new-one", "text": text}).json()
    first, second = data["problems"]
    assert (first["line"], first["severity"], first["blocking"]) == (7, "warning", False)
    assert first["secret"] == "RELAY_UI_TEST_UNSET_URL"
    assert "${RELAY_UI_TEST_UNSET_URL} is not set" in first["message"]
    assert (second["line"], second["blocking"]) == (8, True)
    assert second["message"].startswith("to[1].type: unknown destination type 'ftp'")
    assert data["ok"] is False
    assert data["for_each"] == "tickets" and data["source"] == "tito"
    # Only the unset secret: the recipe may be saved (it stays off until the secret is set).
    alone = ui.post("/recipes/check", json={"name": "new-one", "text": text.replace("  - type: ftp\n", "")})
    assert alone.json()["ok"] is True


def test_the_editor_page_shows_the_file_and_its_errors(ui: UIClient, tmp_path: Path) -> None:
    write_recipe(tmp_path / "recipes", "broken", CASES["unknown-option"].text)
    page = ui.get("/recipes/broken/edit")
    assert page.status_code == 200
    assert "timeout: 5" in page.text  # the file, in the textarea
    assert "line 8: to[0].timeout: unknown option &#39;timeout&#39;" in page.text


# --- the preview ----------------------------------------------------------------------


def preview(ui: Any, text: str, **event: Any) -> dict[str, Any]:
    answer = ui.post("/recipes/preview", json={"name": "tito-crm", "text": text, **event})
    assert answer.status_code == 200, answer.text
    return answer.json()  # type: ignore[no-any-return]


def test_preview_maps_a_received_event_and_sends_nothing(relay: RelayServer, ui: UIClient, sink: Sink) -> None:
    event_id = received_event(relay)
    data = preview(ui, tito_recipe(f"{sink.url}/crm"), event_id=event_id)
    assert data["outcome"] == "sent", data
    [result] = data["results"]
    [destination] = result["destinations"]
    shown = json.loads(destination["shown"])
    assert shown["method"] == "POST" and shown["url"] == f"{sink.url}/crm"
    assert shown["body"] == {"email": "winter@example.com", "name": "Peter Winter",
                             "event": "AwesomeConf ?"}
    assert "winter@example.com" in data["html"] and "Peter Winter" in data["html"]
    assert "1 delivery would be queued" in data["html"]

    filtered = preview(ui, tito_recipe(f"{sink.url}/crm", when="state_name == 'complete'"),
                       event_id=event_id)
    assert filtered["outcome"] == "filtered"
    assert filtered["message"] == "Filtered out: when: \"state_name == 'complete'\" was false for this event"
    assert "Filtered out: when: &#34;state_name == &#39;complete&#39;&#34; was false" in filtered["html"]
    assert filtered["results"] == []

    other_type = preview(ui, tito_recipe(f"{sink.url}/crm").replace("ticket.completed", "registration.*"),
                         event_id=event_id)
    assert other_type["outcome"] == "skipped"
    assert "not &#39;ticket.completed&#39;" in other_type["html"]

    broken = preview(ui, tito_recipe(f"{sink.url}/crm").replace("event.title", "event.title[["),
                     event_id=event_id)
    assert broken["outcome"] == "error"
    assert "line 8: fields.event:" in broken["html"]

    failing = preview(ui, tito_recipe(f"{sink.url}/crm").replace("event.title", "'{{ nope }}'"),
                      event_id=event_id)
    assert failing["outcome"] == "error"
    assert "the template uses something the event does not have" in failing["html"]

    gone = preview(ui, tito_recipe(f"{sink.url}/crm"), event_id=event_id + 1000)
    assert gone["outcome"] == "error" and "no longer stored" in gone["html"]
    assert sink.received == []  # a preview never sends


def test_preview_of_a_pasted_payload_one_per_item(ui: UIClient, sink: Sink) -> None:
    text = f"""\
source: quicket
events: ["checkout_completed"]
for_each: tickets
fields:
  order: _event.reference
  name: attendee_name
to:
  - type: http
    url: {sink.url}/q
  - type: csv
    path: quicket/rows.csv
"""
    data = preview(ui, text, payload=sample("quicket/checkout_completed.json").decode())
    assert data["outcome"] == "sent"
    assert [r["item"] for r in data["results"]] == [0, 1]
    assert "4 deliveries would be queued" in data["html"]
    second = data["results"][1]["destinations"]
    assert json.loads(second[0]["shown"])["body"] == {"order": "QK-20250614-0042",
                                                       "name": "Pieter van der Merwe"}
    assert json.loads(second[1]["shown"])["row"] == ["QK-20250614-0042", "Pieter van der Merwe"]
    bad = preview(ui, text, payload="{not json")
    assert bad["outcome"] == "error" and "not valid JSON" in bad["html"]
    assert sink.received == []


def test_preview_hides_secrets(relay: RelayServer, ui: UIClient, sink: Sink) -> None:
    token, url = "crm-token-5e4d3c2b1a", f"{sink.url}/secret-path-77"
    set_secret(relay, "CRM_TOKEN", token)
    set_secret(relay, "CRM_URL", url)
    event_id = received_event(relay)
    text = """\
source: tito
fields:
  email: email
  echo: "'${CRM_TOKEN}'"
to:
  - type: http
    url: ${CRM_URL}
    headers:
      Authorization: "Bearer ${CRM_TOKEN}"
"""
    answer = ui.post("/recipes/preview", json={"name": "tito-crm", "text": text, "event_id": event_id})
    data = answer.json()
    assert data["outcome"] == "sent", data
    shown = json.loads(data["results"][0]["destinations"][0]["shown"])
    assert shown["headers"]["Authorization"] == "Bearer [secret]"
    assert shown["url"] == "[secret]"
    assert shown["body"] == {"email": "winter@example.com", "echo": "[secret]"}
    assert token not in answer.text and url not in answer.text
    assert sink.received == []


# --- saving ---------------------------------------------------------------------------


def test_save_writes_exactly_the_text_and_applies_it(relay: RelayServer, ui: UIClient, sink: Sink,
                                                      tmp_path: Path) -> None:
    folder = tmp_path / "recipes"
    page = ui.get("/recipes/tito-crm/edit", params={"source": "tito", "to": "http"})
    assert page.status_code == 200 and "${CRM_URL}" in page.text  # the template, not saved
    assert not (folder / "tito-crm.yaml").exists()
    stamp = stamp_of_page(page.text)
    assert stamp == "new"

    # A mistake: refused, nothing written.
    bad = ui.post("/recipes/tito-crm", json={"text": CASES["unknown-option"].text, "stamp": stamp})
    assert bad.status_code == 400
    assert "line 8: to[0].timeout" in bad.json()["message"]
    assert not (folder / "tito-crm.yaml").exists()

    # Valid: written byte for byte (comments, key order, blank lines), applied at once.
    text = tito_recipe(f"{sink.url}/crm").replace("source: tito", "source: tito   # trailing comment")
    text = "\n" + text + "\n"
    saved = ui.post("/recipes/tito-crm", json={"text": text, "stamp": stamp})
    assert saved.status_code == 200, saved.text
    assert saved.json()["ok"] is True
    assert saved.json()["message"] == "Saved. Applied to new events."
    assert (folder / "tito-crm.yaml").read_bytes() == text.encode()
    assert not [p for p in folder.iterdir() if p.name.startswith(".")]  # no temporary file left
    received_event(relay)
    wait_until(lambda: sink.received)
    assert sink.received[0].path == "/crm"
    assert sink.received[0].json() == {"email": "winter@example.com", "name": "Peter Winter",
                                       "event": "AwesomeConf ?"}

    # Editing again from the new stamp works; a mistake leaves the file as it was.
    stamp = saved.json()["stamp"]
    broken = ui.post("/recipes/tito-crm", json={"text": text.replace("email: email", "email: email[["),
                                                "stamp": stamp})
    assert broken.status_code == 400
    assert (folder / "tito-crm.yaml").read_bytes() == text.encode()

    # Someone changed the file on disk meanwhile: refused, their change kept.
    theirs = text.replace("event: event.title", "event: event.slug")
    (folder / "tito-crm.yaml").write_text(theirs)
    stale = ui.post("/recipes/tito-crm", json={"text": text.replace("name:", "full_name:"), "stamp": stamp})
    assert stale.status_code == 409
    assert "changed on disk since you opened it" in stale.json()["message"]
    assert (folder / "tito-crm.yaml").read_text() == theirs

    # A new recipe whose name was taken meanwhile is refused too.
    taken = ui.post("/recipes/tito-crm", json={"text": text, "stamp": "new"})
    assert taken.status_code == 409 and "was created meanwhile" in taken.json()["message"]


def test_save_from_a_plain_form(ui: UIClient, sink: Sink, tmp_path: Path) -> None:
    path = write_recipe(tmp_path / "recipes", "crm", tito_recipe(f"{sink.url}/old"))
    stamp = stamp_of_page(ui.get("/recipes/crm/edit").text)
    text = tito_recipe(f"{sink.url}/new")
    del ui.headers["X-CSRF-Token"]  # a plain form carries the token as a field
    answer = ui.post("/recipes/crm", data={"csrf_token": ui.csrf, "stamp": stamp,
                                           "text": text.replace("\n", "\r\n")})
    assert answer.status_code == 303
    assert answer.headers["location"] == "/recipes/crm/edit?saved=1"
    assert path.read_text() == text  # a browser's CRLF lines are saved as the file's LF
    page = ui.get(answer.headers["location"]).text
    assert "Saved. Applied to new events." in page
    refused = ui.post("/recipes/crm", data={"csrf_token": ui.csrf, "stamp": stamp_of_page(page),
                                            "text": CASES["unknown-option"].text})
    assert refused.status_code == 400
    assert "Not saved: the recipe has a mistake at line 8: to[0].timeout" in refused.text
    assert "timeout: 5" in refused.text  # the text typed is still there to fix
    assert path.read_text() == text


def test_saving_with_an_unset_secret_keeps_the_recipe_off(ui: UIClient, tmp_path: Path) -> None:
    text = template("tito", "tito", "hubspot", "tito-hubspot")
    answer = ui.post("/recipes/tito-hubspot", json={"text": text, "stamp": "new"})
    assert answer.status_code == 200, answer.text
    assert "stays off until the secret ${HUBSPOT_TOKEN} is set" in answer.json()["message"]
    assert (tmp_path / "recipes" / "tito-hubspot.yaml").read_text() == text


def test_saving_requires_the_csrf_token(ui: UIClient, tmp_path: Path) -> None:
    answer = ui.post("/recipes/x", json={"text": "source: tito\n", "stamp": "new"},
                     headers={"X-CSRF-Token": "wrong"})
    assert answer.status_code == 403
    assert not (tmp_path / "recipes" / "x.yaml").exists()


@pytest.mark.parametrize("name", ["../sources", "..%2Fsources", "%2E%2E%2Fsources", "sources",
                                  "a%2F..%2F..%2Fetc", "new", ".hidden", "bad name", "x.yaml"])
def test_names_outside_the_recipes_refused(ui: UIClient, tmp_path: Path, name: str) -> None:
    folder = tmp_path / "recipes"
    before = (folder / "sources.yaml").read_bytes()
    assert ui.get(f"/recipes/{name}/edit").status_code == 404
    saved = ui.post(f"/recipes/{name}", json={"text": "source: tito\n", "stamp": "new"})
    assert saved.status_code in (404, 405), saved.text
    # (httpx itself resolves a literal ../ in a URL: such a request never reaches recipes.)
    deleted = ui.post(f"/recipes/{name}/delete")
    assert deleted.status_code in (404, 405)
    checked = ui.post("/recipes/check", json={"name": name.replace("%2F", "/").replace("%2E", "."),
                                               "text": "source: tito\n"})
    assert checked.status_code == 404
    assert (folder / "sources.yaml").read_bytes() == before
    assert sorted(p.name for p in folder.iterdir()) == ["sources.yaml"]
    assert sorted(p.name for p in tmp_path.iterdir() if p.suffix == ".yaml") == []


def test_a_recipe_in_a_sub_folder_can_be_edited(ui: UIClient, sink: Sink, tmp_path: Path) -> None:
    path = write_recipe(tmp_path / "recipes", "team/crm", tito_recipe(f"{sink.url}/a"))
    page = ui.get("/recipes/team/crm/edit")
    assert page.status_code == 200
    text = tito_recipe(f"{sink.url}/b")
    saved = ui.post("/recipes/team/crm", json={"text": text, "stamp": stamp_of_page(page.text)})
    assert saved.status_code == 200 and path.read_text() == text


# --- the list, new and delete ---------------------------------------------------------


def test_recipes_list(relay: RelayServer, ui: UIClient, sink: Sink, tmp_path: Path) -> None:
    folder = tmp_path / "recipes"
    write_recipe(folder, "crm", tito_recipe(f"{sink.url}/crm"))
    write_recipe(folder, "broken", CASES["unknown-option"].text)
    write_recipe(folder, "off", tito_recipe(f"{sink.url}/off") + "enabled: false\n")
    wait_until(lambda: "broken" in ui.get("/recipes").text)
    received_event(relay)
    relay.settled(1)
    page = ui.get("/recipes").text
    rows = {m.group(1): m.group(2) for m in re.finditer(r'<tr data-recipe="([^"]+)">(.*?)</tr>', page, re.S)}
    assert sorted(rows) == ["broken", "crm", "off"]
    assert "line 8: to[0].timeout: unknown option" in rows["broken"]
    assert "turned off" in rows["off"]
    assert 'class="badge delivered"' in rows["crm"] and "just now" in rows["crm"]
    assert "none yet" in rows["off"]
    assert 'href="/recipes/crm/edit"' in rows["crm"]
    assert 'href="/recipes/new"' in page


def test_new_recipe_form(ui: UIClient, tmp_path: Path) -> None:
    write_recipe(tmp_path / "recipes", "taken", tito_recipe("http://127.0.0.1:9/x"))
    form = ui.get("/recipes/new")
    assert form.status_code == 200
    assert all(f'value="{kind}"' in form.text for kind in destination_types())
    assert 'value="tito"' in form.text and 'value="quicket"' in form.text
    bad = ui.get("/recipes/new", params={"name": "my recipe", "source": "nope", "to": "ftp"})
    assert bad.status_code == 400
    assert "letters, digits" in bad.text and "Pick the source" in bad.text and "Pick where" in bad.text
    taken = ui.get("/recipes/new", params={"name": "taken", "source": "tito", "to": "csv"})
    assert taken.status_code == 400 and "already a recipe named" in taken.text
    ok = ui.get("/recipes/new", params={"name": "quicket-rows", "source": "quicket", "to": "csv"})
    assert ok.status_code == 303
    assert ok.headers["location"] == "/recipes/quicket-rows/edit?source=quicket&to=csv"
    editor = ui.get(ok.headers["location"])
    assert re.search(r"^for_each: tickets ", editor.text, re.M)
    assert re.search(r"^    path: quicket/quicket-rows.csv ", editor.text, re.M)
    assert not (tmp_path / "recipes" / "quicket-rows.yaml").exists()
    # A new name without a template to start from goes to the form.
    assert ui.get("/recipes/fresh/edit").headers["location"] == "/recipes/new?name=fresh"


def test_delete_a_recipe(ui: UIClient, tmp_path: Path) -> None:
    path = write_recipe(tmp_path / "recipes", "old", tito_recipe("http://127.0.0.1:9/x"))
    confirm = ui.get("/recipes/old/delete")
    assert confirm.status_code == 200 and "Delete it" in confirm.text
    assert path.exists()
    answer = ui.post("/recipes/old/delete")
    assert answer.status_code == 303 and answer.headers["location"] == "/recipes?deleted=old"
    assert not path.exists()
    assert 'data-recipe="old"' not in ui.get("/recipes").text
    assert ui.post("/recipes/old/delete").status_code == 404


# --- templates ------------------------------------------------------------------------

TEMPLATE_SAMPLES = {
    "tikkl": "tikkl/ticket.json", "tito": "tito/ticket.completed.json",
    "quicket": "quicket/checkout_completed.json", "openticket": "openticket/order.paid.json",
    "webconnex": "webconnex/registration.json",
}


def template_secrets() -> dict[str, str]:
    """A value for each secret the templates name, shaped as each destination checks it."""
    from fakes.google import service_account_key
    return {
        "CRM_URL": "https://crm.example.com/contacts",
        "GOOGLE_SERVICE_ACCOUNT": json.dumps(service_account_key("https://oauth2.googleapis.com/token")[0]),
        "HUBSPOT_TOKEN": "pat-na1-00000000-0000-0000-0000-000000000000",
        "MAILCHIMP_API_KEY": "0123456789abcdef0123456789abcdef-us14",
        "MAILCHIMP_AUDIENCE_ID": "a1b2c3d4e5",
        "AIRTABLE_TOKEN": "patAbCdEfGhIjKlMn.0123456789abcdef",
        "PIPEDRIVE_TOKEN": "0123456789abcdef0123456789abcdef01234567",
        "SLACK_WEBHOOK_URL": "https://hooks.slack.com/services/T0000/B0000/XXXXXXXXXXXXXXXXXXXXXXXX",
    }


def test_every_template_loads_without_errors(tmp_path: Path) -> None:
    folder = tmp_path / "recipes"
    extra = "".join(f"{p}-src:\n  platform: {p}\n  secrets: [\"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\"]\n"
                    for p in PLATFORMS if p not in ("tikkl", "tito", "quicket", "openticket", "webconnex"))
    write_sources(folder, extra)
    secrets = template_secrets()
    sources = load_sources(folder, secrets.get)
    source_of = {s.platform_name: s.name for s in sources.values() if s.platform is not None}
    assert set(source_of) == set(PLATFORMS), sources.all_errors()
    context = DestinationContext(tmp_path / "data")
    checked = 0
    for platform in PLATFORMS:
        for kind in destination_types():
            name = f"{platform}-to-{kind}"
            text = template(platform, source_of[platform], kind, name)
            recipe = load_recipe_text(text, folder / f"{name}.yaml", folder, sources, secrets.get, context)
            assert recipe.error is None, f"{platform} x {kind}: {recipe.error.located()}\n{text}"
            assert recipe.active and [d.type for d in recipe.to] == [kind]
            needed = set(re.findall(r"\$\{([A-Z_]+)\}", "\n".join(
                line for line in text.splitlines() if not line.lstrip().startswith("#"))))
            assert needed <= set(secrets)
            unset = load_recipe_text(text, folder / f"{name}.yaml", folder, sources, lambda n: None, context)
            assert (unset.error is None) == (not needed)  # only the secrets keep it off
            checked += 1
            if platform not in TEMPLATE_SAMPLES:
                continue
            # On the platform's sample, every field maps and every destination can preview it.
            payload = json.loads((SAMPLES / TEMPLATE_SAMPLES[platform]).read_bytes())
            meta = {"source": source_of[platform], "type": "t", "id": 1, "received_at": 0.0}
            for _, fields in run_recipe(recipe, payload, meta):
                assert all(v not in (None, "") for v in _leaves(fields)), (platform, kind, fields)
                for destination in recipe.to:
                    destination.preview(fields)
    assert checked == len(PLATFORMS) * len(destination_types())
    assert set(PROFILES) == set(TEMPLATE_SAMPLES)


def _leaves(value: Any) -> list[Any]:
    if isinstance(value, dict):
        return [leaf for v in value.values() for leaf in _leaves(v)]
    return [value]


# --- in a real browser ----------------------------------------------------------------


def line_with_marker(page: Any) -> str:
    """The line number shown beside CodeMirror's lint error marker."""
    marker = page.locator(".CodeMirror-code > div:has(.CodeMirror-lint-marker-error) .CodeMirror-linenumber")
    expect(marker).to_have_count(1)
    return str(marker.inner_text()).strip()


def test_editor_in_a_browser(browser: Any, make_relay: Any, tmp_path: Path, sink: Sink) -> None:
    folder = tmp_path / "recipes"
    write_sources(folder)
    write_recipe(folder, "tikkl-rows", """\
source: tikkl
events: ["ticket"]
fields:
  ticket: ticketId
to:
  - type: csv
    path: tikkl/rows.csv
""")
    write_recipe(folder, "tito-broken", CASES["unknown-option"].text)
    write_recipe(folder, "tito-off", tito_recipe(f"{sink.url}/off") + "enabled: false\n")
    relay = make_relay()
    set_secret(relay, "CRM_URL", f"{sink.url}/crm")
    received_event(relay, "tikkl", "tikkl", "tikkl/ticket.json")
    relay.settled(1)
    ui = open_ui(browser, relay)
    page = ui.page

    ui.go("/recipes")
    expect(page.locator("tr[data-recipe=tikkl-rows] .badge.delivered")).to_be_visible()
    expect(page.locator("tr[data-recipe=tito-broken] .recipe-error")).to_have_text(
        re.compile(r"^line 8: to\[0\]\.timeout: unknown option 'timeout'"))
    ui.screenshot("recipes")

    # A new recipe from the template for Tikkl to a web address.
    page.click("#new-recipe")
    page.select_option("#new-source", "tikkl")
    page.select_option("#new-to", "http")
    page.fill("#new-name", "tikkl-crm")
    page.click("#new-recipe-form button[type=submit]")
    page.wait_for_url(re.compile(r"/recipes/tikkl-crm/edit"))
    expect(page.locator(".CodeMirror")).to_be_visible()

    # The received event is picked, and the preview shows what the CRM would get.
    expect(page.locator("#event-select option")).to_have_count(1)
    preview = page.locator("#preview")
    expect(preview).to_contain_text("1 delivery would be queued")
    expect(preview).to_contain_text("john@example.com")
    expect(page.locator("#recipe-problems")).to_be_hidden()

    # Pick a field: put the cursor after a new field name, click the value in the tree.
    page.evaluate("""() => {
        const cm = document.querySelector('.CodeMirror').CodeMirror;
        const line = cm.getValue().split('\\n').indexOf('fields:');
        cm.replaceRange('\\n  org: ', {line: line, ch: 'fields:'.length});
        cm.setCursor({line: line + 1, ch: 7});
    }""")
    page.locator("#picker button.pick", has_text='"Awesome Org"').click()
    editor_text = lambda: page.evaluate("() => document.querySelector('.CodeMirror').CodeMirror.getValue()")  # noqa: E731
    assert "\n  org: orgName\n" in editor_text()
    expect(preview).to_contain_text('"org": "Awesome Org"')

    # Break the YAML: the marker and the list point at the line.
    lines = editor_text().split("\n")
    org_line = lines.index("  org: orgName")
    page.evaluate("""(line) => {
        const cm = document.querySelector('.CodeMirror').CodeMirror;
        cm.replaceRange(': x', {line: line, ch: cm.getLine(line).length});
    }""", org_line)
    problems = page.locator("#problem-list li.error")
    expect(problems).to_have_count(1)
    expect(problems).to_contain_text(f"line {org_line + 1}: this is not valid YAML")
    assert line_with_marker(page) == str(org_line + 1)
    expect(preview).to_contain_text("Nothing to preview until the recipe's mistake is fixed")
    ui.screenshot("recipe-editor-error")

    # Saving now is refused, and nothing is written.
    page.click("#save")
    expect(page.locator("#save-status")).to_contain_text("Not saved")
    assert not (folder / "tikkl-crm.yaml").exists()

    # Fix it and save: the file is written and the recipe applies.
    page.evaluate("""(line) => {
        const cm = document.querySelector('.CodeMirror').CodeMirror;
        const text = cm.getLine(line);
        cm.replaceRange('', {line: line, ch: text.length - 3}, {line: line, ch: text.length});
    }""", org_line)
    expect(page.locator("#recipe-problems")).to_be_hidden()
    expect(page.locator(".CodeMirror-lint-marker-error")).to_have_count(0)
    expect(preview).to_contain_text('"org": "Awesome Org"')
    page.click("#save")
    expect(page.locator("#save-status")).to_have_text("Saved. Applied to new events.")
    ui.screenshot("recipe-editor")
    assert (folder / "tikkl-crm.yaml").read_text() == editor_text()
    assert "  org: orgName\n" in (folder / "tikkl-crm.yaml").read_text()

    received_event(relay, "tikkl", "tikkl", body=sample("tikkl/ticket.json").replace(b"-001", b"-002"))
    wait_until(lambda: [r for r in sink.received if r.path == "/crm"])
    body = [r for r in sink.received if r.path == "/crm"][0].json()
    assert body["org"] == "Awesome Org" and body["email"] == "john@example.com"

    # ... and the delivery is in the log, delivered, with what was sent on its event's page.
    ui.go("/log?status=delivered&recipe=tikkl-crm")
    row = page.locator("tr.log-row")
    expect(row).to_have_count(1)
    expect(row.locator(".badge.delivered")).to_be_visible()
    row.locator("a[href^='/log/events/']").click()
    expect(page.locator("main")).to_contain_text("Awesome Org")
    assert ui.problems == []


def test_field_picker_inside_for_each(browser: Any, make_relay: Any, tmp_path: Path) -> None:
    folder = tmp_path / "recipes"
    write_sources(folder)
    write_recipe(folder, "attendees", """\
source: quicket
events: ["checkout_completed"]
for_each: tickets
fields:
  name: attendee_name
to:
  - type: http
    url: http://127.0.0.1:9/nothing-listens-here
""")
    relay = make_relay()
    received_event(relay, "quicket", "quicket", "quicket/checkout_completed.json")
    ui = open_ui(browser, relay)
    page = ui.page
    ui.go("/recipes/attendees/edit")
    preview = page.locator("#preview")
    expect(preview).to_contain_text("2 deliveries would be queued")

    def pick(label: str) -> str:
        page.evaluate("""() => {
            const cm = document.querySelector('.CodeMirror').CodeMirror;
            if (cm.getLine(5).startsWith('  x: ')) {
                cm.setSelection({line: 5, ch: 5}, {line: 5, ch: cm.getLine(5).length});
            } else {
                cm.setCursor({line: 4, ch: cm.getLine(4).length});
                cm.replaceSelection('\\n  x: ');
            }
        }""")
        page.locator("#picker button.pick", has_text=label).first.click()
        return str(page.evaluate("() => document.querySelector('.CodeMirror').CodeMirror.getLine(5)"))

    # A value inside a ticket: its path within the item; outside: the whole event's.
    assert pick('"Pieter van der Merwe"') == "  x: attendee_name"
    assert pick('"QK-20250614-0042"') == "  x: _event.reference"
    expect(preview).to_contain_text('"x": "QK-20250614-0042"')
    assert ui.problems == []
