"""``type: airtable`` end to end: real Webconnex webhooks through relay into a fake Airtable.

The fake (tests/fakes/airtable.py) holds the records and refuses what Airtable
refuses; each test asserts what the fake holds afterwards, not what relay thinks
it sent.
"""

from __future__ import annotations

import asyncio
import copy
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner

from conftest import ROOT, SAMPLES, RelayServer, sample, sign, wait_until, write_recipe, write_sources
from fakes.airtable import FakeAirtable
from fakes.base import Answer
from relay.cli import cli
from relay.destinations import DeliveryContext, DestinationContext, OptionError, Sent
from relay.destinations.airtable import AirtableDestination
from relay.errors import DeliveryFailed
from relay.settings import Settings

BASE = "appTESTBASE000001"
TABLE = "Registrants"
COLUMNS = {"Email": "text", "First name": "text", "Last name": "text", "Order": "text",
           "Amount": "number", "Form": "text"}
SHIPPED = ROOT / "recipes" / "webconnex-to-airtable.yaml"
REGISTRATION = json.loads(sample("webconnex/registration.json"))


@pytest.fixture
def fake() -> Iterator[FakeAirtable]:
    api = FakeAirtable()
    api.add_table(BASE, TABLE, COLUMNS)
    yield api
    api.close()


@pytest.fixture
def token(fake: FakeAirtable, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("AIRTABLE_TOKEN", fake.token)
    return fake.token


def shipped_recipe(folder: Path, **replace: str) -> None:
    """The shipped recipe, pointed at the test base (and changed as asked)."""
    text = SHIPPED.read_text().replace("appXXXXXXXXXXXXXX", BASE)
    for old, new in replace.items():
        assert old in text, old
        text = text.replace(old, new)
    write_sources(folder)
    write_recipe(folder, "webconnex-to-airtable", text)


@pytest.fixture
def start(make_relay: Callable[..., RelayServer], tmp_path: Path, fake: FakeAirtable,
          token: str) -> Callable[..., RelayServer]:
    def go(**replace: str) -> RelayServer:
        shipped_recipe(tmp_path / "recipes", **replace)
        relay = make_relay(airtable_url=fake.base_url)
        assert relay.client.get("/healthz").json()["errors"] == 0
        return relay
    return go


def registration(event_id: int, people: list[tuple[str, str, str, Any]]) -> bytes:
    """A Webconnex registration webhook with these (first, last, email, amount) registrants."""
    payload = copy.deepcopy(REGISTRATION)
    payload["eventId"] = event_id
    payload["data"]["orderNumber"] = f"TRAIL25-{event_id:07d}"
    template = payload["data"]["registrants"][0]
    payload["data"]["registrants"] = []
    for first, last, email, amount in people:
        registrant = copy.deepcopy(template)
        registrant["amount"] = amount
        for answer in registrant["data"]:
            if answer["key"] == "name":
                answer["first"]["value"], answer["last"]["value"] = first, last
            elif answer["key"] == "email":
                answer["value"] = email
        payload["data"]["registrants"].append(registrant)
    return json.dumps(payload).encode()


def post(relay: RelayServer, body: bytes) -> int:
    path, headers = sign("webconnex", "webconnex", body)
    headers["X-Webconnex-Event"] = "registration"
    response = relay.post(path, body, headers)
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "accepted", response.text
    return int(response.json()["event"])




def people(n: int, start: int = 0) -> list[tuple[str, str, str, Any]]:
    return [(f"First{i}", f"Last{i}", f"runner{i}@example.com", 40 + i) for i in range(start, start + n)]


# --- records arrive ----------------------------------------------------------------


def test_registrants_become_records(start: Callable[..., RelayServer], fake: FakeAirtable) -> None:
    relay = start()
    post(relay, sample("webconnex/registration.json"))
    deliveries = relay.settled(2, "delivered")
    assert fake.rows(BASE, TABLE) == [
        {"Email": "maria.lopez@example.com", "First name": "Maria", "Last name": "Lopez",
         "Order": "TRAIL25-0000412", "Amount": 65.0, "Form": "relay"},
        {"Email": "daniel.lopez@example.com", "First name": "Daniel", "Last name": "Lopez",
         "Order": "TRAIL25-0000412", "Amount": 65.0, "Form": "relay"},
    ]
    for write in fake.writes():
        assert write.method == "PATCH" and write.path == f"/v0/{BASE}/{TABLE}"
        body = write.json()
        assert body["performUpsert"] == {"fieldsToMergeOn": ["Email"]} and body["typecast"] is True
        assert write.headers["authorization"] == f"Bearer {fake.token}"
    # each delivery keeps its own record, as Airtable answered it
    ids = [json.loads(relay.attempts(d["id"])[-1]["response_body"])["id"] for d in deliveries]
    assert len(set(ids)) == 2 and all(i.startswith("rec") for i in ids)


def test_same_registrant_again_updates_the_one_record(start: Callable[..., RelayServer],
                                                      fake: FakeAirtable) -> None:
    relay = start()
    post(relay, registration(1, [("Maria", "Lopez", "maria@example.com", 65)]))
    relay.settled(1, "delivered")
    post(relay, registration(2, [("Maria", "Lopez-Diaz", "maria@example.com", None)]))
    relay.settled(2, "delivered")
    assert fake.rows(BASE, TABLE) == [  # no amount this time: the one the table has stays
        {"Email": "maria@example.com", "First name": "Maria", "Last name": "Lopez-Diaz",
         "Order": "TRAIL25-0000002", "Amount": 65, "Form": "relay"}]
    assert "Amount" not in fake.writes()[-1].json()["records"][0]["fields"]
    first, second = [json.loads(b) for b in _replies(relay)]
    assert first["id"] == second["id"]  # the same record, updated
    assert first["fields"]["Last name"] == "Lopez" and second["fields"]["Last name"] == "Lopez-Diaz"


def _replies(relay: RelayServer) -> list[str]:
    return [a["response_body"] for a in relay.rows("SELECT response_body FROM attempts ORDER BY id")]


def test_same_email_twice_in_one_batch_becomes_one_record(start: Callable[..., RelayServer],
                                                          fake: FakeAirtable) -> None:
    relay = start()
    post(relay, registration(1, [("Ann", "Old", "ann@example.com", 10), ("Bob", "B", "bob@example.com", 20),
                                 ("Ann", "New", "ann@example.com", 30)]))
    relay.settled(3, "delivered")
    assert fake.rows(BASE, TABLE) == [
        {"Email": "ann@example.com", "First name": "Ann", "Last name": "New", "Order": "TRAIL25-0000001",
         "Amount": 30, "Form": "relay"},
        {"Email": "bob@example.com", "First name": "Bob", "Last name": "B", "Order": "TRAIL25-0000001",
         "Amount": 20, "Form": "relay"}]
    # the fake refuses an upsert naming one record twice, so no write did
    for write in fake.writes():
        emails = [r["fields"]["Email"] for r in write.json()["records"]]
        assert len(emails) == len(set(emails))


def test_more_than_ten_deliveries_go_in_requests_of_ten(start: Callable[..., RelayServer],
                                                        fake: FakeAirtable) -> None:
    relay = start()
    post(relay, registration(1, people(25)))
    relay.settled(25, "delivered")
    assert [r["Email"] for r in fake.rows(BASE, TABLE)] == [f"runner{i}@example.com" for i in range(25)]
    sizes = [len(w.json()["records"]) for w in fake.writes()]
    assert sum(sizes) == 25 and max(sizes) == 10 and len(sizes) >= 3


def test_plain_create_without_merge_on(start: Callable[..., RelayServer], fake: FakeAirtable) -> None:
    relay = start(**{"    merge_on: [Email]": "    # no merge_on"})
    post(relay, registration(1, [("Ann", "A", "ann@example.com", 10)]))
    post(relay, registration(2, [("Ann", "A", "ann@example.com", 10)]))
    relay.settled(2, "delivered")
    assert len(fake.rows(BASE, TABLE)) == 2  # a create adds, every time
    assert {w.method for w in fake.writes()} == {"POST"}
    assert all("performUpsert" not in w.json() for w in fake.writes())


# --- refused -------------------------------------------------------------------------


def test_unknown_field_is_dead_with_airtables_message(start: Callable[..., RelayServer],
                                                      fake: FakeAirtable) -> None:
    shirt = "  Form: _event.meta.name\n  Shirt: \"field(data, 'tshirt_size')\""
    relay = start(**{"  Form: _event.meta.name": shirt})
    post(relay, sample("webconnex/registration.json"))
    deliveries = relay.settled(2, "dead")
    for d in deliveries:
        assert d["attempts"] == 1 and d["last_status_code"] == 422
        assert 'Unknown field name: "Shirt"' in d["last_error"] and "UNKNOWN_FIELD_NAME" in d["last_error"]
        assert f"table {TABLE!r}" in d["last_error"]
        [attempt] = relay.attempts(d["id"])
        assert attempt["outcome"] == "dead" and "UNKNOWN_FIELD_NAME" in attempt["response_body"]
    assert fake.rows(BASE, TABLE) == []
    assert len(fake.writes()) == 1  # both records had the field: nothing to try again without it


def test_one_bad_record_does_not_take_the_batch_down(start: Callable[..., RelayServer],
                                                     fake: FakeAirtable) -> None:
    relay = start(**{"    # typecast: true ": "    typecast: false "})
    post(relay, registration(1, [("Ann", "A", "ann@example.com", 10), ("Bob", "B", "bob@example.com", "free"),
                                 ("Cy", "C", "cy@example.com", 30)]))
    deliveries = relay.settled(3)
    assert [d["status"] for d in deliveries] == ["delivered", "dead", "delivered"]
    assert "INVALID_VALUE_FOR_COLUMN" in deliveries[1]["last_error"]
    assert 'Field "Amount" cannot accept the provided value' in deliveries[1]["last_error"]
    assert [r["Email"] for r in fake.rows(BASE, TABLE)] == ["ann@example.com", "cy@example.com"]
    assert all(w.json()["typecast"] is False for w in fake.writes())


def test_a_429_while_looking_for_the_bad_record_holds_them_all(start: Callable[..., RelayServer],
                                                                fake: FakeAirtable) -> None:
    relay = start()
    fake.fail_next(Answer(422, {"error": {"type": "INVALID_RECORDS", "message": "one of them is wrong"}}),
                   Answer(429, {"errors": [{"error": "RATE_LIMIT_REACHED", "message": "Rate limit exceeded"}]}))
    post(relay, registration(1, people(3)))
    rows = wait_until(lambda: (r := relay.rows("SELECT * FROM deliveries WHERE attempts = 1 ORDER BY id"))
                      and len(r) == 3 and r)
    assert [r["status"] for r in rows] == ["pending"] * 3
    assert {r["last_status_code"] for r in rows} == {429}
    assert all(r["next_attempt_at"] - a["started_at"] >= 30.0
               for r in rows for a in relay.attempts(r["id"]))
    assert len(fake.writes()) == 2  # the batch, then the first record alone: then it stopped to wait
    assert fake.rows(BASE, TABLE) == []


@pytest.mark.parametrize(("replace", "status", "words"), [
    ({"${AIRTABLE_TOKEN}": "patWRONG.token"}, 401, "Airtable refused the token"),
    ({f"base: {BASE}": "base: appNOSUCHBASE0000"}, 403, "data.records:write"),
    ({"table: Registrants": "table: Runners"}, 404, "Airtable found no table 'Runners'"),
])
def test_refusals_are_dead_at_once_in_plain_words(start: Callable[..., RelayServer], fake: FakeAirtable,
                                                  replace: dict[str, str], status: int, words: str) -> None:
    relay = start(**replace)
    post(relay, registration(1, [("Ann", "A", "ann@example.com", 10)]))
    [delivery] = relay.settled(1, "dead")
    assert delivery["attempts"] == 1 and delivery["last_status_code"] == status
    assert words in delivery["last_error"], delivery["last_error"]
    assert "Airtable says:" in delivery["last_error"]
    assert "patWRONG" not in delivery["last_error"]
    assert fake.rows(BASE, TABLE) == []


# --- rate limits ---------------------------------------------------------------------


def test_429_is_retried_after_the_30_s_airtable_requires(start: Callable[..., RelayServer],
                                                         fake: FakeAirtable) -> None:
    relay = start()
    fake.fail_next(Answer(429, {"errors": [{"error": "RATE_LIMIT_REACHED",
                                            "message": "Rate limit exceeded. Please try again later"}]}))
    post(relay, registration(1, [("Ann", "A", "ann@example.com", 10)]))

    def retried() -> dict[str, Any] | None:
        rows = relay.rows("SELECT * FROM deliveries WHERE attempts = 1 AND status = 'pending'")
        return rows[0] if rows else None
    delivery = wait_until(retried)
    [attempt] = relay.attempts(delivery["id"])
    assert attempt["outcome"] == "retry" and attempt["status_code"] == 429
    assert delivery["next_attempt_at"] - attempt["started_at"] >= 30.0
    assert "relay waits 30 s" in delivery["last_error"]
    assert fake.rows(BASE, TABLE) == []


def test_a_burst_is_paced_to_five_requests_a_second(start: Callable[..., RelayServer],
                                                    fake: FakeAirtable) -> None:
    fake.rate_limit(5, 1.0)
    relay = start()
    for n in range(20):
        post(relay, registration(n + 1, people(2, start=2 * n)))
    relay.settled(40, "delivered", timeout=40)
    assert sorted(r["Email"] for r in fake.rows(BASE, TABLE)) == sorted(
        f"runner{i}@example.com" for i in range(40))
    assert fake.over_limit == 0 and fake.max_in_window <= 5
    # At most 10 records a request. (How many requests it takes depends on how fast the
    # burst is routed; the pacer's window itself is tested in test_lanes.py.)
    assert len(fake.writes()) >= 4
    assert relay.rows("SELECT COUNT(*) AS n FROM attempts WHERE status_code = 429") == [{"n": 0}]


# --- preview and options ---------------------------------------------------------------


def test_relay_try_shows_the_request_without_the_token(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    secret = "patSECRET.0123456789"
    result = CliRunner().invoke(cli, [
        "try", str(SHIPPED), str(SAMPLES / "webconnex" / "registration.json"), "--type", "registration",
        "--db", str(tmp_path / "relay.db")], env={"AIRTABLE_TOKEN": secret})
    assert result.exit_code == 0, result.output
    assert secret not in result.output
    assert '"Authorization": "Bearer [secret]"' in result.output
    assert '"method": "PATCH"' in result.output
    assert "https://api.airtable.com/v0/appXXXXXXXXXXXXXX/Registrants" in result.output
    assert '"Email": "daniel.lopez@example.com"' in result.output


def build(**config: Any) -> AirtableDestination:
    values: dict[str, Any] = {"type": "airtable", "token": "patX.y", "base": BASE, "table": TABLE}
    values.update(config)
    return AirtableDestination(values, DestinationContext(Path("data")))


@pytest.mark.parametrize(("config", "key", "words"), [
    ({"base": "https://airtable.com/appTESTBASE000001/tbl1"}, "base", "did you mean appTESTBASE000001?"),
    ({"base": "Registrations 2025"}, "base", "app followed by 14 letters"),
    ({"token": "keyOLDSTYLE12345"}, "token", "personal access token"),
    ({"merge_on": ["A", "B", "C", "D"]}, "merge_on", "at most 3"),
    ({"merge_on": {"Email": True}}, "merge_on", "list of field names"),
    ({"typecast": "yes"}, "typecast", "true or false"),
    ({"table": ""}, None, "needs `table:`"),
    ({"sheet": "x"}, "sheet", "unknown option 'sheet'"),
])
def test_option_mistakes_name_the_option(config: dict[str, Any], key: str | None, words: str) -> None:
    with pytest.raises(OptionError) as caught:
        build(**config)
    assert caught.value.key == key and words in caught.value.message
    assert "patX.y" not in caught.value.message


def test_table_names_are_url_encoded() -> None:
    destination = build(table="Runners 2025/26", merge_on="Email")
    assert destination.url == f"https://api.airtable.com/v0/{BASE}/Runners%202025%2F26"
    assert destination.merge_on == ["Email"] and destination.method == "PATCH"
    assert build().method == "POST"


def test_a_delivery_without_its_merge_value_fails_alone(fake: FakeAirtable) -> None:
    destination = AirtableDestination(
        {"type": "airtable", "token": fake.token, "base": BASE, "table": TABLE, "merge_on": ["Email"]},
        DestinationContext(Path("data"), Settings(airtable_url=fake.base_url)))

    async def run() -> list[Sent | DeliveryFailed]:
        async with httpx.AsyncClient() as client:
            ctxs = [DeliveryContext(client, n, n, f"k{n}", 1, 5.0) for n in range(2)]
            return await destination.send_batch(
                [{"Email": "", "First name": "Nobody"}, {"Email": "ann@example.com", "First name": "Ann"}], ctxs)

    missing, sent = asyncio.run(run())
    assert isinstance(missing, DeliveryFailed) and not missing.retryable
    assert "no value for 'Email'" in missing.message
    assert isinstance(sent, Sent) and json.loads(sent.body or "")["fields"]["First name"] == "Ann"
    assert fake.rows(BASE, TABLE) == [{"Email": "ann@example.com", "First name": "Ann"}]
    assert len(fake.writes()) == 1
