"""``type: hubspot`` end to end: signed Tikkl tickets through the real relay to a fake
HubSpot (tests/fakes/hubspot.py), checking what HubSpot ends up holding.

Contacts are upserted by email in batches of up to 100; the fake refuses what HubSpot
refuses (unknown properties, duplicate ids in one batch, a wrong token), answers 207
for invalid emails, and can enforce HubSpot's 100-requests-per-10-seconds limit.
"""

from __future__ import annotations

import json
import re
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from conftest import SAMPLES, RelayServer, sample, wait_until, write_recipe, write_sources
from fakes.base import Answer
from fakes.hubspot import TOKEN, FakeHubSpot
from relay.cli import cli
from relay.destinations import DestinationContext, OptionError
from relay.destinations.hubspot import DAILY_WAIT, WINDOW_WAIT, HubSpotDestination

TICKET = json.loads(sample("tikkl/ticket.json"))
FIELDS = """\
  email: registrantEmail
  firstname: "split(registrantName, ' ')[0]"
  lastname: "join(' ', split(registrantName, ' ')[1:])"
  ticket_id: ticketId
"""
DAILY = {"status": "error", "message": "You have reached your daily limit.",
         "errorType": "RATE_LIMIT", "policyName": "DAILY", "correlationId": "c-1"}
TEN_SECONDLY = {"status": "error", "message": "You have reached your ten_secondly_rolling limit.",
                "errorType": "RATE_LIMIT", "policyName": "TEN_SECONDLY_ROLLING",
                "correlationId": "c-2"}


@pytest.fixture
def fake() -> Iterator[FakeHubSpot]:
    api = FakeHubSpot()
    yield api
    if api.gate is not None:
        api.gate.set()
    api.close()


@pytest.fixture
def hubspot(make_relay: Callable[..., RelayServer], tmp_path: Path, fake: FakeHubSpot,
            monkeypatch: pytest.MonkeyPatch) -> Callable[..., RelayServer]:
    """Start relay with one recipe: Tikkl tickets -> the fake HubSpot."""
    monkeypatch.setenv("HUBSPOT_TOKEN", TOKEN)

    def start(options: str = "", fields: str = "", token: str | None = None,
              **settings: Any) -> RelayServer:
        if token is not None:
            monkeypatch.setenv("HUBSPOT_TOKEN", token)
        folder = tmp_path / "recipes"
        write_sources(folder)
        write_recipe(folder, "hubspot", f"""\
source: tikkl
events: ["ticket"]
fields:
{FIELDS}{fields}to:
  - type: hubspot
    token: ${{HUBSPOT_TOKEN}}
{options}""")
        return make_relay(hubspot_url=fake.url, **settings)

    return start


def sale(relay: RelayServer, n: int, email: str | None, name: str = "Ann Lee") -> int:
    """Post one signed Tikkl ticket purchase; returns the event's id."""
    body = dict(TICKET, ticketId=f"T-{n}", orderId=f"O-{n}", registrantEmail=email,
                registrantName=name)
    response = relay.send("tikkl", "tikkl", json.dumps(body).encode())
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "accepted"
    return int(response.json()["event"])


def deliveries(relay: RelayServer) -> list[dict[str, Any]]:
    return relay.rows("SELECT * FROM deliveries ORDER BY id")


def settled(relay: RelayServer, count: int, timeout: float = 30) -> list[dict[str, Any]]:
    """Wait until ``count`` deliveries exist and none is pending or sending."""
    def check() -> list[dict[str, Any]] | None:
        rows = deliveries(relay)
        done = len(rows) == count and all(r["status"] in ("delivered", "dead") for r in rows)
        return rows if done else None
    return wait_until(check, timeout=timeout)  # type: ignore[no-any-return]



def upserts(fake: FakeHubSpot) -> list[list[dict[str, Any]]]:
    """The inputs of every batch upsert the fake received, in order."""
    return [r.json()["inputs"] for r in list(fake.requests) if r.path.endswith("/batch/upsert")]


def queue_behind_a_held_request(relay: RelayServer, fake: FakeHubSpot,
                                sales: list[tuple[str | None, str]]) -> None:
    """A first sale's request is held at the fake while ``sales`` are queued behind
    it, so that they all go in relay's next batch."""
    gate = fake.hold()
    sale(relay, 0, "first@example.com", "First Buyer")
    wait_until(lambda: len(fake.requests) >= 1)
    for n, (email, name) in enumerate(sales, 1):
        sale(relay, n, email, name)
    wait_until(lambda: len(deliveries(relay)) == len(sales) + 1)
    gate.set()


# --- contacts ---------------------------------------------------------------------


def test_a_sale_creates_a_contact_and_the_next_sale_updates_it(
        hubspot: Callable[..., RelayServer], fake: FakeHubSpot) -> None:
    relay = hubspot()
    sale(relay, 1, "Ann.Lee@Example.com", "Ann Lee")
    first = settled(relay, 1)
    sale(relay, 2, "ann.lee@example.com", "Annie Marie Lee")
    rows = settled(relay, 2)
    assert [r["status"] for r in rows] == ["delivered", "delivered"]
    assert list(fake.contacts) == ["ann.lee@example.com"]  # one contact, updated
    contact = fake.contact("ann.lee@example.com")
    assert contact["properties"] == {"email": "ann.lee@example.com", "firstname": "Annie",
                                     "lastname": "Marie Lee", "ticket_id": "T-2"}
    assert fake.arrivals == ["ann.lee@example.com", "ann.lee@example.com"]
    # the request is HubSpot's batch upsert by email, with the private app token
    request = fake.requests[0]
    assert request.headers["authorization"] == f"Bearer {TOKEN}"
    [item] = request.json()["inputs"]
    assert item["idProperty"] == "email" and item["id"] == "Ann.Lee@Example.com"
    assert item["properties"] == {"email": "Ann.Lee@Example.com", "firstname": "Ann",
                                  "lastname": "Lee", "ticket_id": "T-1"}
    # what HubSpot answered is kept on each delivery: created, then updated
    answers = [json.loads(relay.attempts(r["id"])[0]["response_body"])["contact"] for r in rows]
    assert [(a["id"], a["new"]) for a in answers] == [(contact["id"], True), (contact["id"], False)]
    assert first[0]["last_status_code"] == 200


def test_two_sales_for_one_email_in_one_batch_become_one_input(
        hubspot: Callable[..., RelayServer], fake: FakeHubSpot) -> None:
    """HubSpot refuses an id twice in one batch: relay merges them, the later sale wins."""
    relay = hubspot()
    queue_behind_a_held_request(relay, fake, [
        ("bea@example.com", "Bea One"), ("other@example.com", "Oli Other"),
        ("BEA@example.com", "Beatrix Two")])
    rows = settled(relay, 4)
    assert {r["status"] for r in rows} == {"delivered"}
    first, second = upserts(fake)
    assert [i["id"] for i in first] == ["first@example.com"]
    assert [i["id"] for i in second] == ["bea@example.com", "other@example.com"]
    assert second[0]["properties"]["firstname"] == "Beatrix"
    assert sorted(fake.contacts) == ["bea@example.com", "first@example.com", "other@example.com"]
    bea = fake.contact("bea@example.com")["properties"]
    assert (bea["firstname"], bea["lastname"], bea["ticket_id"]) == ("Beatrix", "Two", "T-3")
    # both of Bea's deliveries carry the contact HubSpot saved
    bodies = [json.loads(relay.attempts(r["id"])[0]["response_body"]) for r in rows]
    assert bodies[1]["contact"]["id"] == bodies[3]["contact"]["id"] == fake.contact("bea@example.com")["id"]


def test_a_deal_is_created_and_associated_with_the_contact(
        hubspot: Callable[..., RelayServer], fake: FakeHubSpot) -> None:
    relay = hubspot(
        fields='  deal_name: "{{ eventName }} ticket {{ ticketId }}"\n  price: 25.5\n',
        options="    deal:\n      name: deal_name\n      amount: price\n      dealstage: closedwon\n")
    sale(relay, 1, "dee@example.com", "Dee Dee")
    sale(relay, 2, "dee@example.com", "Dee Dee")  # a second ticket: a second deal
    rows = settled(relay, 2)
    assert {r["status"] for r in rows} == {"delivered"}
    contact = fake.contact("dee@example.com")
    # the deal's fields went to the deal only (the fake refuses unknown contact properties)
    assert set(contact["properties"]) == {"email", "firstname", "lastname", "ticket_id"}
    assert [d["properties"] for d in fake.deals] == [
        {"dealname": f"My Tech Conference ticket T-{n}", "amount": "25.5",
         "pipeline": "default", "dealstage": "closedwon"} for n in (1, 2)]
    assert [d["contact_ids"] for d in fake.deals] == [[contact["id"]], [contact["id"]]]
    body = json.loads(relay.attempts(rows[0]["id"])[0]["response_body"])
    assert body["deal"]["id"] == fake.deals[0]["id"] and body["contact"]["id"] == contact["id"]
    assert rows[0]["last_status_code"] == 201


def test_a_refused_deal_is_dead_with_hubspots_message_and_the_contact_kept(
        hubspot: Callable[..., RelayServer], fake: FakeHubSpot) -> None:
    relay = hubspot(options="    deal:\n      name: Ticket sale\n      dealstage: sold\n")
    sale(relay, 1, "eve@example.com", "Eve Ng")
    [row] = settled(relay, 1)
    assert row["status"] == "dead" and row["attempts"] == 1 and row["last_status_code"] == 400
    contact_id = fake.contact("eve@example.com")["id"]
    assert f"the contact was saved (HubSpot id {contact_id}), but HubSpot refused the deal" \
        in row["last_error"]
    assert "sold is not a valid deal stage of pipeline default" in row["last_error"]
    assert fake.deals == []


# --- permanent errors -------------------------------------------------------------


def test_an_unknown_property_is_dead_with_hubspots_message(
        hubspot: Callable[..., RelayServer], fake: FakeHubSpot) -> None:
    relay = hubspot(fields="  shoe_size: \"'42'\"\n")
    sale(relay, 1, "sam@example.com")
    [row] = settled(relay, 1)
    assert row["status"] == "dead" and row["attempts"] == 1 and row["last_status_code"] == 400
    assert row["last_error"].startswith('HubSpot refused the contact: Property "shoe_size" does not exist.')
    assert "Settings > Properties" in row["last_error"]
    [attempt] = relay.attempts(row["id"])
    assert json.loads(attempt["response_body"])["category"] == "VALIDATION_ERROR"
    assert fake.contacts == {}
    time.sleep(0.5)
    assert len(fake.requests) == 1  # dead: not retried


def test_a_refused_token_is_dead_with_a_plain_message(
        hubspot: Callable[..., RelayServer], fake: FakeHubSpot) -> None:
    relay = hubspot(token="pat-na1-revoked")
    sale(relay, 1, "tom@example.com")
    [row] = settled(relay, 1)
    assert row["status"] == "dead" and row["attempts"] == 1 and row["last_status_code"] == 401
    assert row["last_error"].startswith(
        "the private app token was refused: check HUBSPOT_TOKEN and the app's scopes "
        "(crm.objects.contacts.write)")
    assert "Authentication credentials not found" in row["last_error"]  # HubSpot's own words
    assert "pat-na1-revoked" not in row["last_error"]
    assert fake.requests[0].headers["authorization"] == "Bearer pat-na1-revoked"
    assert fake.contacts == {}


def test_a_sale_without_an_email_is_dead_naming_the_field(
        hubspot: Callable[..., RelayServer], fake: FakeHubSpot) -> None:
    relay = hubspot()
    sale(relay, 1, None)
    [row] = settled(relay, 1)
    assert row["status"] == "dead"
    assert "the field 'email' is missing or empty" in row["last_error"]
    assert fake.requests == []


@pytest.mark.parametrize("trace_ids", [True, False], ids=["by-trace-id", "by-email"])
def test_a_207_delivers_the_good_ones_and_kills_the_bad_one(
        hubspot: Callable[..., RelayServer], fake: FakeHubSpot, trace_ids: bool) -> None:
    fake.trace_ids = trace_ids
    fake.refuse["blocked@example.com"] = "Contact blocked@example.com is in a blocked domain"
    relay = hubspot()
    queue_behind_a_held_request(relay, fake, [
        ("good1@example.com", "Good One"), ("not-an-email", "Bad Address"),
        ("good2@example.com", "Good Two"), ("blocked@example.com", "Blocked One")])
    rows = settled(relay, 5)
    assert [r["status"] for r in rows] == ["delivered", "delivered", "dead", "delivered", "dead"]
    assert len(upserts(fake)) == 2 and len(upserts(fake)[1]) == 4  # one batch, one request
    assert sorted(fake.contacts) == ["first@example.com", "good1@example.com", "good2@example.com"]
    bad, blocked = rows[2], rows[4]
    assert bad["last_status_code"] == 207 and bad["attempts"] == 1
    assert bad["last_error"].startswith("HubSpot refused the contact: Email address not-an-email is invalid.")
    assert "correct it at the source" in bad["last_error"]
    assert "blocked domain" in blocked["last_error"] and "not-an-email" not in blocked["last_error"]
    time.sleep(0.5)
    assert len(fake.requests) == 2


def test_a_whole_batch_400_over_one_email_sends_the_others_again(
        hubspot: Callable[..., RelayServer], fake: FakeHubSpot) -> None:
    """Should HubSpot refuse a whole batch because of one invalid email (as its older
    batch API did), only that sale fails: the others go again without it."""
    fake.multi_status = False
    relay = hubspot()
    queue_behind_a_held_request(relay, fake, [
        ("kim@example.com", "Kim One"), ("kim@bad", "Kim Bad"), ("lee@example.com", "Lee Two")])
    rows = settled(relay, 4)
    assert [r["status"] for r in rows] == ["delivered", "delivered", "dead", "delivered"]
    assert "Email address kim@bad is invalid" in rows[2]["last_error"]
    assert [[i["id"] for i in batch] for batch in upserts(fake)] == [
        ["first@example.com"], ["kim@example.com", "kim@bad", "lee@example.com"],
        ["kim@example.com", "lee@example.com"]]
    assert sorted(fake.contacts) == ["first@example.com", "kim@example.com", "lee@example.com"]


# --- rate limits ------------------------------------------------------------------


def test_a_429_waits_out_hubspots_ten_second_window(
        hubspot: Callable[..., RelayServer], fake: FakeHubSpot) -> None:
    fake.fail_next(Answer(429, TEN_SECONDLY))
    relay = hubspot()
    sale(relay, 1, "rita@example.com")
    [row] = settled(relay, 1, timeout=WINDOW_WAIT + 20)
    assert row["status"] == "delivered"
    first, second = relay.attempts(row["id"])
    assert (first["outcome"], first["status_code"]) == ("retry", 429)
    assert "rate limit" in first["error"] and "10 s" in first["error"]
    # scheduled the window's length out (no Retry-After from HubSpot), and waited for it
    assert row["next_attempt_at"] - first["started_at"] >= WINDOW_WAIT
    assert second["started_at"] - first["started_at"] >= WINDOW_WAIT
    assert fake.requests[1].at - fake.requests[0].at >= WINDOW_WAIT
    assert list(fake.contacts) == ["rita@example.com"]


def test_a_daily_limit_429_waits_an_hour(
        hubspot: Callable[..., RelayServer], fake: FakeHubSpot) -> None:
    fake.fail_next(Answer(429, DAILY))
    relay = hubspot()
    sale(relay, 1, "dan@example.com")
    [attempt] = wait_until(lambda: relay.rows("SELECT * FROM attempts"))
    [row] = deliveries(relay)
    assert row["status"] == "pending"
    assert (attempt["outcome"], attempt["status_code"]) == ("retry", 429)
    assert row["next_attempt_at"] - attempt["started_at"] >= DAILY_WAIT - 1
    assert "daily API limit" in row["last_error"] and "every hour" in row["last_error"]


def test_a_burst_of_500_sales_stays_inside_hubspots_limit_in_order(
        hubspot: Callable[..., RelayServer], fake: FakeHubSpot) -> None:
    fake.rate_limit(100, 10)
    relay = hubspot()
    emails = [f"fan{n:03d}@example.com" for n in range(500)]
    for n, email in enumerate(emails):
        sale(relay, n, email, f"Fan {n}")
    rows = settled(relay, 500, timeout=60)
    assert {r["status"] for r in rows} == {"delivered"}
    assert len(fake.contacts) == 500
    assert fake.over_limit == 0
    # in the order relay accepted them (event ids), which is the order they were posted
    accepted = [json.loads(r["payload"])["email"] for r in
                relay.rows("SELECT payload FROM deliveries ORDER BY event_id")]
    assert accepted == emails
    assert fake.arrivals == emails
    assert all(len(batch) <= 100 for batch in upserts(fake))


def test_the_pacer_spaces_requests_to_the_recipes_rate_limit(
        hubspot: Callable[..., RelayServer], fake: FakeHubSpot) -> None:
    """40 sales one at a time while the lane waits on its pacer: never over 5 per 2 s."""
    fake.rate_limit(5, 2)
    relay = hubspot(options="    rate_limit: {requests: 5, per: 2}\n")
    emails = [f"p{n:02d}@example.com" for n in range(40)]
    for n, email in enumerate(emails):
        sale(relay, n, email)
        time.sleep(0.05)
    rows = settled(relay, 40, timeout=40)
    assert {r["status"] for r in rows} == {"delivered"}
    assert fake.over_limit == 0
    # However the sales were batched (that depends on how fast they were routed), no 2 s
    # window saw more than 5 requests. The pacer's window itself is tested in test_lanes.py.
    times = [r.at for r in fake.requests]
    assert all(later - earlier >= 2 for earlier, later in zip(times, times[5:], strict=False))
    assert fake.arrivals == emails


# --- preview, options, the shipped recipe ---------------------------------------------


def test_relay_try_shows_the_request_without_the_token(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("RELAY_RECIPES", "RELAY_DB", "RELAY_DATA", "RELAY_HUBSPOT_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HUBSPOT_TOKEN", TOKEN)
    monkeypatch.setenv("TIKKL_SECRET", "tikkl-secret")
    monkeypatch.chdir(tmp_path)
    recipe = Path(__file__).parent.parent / "recipes" / "tikkl-to-hubspot.yaml"
    result = CliRunner().invoke(cli, ["try", str(recipe), str(SAMPLES / "tikkl" / "ticket.json")])
    assert result.exit_code == 0, result.output
    assert TOKEN not in result.output
    preview = json.loads(result.output.split("--- destination 1: hubspot\n")[1])
    assert preview["method"] == "POST"
    assert preview["url"] == "https://api.hubapi.com/crm/v3/objects/contacts/batch/upsert"
    assert preview["headers"]["Authorization"] == "Bearer [secret]"
    [item] = preview["body"]["inputs"]
    assert item["idProperty"] == "email" and item["id"] == "john@example.com"
    assert item["properties"] == {"email": "john@example.com", "firstname": "John",
                                  "lastname": "Smith"}


def test_preview_of_a_deal_says_it_is_not_idempotent(tmp_path: Path) -> None:
    dest = HubSpotDestination({"type": "hubspot", "token": TOKEN,
                               "deal": {"name": "Ticket sale", "amount": 30}},
                              DestinationContext(tmp_path))
    shown = dest.preview({"email": "a@b.com", "firstname": "A", "phone": None})
    assert TOKEN not in json.dumps(shown)
    assert shown["body"]["inputs"][0]["properties"] == {"email": "a@b.com", "firstname": "A"}
    assert shown["then"]["body"]["properties"] == {
        "dealname": "Ticket sale", "amount": "30", "pipeline": "default", "dealstage": "closedwon"}
    assert shown["then"]["body"]["associations"][0]["types"] == [
        {"associationCategory": "HUBSPOT_DEFINED", "associationTypeId": 3}]
    assert "second deal" in shown["then"]["note"]


@pytest.mark.parametrize(("config", "key", "words"), [
    ({"token": ""}, None, "needs `token:`"),
    ({"token": "two words"}, "token", "access token"),
    ({"token": TOKEN, "id_property": "e-mail"}, "id_property", "internal name"),
    ({"token": TOKEN, "rate_limit": {"requests": 0, "per": 10}}, "rate_limit", "requests: 190"),
    ({"token": TOKEN, "rate_limit": {"requests": 190, "every": 10}}, "rate_limit", "requests: 190"),
    ({"token": TOKEN, "deal": {"amount": "price"}}, "deal", "needs `name:`"),
    ({"token": TOKEN, "deal": "yes"}, "deal", "must be a mapping"),
    ({"token": TOKEN, "deal": {"name": ["a"]}}, "deal", "field name or fixed text"),
    ({"token": TOKEN, "list": "x"}, "list", "unknown option"),
])
def test_option_mistakes_name_the_option(tmp_path: Path, config: dict[str, Any], key: str | None,
                                         words: str) -> None:
    with pytest.raises(OptionError) as raised:
        HubSpotDestination({"type": "hubspot", **config}, DestinationContext(tmp_path))
    assert raised.value.key == key
    assert words in raised.value.message


def test_the_shipped_recipe_checks_clean(tmp_path: Path) -> None:
    shipped = Path(__file__).parent.parent / "recipes"
    folder = tmp_path / "recipes"
    folder.mkdir()
    for name in ("sources.yaml", "tikkl-to-hubspot.yaml"):
        shutil.copy(shipped / name, folder / name)
    settings = "\n".join(line.split("#")[0] for line in (folder / "sources.yaml").read_text().splitlines())
    env: dict[str, str | None] = {name: "set" for name in re.findall(r"\$\{(\w+)\}", settings)}
    env.update(HUBSPOT_TOKEN=TOKEN, RELAY_DATA=str(tmp_path / "data"))
    check = ["check", str(folder), "--db", str(tmp_path / "relay.db")]
    result = CliRunner().invoke(cli, check, env=env)
    assert result.exit_code == 0, result.output
    assert "1 recipes" in result.output
    result = CliRunner().invoke(cli, check, env={**env, "HUBSPOT_TOKEN": None})
    assert result.exit_code == 1
    assert re.search(r"tikkl-to-hubspot\.yaml:\d+: to\[0\]\.token: the secret \$\{HUBSPOT_TOKEN\} is not set",
                     result.output), result.output
