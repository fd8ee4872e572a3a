"""Logging in to the web UI in a real browser, and what needs a session."""

from __future__ import annotations

from typing import Any

from conftest import ADMIN_PASSWORD, open_ui


def test_login_page_then_dashboard(browser: Any, make_relay: Any) -> None:
    relay = make_relay()
    ui = open_ui(browser, relay, login=False)
    ui.go("/log")
    assert "/login" in ui.page.url
    ui.screenshot("login")
    ui.page.fill("input[name=name]", "admin")
    ui.page.fill("input[name=password]", "not the password")
    ui.page.click("button[type=submit]")
    assert "do not match" in ui.page.inner_text("[role=alert]")
    ui.page.fill("input[name=password]", ADMIN_PASSWORD)
    ui.page.click("button[type=submit]")
    ui.page.wait_for_url(relay.url + "/log")
    assert ui.page.is_visible("text=Log out")
    ui.page.click("text=Log out")
    ui.page.wait_for_url(relay.url + "/login")
    ui.go("/")
    assert "/login" in ui.page.url
    assert ui.problems == []
