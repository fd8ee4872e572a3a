"""``type: pipedrive`` end to end: real OpenTicket webhooks through relay into a fake Pipedrive.

The fake (tests/fakes/pipedrive.py) holds the persons and refuses what Pipedrive
refuses; each test asserts what the fake holds afterwards.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from conftest import ROOT, SAMPLES, RelayServer, sample, write_recipe, write_sources
from fakes.base import Answer
from fakes.pipedrive import FakePipedrive
from relay.cli import cli
from relay.destinations import DestinationContext, OptionError
from relay.destinations.pipedrive import PipedriveDestination
from relay.errors import DeliveryFailed

SHIPPED = ROOT / "recipes" / "openticket-to-pipedrive.yaml"
ORDER = json.loads(sample("openticket/order.paid.json"))
CUSTOM_KEY = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture
def fake() -> Iterator[FakePipedrive]:
    api = FakePipedrive()
    yield api
    api.close()


@pytest.fixture
def start(make_relay: Callable[..., RelayServer], tmp_path: Path, fake: FakePipedrive,
          monkeypatch: pytest.MonkeyPatch) -> Callable[..., RelayServer]:
    monkeypatch.setenv("PIPEDRIVE_TOKEN", fake.token)

    def go(**replace: str) -> RelayServer:
        text = SHIPPED.read_text()
        for old, new in replace.items():
            assert old in text, old
            text = text.replace(old, new)
        folder = tmp_path / "recipes"
        write_sources(folder)
        write_recipe(folder, "openticket-to-pipedrive", text)
        relay = make_relay(pipedrive_url=fake.base_url)
        assert relay.client.get("/healthz").json()["errors"] == 0
        return relay
    return go


def order(relay: RelayServer, email: str = ORDER["email"], **changes: Any) -> int:
    """Post one OpenTicket order (a new guid each time); returns the event id."""
    guid = str(uuid.uuid4())
    body = json.dumps(dict(ORDER, guid=guid, email=email, **changes)).encode()
    response = relay.send("openticket", "openticket", body, msg_id=f"order.paid:{guid}")
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "accepted", response.text
    return int(response.json()["event"])




SEARCH = ("GET", "/api/v2/persons/search")
ADD = ("POST", "/api/v2/persons")


def update(person_id: int) -> tuple[str, str]:
    return ("PATCH", f"/api/v2/persons/{person_id}")


# --- persons ---------------------------------------------------------------------------


def test_a_new_buyer_becomes_a_person(start: Callable[..., RelayServer], fake: FakePipedrive) -> None:
    relay = start()
    order(relay)
    [delivery] = relay.settled(1, "delivered")
    [person] = fake.with_email("sanne.devries@example.nl")
    assert person["name"] == "Sanne de Vries"
    assert person["emails"] == [{"value": "sanne.devries@example.nl", "primary": True, "label": "work"}]
    assert fake.calls() == [SEARCH, ADD]
    search = fake.requests[0]
    assert search.query == {"term": ["sanne.devries@example.nl"], "fields": ["email"], "exact_match": ["true"]}
    assert all(r.headers["x-api-token"] == fake.token for r in fake.requests)
    [attempt] = relay.attempts(delivery["id"])
    assert attempt["status_code"] == 201 and json.loads(attempt["response_body"])["data"]["id"] == person["id"]


def test_the_same_email_again_updates_that_person(start: Callable[..., RelayServer],
                                                  fake: FakePipedrive) -> None:
    relay = start()
    order(relay)
    relay.settled(1, "delivered")
    order(relay, email="Sanne.DeVries@example.nl", firstname="Sanne J.")  # Pipedrive's search ignores case
    relay.settled(2, "delivered")
    [person] = fake.with_email("sanne.devries@example.nl")
    assert person["name"] == "Sanne J. de Vries"
    assert len(fake.persons) == 1
    assert fake.calls() == [SEARCH, ADD, SEARCH, update(person["id"])]
    assert "emails" not in fake.requests[-1].json()  # the person's own emails are left alone


def test_several_persons_with_the_email_update_the_oldest(start: Callable[..., RelayServer],
                                                          fake: FakePipedrive) -> None:
    older = fake.add_person("S. de Vries", "sanne.devries@example.nl")
    newer = fake.add_person("Sanne dV", "sanne.devries@example.nl")
    relay = start()
    order(relay)
    [delivery] = relay.settled(1, "delivered")
    assert fake.persons[older]["name"] == "Sanne de Vries"
    assert fake.persons[newer]["name"] == "Sanne dV"
    assert fake.calls() == [SEARCH, update(older)]
    [attempt] = relay.attempts(delivery["id"])
    assert attempt["response_body"].startswith(
        f"updated person {older}; 2 persons in Pipedrive have the email sanne.devries@example.nl "
        f"(ids {older}, {newer}); relay updated the oldest, {older}")


def test_a_new_phone_joins_the_persons_numbers(start: Callable[..., RelayServer], fake: FakePipedrive) -> None:
    person_id = fake.add_person("Sanne", "sanne.devries@example.nl", phones=("+31 20 555 0101",))
    relay = start(**{"  email: email\n": "  email: email\n  phone: \"'+31 6 5555 0199'\"\n"})
    order(relay)
    relay.settled(1, "delivered")
    assert [(p["value"], p["primary"]) for p in fake.persons[person_id]["phones"]] == [
        ("+31 6 5555 0199", True), ("+31 20 555 0101", False)]


def test_search_lag_does_not_make_a_second_person(start: Callable[..., RelayServer],
                                                  fake: FakePipedrive) -> None:
    fake.search_lag = 60.0  # a new person is not searchable yet
    relay = start()
    order(relay)
    relay.settled(1, "delivered")
    order(relay, lastname="de Vries-Bakker")
    [_, second] = relay.settled(2, "delivered")
    [person] = fake.with_email("sanne.devries@example.nl")
    assert person["name"] == "Sanne de Vries-Bakker"
    assert fake.calls() == [SEARCH, ADD, SEARCH, update(person["id"])]
    assert "did not find sanne.devries@example.nl yet" in relay.attempts(second["id"])[0]["response_body"]


# --- refused -----------------------------------------------------------------------------


def test_a_400_is_dead_with_pipedrives_error(start: Callable[..., RelayServer], fake: FakePipedrive) -> None:
    relay = start(**{"  # custom_fields:\n  #   ": "  custom_fields:\n    "})
    order(relay)
    [delivery] = relay.settled(1, "dead")
    assert delivery["attempts"] == 1 and delivery["last_status_code"] == 400
    assert f"Custom field with key '{CUSTOM_KEY}' does not exist" in delivery["last_error"]
    assert delivery["last_error"].startswith("HTTP 400: Pipedrive refused to add the person")
    assert fake.persons == {}
    assert fake.calls() == [SEARCH, ADD]

    fake.custom_fields.add(CUSTOM_KEY)  # once the field exists, the same recipe works
    order(relay)
    relay.settled(2)
    [person] = fake.with_email("sanne.devries@example.nl")
    assert list(person["custom_fields"]) == [CUSTOM_KEY]


def test_a_delivery_without_email_is_dead_naming_the_field(start: Callable[..., RelayServer],
                                                           fake: FakePipedrive) -> None:
    relay = start()
    order(relay, email="")
    [delivery] = relay.settled(1, "dead")
    assert delivery["attempts"] == 1
    assert "this delivery has no `email`" in delivery["last_error"]
    assert fake.requests == []


def test_a_field_pipedrive_does_not_have_is_named(start: Callable[..., RelayServer],
                                                  fake: FakePipedrive) -> None:
    relay = start(**{"  email: email\n": "  email: email\n  order: guid\n"})
    order(relay)
    [delivery] = relay.settled(1, "dead")
    assert "Pipedrive persons have no field 'order'" in delivery["last_error"]
    assert fake.requests == []


def test_a_refused_token_is_dead_in_plain_words(start: Callable[..., RelayServer], fake: FakePipedrive) -> None:
    relay = start(**{"${PIPEDRIVE_TOKEN}": "not-the-token"})
    order(relay)
    [delivery] = relay.settled(1, "dead")
    assert delivery["last_status_code"] == 401
    assert "the API token was refused (Pipedrive says: Unauthorized access" in delivery["last_error"]
    assert "not-the-token" not in delivery["last_error"]


# --- retried ---------------------------------------------------------------------------


@pytest.mark.parametrize(("retry_after", "wait"), [(None, 2.0), ("3", 3.0)])
def test_a_429_is_retried_after_the_window(start: Callable[..., RelayServer], fake: FakePipedrive,
                                           retry_after: str | None, wait: float) -> None:
    fake.fail_next(Answer(429, {"success": False, "error": "Request over limit", "errorCode": 429},
                          headers={"Retry-After": retry_after} if retry_after else {}))
    relay = start()
    order(relay)
    [delivery] = relay.settled(1, "delivered")
    tried = relay.attempts(delivery["id"])
    assert [(a["outcome"], a["status_code"]) for a in tried] == [("retry", 429), ("delivered", 201)]
    assert "Pipedrive is rate limiting this API token (Pipedrive says: Request over limit)" in tried[0]["error"]
    first, second = fake.requests[0], fake.requests[1]
    assert (first.method, second.method) == ("GET", "GET")
    assert second.at - first.at >= wait
    assert len(fake.persons) == 1


def test_a_503_is_retried(start: Callable[..., RelayServer], fake: FakePipedrive) -> None:
    relay = start()
    fake.fail_next(Answer(503, {"success": False, "error": "Service unavailable"}))
    order(relay)
    [delivery] = relay.settled(1, "delivered")
    assert [a["status_code"] for a in relay.attempts(delivery["id"])] == [503, 201]
    assert len(fake.persons) == 1


def test_a_burst_is_paced(start: Callable[..., RelayServer], fake: FakePipedrive) -> None:
    fake.rate_limit(20, 2.0)
    fake.search_limit = 10
    relay = start()
    for n in range(14):
        order(relay, email=f"buyer{n}@example.nl")
    relay.settled(14, "delivered", timeout=40)
    assert len(fake.persons) == 14
    assert fake.over_limit == 0 and fake.search_over_limit == 0
    assert relay.rows("SELECT COUNT(*) AS n FROM attempts WHERE status_code = 429") == [{"n": 0}]


# --- preview and options ---------------------------------------------------------------


def test_relay_try_shows_the_requests_without_the_token(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    secret = "f00dfeedf00dfeedf00dfeedf00dfeedf00dfeed"
    result = CliRunner().invoke(cli, [
        "try", str(SHIPPED), str(SAMPLES / "openticket" / "order.paid.json"), "--type", "order.paid",
        "--db", str(tmp_path / "relay.db")], env={"PIPEDRIVE_TOKEN": secret})
    assert result.exit_code == 0, result.output
    assert secret not in result.output
    assert '"x-api-token": "[secret]"' in result.output
    assert ("https://api.pipedrive.com/api/v2/persons/search?term=sanne.devries%40example.nl"
            "&fields=email&exact_match=true") in result.output
    assert '"value": "sanne.devries@example.nl"' in result.output


def build(**config: Any) -> PipedriveDestination:
    values: dict[str, Any] = {"type": "pipedrive", "token": "tok"}
    values.update(config)
    return PipedriveDestination(values, DestinationContext(Path("data")))


def test_company_and_rate_limit() -> None:
    assert build().base_url == "https://api.pipedrive.com/api/v2"
    assert build(company="acme").base_url == "https://acme.pipedrive.com/api/v2"
    assert build(company="https://Acme.pipedrive.com/").base_url == "https://acme.pipedrive.com/api/v2"
    default = build()
    assert default.pacer is not None and (default.pacer.limit, default.search_pacer.limit) == (20, 10)
    higher = build(rate_limit={"requests": 80, "per": 2, "search": 40})
    assert higher.pacer is not None and (higher.pacer.limit, higher.search_pacer.limit) == (80, 40)


@pytest.mark.parametrize(("config", "key", "words"), [
    ({"company": "acme corp"}, "company", "subdomain"),
    ({"rate_limit": 40}, "rate_limit", "{requests: 40, per: 2"),
    ({"rate_limit": {"requests": "many"}}, "rate_limit", "must be numbers"),
    ({"rate_limit": {"requests": 0}}, "rate_limit", "at least 1"),
    ({"token": ""}, None, "needs `token:`"),
    ({"domain": "acme"}, "domain", "unknown option 'domain'"),
])
def test_option_mistakes_name_the_option(config: dict[str, Any], key: str | None, words: str) -> None:
    with pytest.raises(OptionError) as caught:
        build(**config)
    assert caught.value.key == key and words in caught.value.message


def test_person_fields_are_checked() -> None:
    destination = build()
    person = destination.person({"email": " ann@example.com ", "name": "", "phone": 31205550101,
                                 "org_id": "7", "label_ids": 3, "custom_fields": {CUSTOM_KEY: "x"}})
    assert destination.create_body(person) == {
        "name": "ann@example.com", "emails": [{"value": "ann@example.com", "primary": True}],
        "phones": [{"value": "31205550101", "primary": True}], "org_id": 7, "label_ids": [3],
        "custom_fields": {CUSTOM_KEY: "x"}}
    assert "name" not in destination.update_body(person, ["31205550101"])  # no name: keep theirs
    assert "phones" not in destination.update_body(person, ["31205550101"])  # already theirs
    with pytest.raises(DeliveryFailed) as caught:
        destination.person({"email": "a@b.c", "owner_id": "Jan"})
    assert "owner_id must be a number" in caught.value.message and not caught.value.retryable
