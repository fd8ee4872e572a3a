"""The secrets page: set, replace and delete secrets; names only, never values."""

from __future__ import annotations

import re
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

from conftest import RelayServer, Sink, open_ui, wait_until, write_recipe, write_sources
from relay.secrets import SecretStore
from relay.store import Store
from relay.ui.secrets import names_in_text, scan_references

SHOP = """\
shop:
  platform: quicket
  token: ${SHOP_TOKEN}
"""
TOKEN = "shop-token-0123456789-abcdef"


def stored_value(relay: RelayServer, name: str) -> str | None:
    store = Store(relay.settings.db)
    try:
        return SecretStore(store, relay.settings, environ={}).lookup(name)
    finally:
        store.close()


def section(html: str, element_id: str) -> str:
    found = re.search(rf'<table id="{element_id}">.*?</table>', html, re.S)
    return found.group(0) if found else ""


def folder_with_references(folder: Path, sink: Sink) -> None:
    write_sources(folder, SHOP)
    write_recipe(folder, "shop-to-crm", f"""\
# Sends each order to the CRM. Not ${{COMMENTED_OUT}}: comments are not references.
source: shop
events: ["checkout_completed"]
fields:
  ref: reference
to:
  - type: http
    url: {sink.url}/crm
    headers:
      Authorization: "Bearer ${{CRM_TOKEN}}"   # set on the Secrets page
""")


def test_set_replace_and_delete_a_secret(make_relay: Any, sink: Sink, tmp_path: Path) -> None:
    folder_with_references(tmp_path / "recipes", sink)
    relay: RelayServer = make_relay()
    with closing(relay.login()) as ui:
        page = ui.get("/secrets").text
        missing = section(page, "missing-secrets")
        assert "SHOP_TOKEN" in missing and 'href="/sources/shop"' in missing
        assert "CRM_TOKEN" in missing and 'href="/recipes/shop-to-crm/edit"' in missing
        assert "COMMENTED_OUT" not in page

        # The source is off until its secret is set; once saved, it applies at once.
        assert relay.client.post(f"/hooks/shop/{TOKEN}", content=b"{}").status_code == 503
        saved = ui.post("/secrets", data={"name": "SHOP_TOKEN", "value": f"  {TOKEN}\n"})
        assert saved.status_code == 303 and saved.headers["location"] == "/secrets?saved=SHOP_TOKEN"
        assert stored_value(relay, "SHOP_TOKEN") == TOKEN  # spaces and line breaks at the ends go
        answer = relay.client.post(f"/hooks/shop/{TOKEN}", content=b'{"action": "checkout_started"}')
        assert answer.status_code == 200, answer.text
        page = ui.get(saved.headers["location"]).text
        assert "Secret <strong>SHOP_TOKEN</strong> saved" in page
        assert re.search(r'source shop</a>:\s*<span class="badge ok">working</span>', page)
        stored = section(page, "stored-secrets")
        assert "SHOP_TOKEN" in stored and "just now" in stored
        assert "SHOP_TOKEN" not in section(page, "missing-secrets")
        assert TOKEN not in page

        # Replacing: the new value is used, the old one no longer works.
        assert ui.post("/secrets", data={"name": "SHOP_TOKEN", "value": "a-new-token-0123456789"}
                       ).status_code == 303
        assert relay.client.post(f"/hooks/shop/{TOKEN}", content=b"{}").status_code == 401
        assert stored_value(relay, "SHOP_TOKEN") == "a-new-token-0123456789"

        deleted = ui.post("/secrets/SHOP_TOKEN/delete")
        assert deleted.status_code == 303 and deleted.headers["location"] == "/secrets?deleted=SHOP_TOKEN"
        page = ui.get(deleted.headers["location"]).text
        assert "Secret <strong>SHOP_TOKEN</strong> deleted" in page
        assert re.search(r'source shop</a>:\s*<span class="badge bad">off</span>', page)
        assert "SHOP_TOKEN" in section(page, "missing-secrets")
        assert stored_value(relay, "SHOP_TOKEN") is None
        assert relay.client.post("/hooks/shop/a-new-token-0123456789", content=b"{}").status_code == 503
        gone = ui.post("/secrets/SHOP_TOKEN/delete")
        assert gone.status_code == 404 and "no stored secret named SHOP_TOKEN" in gone.text


def test_a_recipe_secret_applies_when_saved(make_relay: Any, sink: Sink, tmp_path: Path) -> None:
    folder_with_references(tmp_path / "recipes", sink)
    relay: RelayServer = make_relay()
    with closing(relay.login()) as ui:
        for name, value in (("SHOP_TOKEN", TOKEN), ("CRM_TOKEN", "crm-token-value-42")):
            assert ui.post("/secrets", data={"name": name, "value": value}).status_code == 303
        page = ui.get("/secrets?saved=CRM_TOKEN").text
        assert re.search(r'recipe shop-to-crm</a>:\s*<span class="badge ok">working</span>', page)
    body = b'{"action": "checkout_completed", "reference": "R1", "tickets": []}'
    assert relay.client.post(f"/hooks/shop/{TOKEN}", content=body).json()["status"] == "accepted"
    relay.settled(1)
    assert sink.received[0].headers["authorization"] == "Bearer crm-token-value-42"


def test_plain_errors_and_the_value_is_never_sent_back(make_relay: Any, tmp_path: Path) -> None:
    write_sources(tmp_path / "recipes")
    relay: RelayServer = make_relay()
    with closing(relay.login()) as ui:
        cases = [
            ({"name": "1-bad name", "value": "a-value-never-shown-1"}, "cannot be a secret name"),
            ({"name": "", "value": "a-value-never-shown-2"}, "Give the secret a name"),
            ({"name": "GOOD_NAME", "value": "  \n"}, "The value for GOOD_NAME is empty"),
            ({"name": "GOOD_NAME", "value": "x" * 70_000}, "far longer than any key"),
        ]
        for form, words in cases:
            answer = ui.post("/secrets", data=form)
            assert answer.status_code == 400
            assert words in answer.text
            if form["value"].strip():
                assert form["value"].strip() not in answer.text
        assert 'value="1-bad name"' in ui.post("/secrets", data=cases[0][0]).text  # the name is kept
        assert ui.get("/secrets").status_code == 200
    assert relay.rows("SELECT COUNT(*) AS n FROM secrets")[0]["n"] == 0


def test_secrets_from_the_environment_are_listed(make_relay: Any, sink: Sink, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CRM_TOKEN", "from-the-environment-123")
    folder_with_references(tmp_path / "recipes", sink)
    relay: RelayServer = make_relay()
    with closing(relay.login()) as ui:
        page = ui.get("/secrets").text
    env = section(page, "env-secrets")
    assert "CRM_TOKEN" in env and "shop-to-crm" in env
    assert "CRM_TOKEN" not in section(page, "missing-secrets")
    assert "from-the-environment-123" not in page


def test_references_come_from_values_not_comments(tmp_path: Path) -> None:
    folder = tmp_path / "recipes"
    folder.mkdir()
    (folder / "sources.yaml").write_text(
        'a:\n  platform: tito\n  secrets: ["${A_ONE}", "${A_TWO}"]  # not ${A_THREE}\n'
        "b:\n  platform: quicket\n  token: ${B_TOKEN}\n")
    (folder / "sub").mkdir()
    write_recipe(folder / "sub", "deep", "source: a\nfields:\n  x: \"'${IN_A_STRING}'\"\nto: []\n")
    write_recipe(folder, "broken", "source: a\nfields: [\n  url: ${STILL_FOUND} # ${NOT_THIS}\n")
    refs = scan_references(folder)
    assert refs.of_source("a") == ["A_ONE", "A_TWO"]
    assert refs.of_source("b") == ["B_TOKEN"]
    assert refs.users("IN_A_STRING") == [("recipe", "sub/deep")]
    assert refs.users("STILL_FOUND") == [("recipe", "broken")]
    assert "A_THREE" not in refs.names() and "NOT_THIS" not in refs.names()
    # As in YAML, a # starts a comment only at a line's start or after a space.
    assert names_in_text("x: ${A}#${B}\n# ${C}\ny: '${D}'  # ${E}") == {"A", "B", "D"}


def test_secrets_in_a_browser(browser: Any, make_relay: Any, sink: Sink, tmp_path: Path) -> None:
    from playwright.sync_api import expect

    folder_with_references(tmp_path / "recipes", sink)
    relay: RelayServer = make_relay()
    ui = open_ui(browser, relay)
    page = ui.page
    page.click("nav >> text=Secrets")
    page.wait_for_url(relay.url + "/secrets")
    page.locator("#missing-secrets tr", has_text="SHOP_TOKEN").get_by_role("link", name="Set it").click()
    page.wait_for_url(relay.url + "/secrets?name=SHOP_TOKEN#set")
    expect(page.locator("input[name=name]")).to_have_value("SHOP_TOKEN")
    value = page.locator("input[name=value]")
    expect(value).to_have_attribute("type", "password")
    expect(value).to_have_attribute("autocomplete", "new-password")
    value.fill(TOKEN)
    page.get_by_role("button", name="Save secret").click()
    page.wait_for_url(relay.url + "/secrets?saved=SHOP_TOKEN")
    expect(page.locator(".flash")).to_contain_text("Secret SHOP_TOKEN saved")
    expect(page.locator("#stored-secrets")).to_contain_text("SHOP_TOKEN")
    expect(page.locator("input[name=value]")).to_have_value("")
    assert TOKEN not in page.content()
    ui.screenshot("secrets")
    assert stored_value(relay, "SHOP_TOKEN") == TOKEN

    # Deleting asks first; "Cancel" keeps the secret.
    delete = page.locator("#stored-secrets tr", has_text="SHOP_TOKEN").get_by_role("button", name="Delete")
    questions: list[str] = []
    page.once("dialog", lambda dialog: (questions.append(dialog.message), dialog.dismiss()))
    delete.click()
    wait_until(lambda: questions)
    assert "Delete the secret SHOP_TOKEN?" in questions[0]
    assert page.url == relay.url + "/secrets?saved=SHOP_TOKEN"
    assert stored_value(relay, "SHOP_TOKEN") == TOKEN
    page.once("dialog", lambda dialog: dialog.accept())
    delete.click()
    page.wait_for_url(relay.url + "/secrets?deleted=SHOP_TOKEN")
    expect(page.locator(".flash")).to_contain_text("Secret SHOP_TOKEN deleted")
    assert stored_value(relay, "SHOP_TOKEN") is None
    assert ui.problems == []
