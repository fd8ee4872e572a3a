"""type: mailchimp, end to end: real Quicket webhooks through relay to a fake Mailchimp.

What is asserted is what the fake audience holds afterwards (members, merge fields,
tags), and what relay recorded for deliveries that Mailchimp refused.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from conftest import ROOT, SAMPLES, RelayServer, sample, wait_until, write_recipe, write_sources
from fakes.base import Answer
from fakes.mailchimp import FakeMailchimp, problem
from relay.cli import cli
from relay.destinations import DestinationContext, OptionError, Pacers
from relay.destinations.mailchimp import RATE_LIMIT_WAIT, MailchimpDestination
from relay.errors import DeliveryFailed
from relay.settings import Settings

KEY = "0123456789abcdef0123456789abcdef-us14"
AUDIENCE = "a1b2c3d4e5"
BASE = json.loads(sample("quicket/checkout_completed.json"))
THANDI, PIETER = (t["attendee_email"] for t in BASE["tickets"])
SHIPPED = ROOT / "recipes" / "quicket-to-mailchimp.yaml"


@pytest.fixture
def fake() -> Iterator[FakeMailchimp]:
    f = FakeMailchimp(api_key=KEY, lists=(AUDIENCE,))
    yield f
    f.close()


@pytest.fixture
def shipped(make_relay: Callable[..., RelayServer], tmp_path: Path, fake: FakeMailchimp,
            monkeypatch: pytest.MonkeyPatch) -> RelayServer:
    """The shipped recipe, its secrets in the environment, Mailchimp's URL the fake's."""
    folder = tmp_path / "recipes"
    write_sources(folder)
    shutil.copy(SHIPPED, folder / SHIPPED.name)
    monkeypatch.setenv("MAILCHIMP_API_KEY", KEY)
    monkeypatch.setenv("MAILCHIMP_AUDIENCE_ID", AUDIENCE)
    return make_relay(mailchimp_url=fake.base_template)


def post(relay: RelayServer, **changes: Any) -> int:
    body = json.dumps(dict(BASE, **changes)).encode()
    response = relay.send("quicket", "quicket", body)
    assert response.status_code == 200, response.text
    return int(response.json()["event"])


def settled(relay: RelayServer, event_id: int, count: int) -> list[dict[str, Any]]:
    """The event's ``count`` deliveries once none is still pending or being sent."""
    def check() -> list[dict[str, Any]] | None:
        rows = relay.rows("SELECT * FROM deliveries WHERE event_id = ? ORDER BY id", [event_id])
        done = len(rows) == count and all(r["status"] in ("delivered", "dead") for r in rows)
        return rows if done else None
    return wait_until(check, timeout=30)  # type: ignore[no-any-return]



def md5(email: str) -> str:
    return hashlib.md5(email.lower().encode()).hexdigest()


# --- members, merge fields, tags --------------------------------------------------


def test_checkout_becomes_one_member_per_ticket(shipped: RelayServer, fake: FakeMailchimp) -> None:
    rows = settled(shipped, post(shipped), 2)
    assert [r["status"] for r in rows] == ["delivered", "delivered"]
    assert set(fake.members[AUDIENCE]) == {THANDI, PIETER}
    thandi, pieter = fake.member(THANDI), fake.member(PIETER)
    assert thandi is not None and pieter is not None
    assert (thandi.status, thandi.merge_fields) == ("subscribed", {"FNAME": "Thandi", "LNAME": "Nkosi"})
    assert pieter.merge_fields == {"FNAME": "Pieter", "LNAME": "van der Merwe"}
    assert thandi.tags == pieter.tags == {"General Admission"}
    # the requests as Mailchimp saw them: the key's data centre in the address,
    # the member hash in the URL, Basic auth with the key as password
    paths = sorted((r.method, r.path) for r in fake.requests)
    assert paths == sorted(
        [("PUT", f"/us14/3.0/lists/{AUDIENCE}/members/{md5(e)}") for e in (THANDI, PIETER)]
        + [("POST", f"/us14/3.0/lists/{AUDIENCE}/members/{md5(e)}/tags") for e in (THANDI, PIETER)])
    assert fake.over_limit == 0


def test_same_person_again_is_still_one_member_updated(shipped: RelayServer,
                                                       fake: FakeMailchimp) -> None:
    settled(shipped, post(shipped), 2)
    again = [dict(BASE["tickets"][0], attendee_email="Thandi.Nkosi@Example.COM",
                  attendee_name="Thandi Mokoena", ticket_type="VIP")]
    rows = settled(shipped, post(shipped, reference="QK-2", tickets=again), 1)
    assert rows[0]["status"] == "delivered", rows[0]["last_error"]
    assert len(fake.members[AUDIENCE]) == 2
    thandi = fake.member(THANDI)
    assert thandi is not None and thandi.updates == 1
    assert thandi.merge_fields == {"FNAME": "Thandi", "LNAME": "Mokoena"}
    assert thandi.tags == {"General Admission", "VIP"}
    assert thandi.email_address == THANDI  # the member Mailchimp already had


def test_a_ticket_without_a_name_does_not_blank_the_member(shipped: RelayServer,
                                                           fake: FakeMailchimp) -> None:
    settled(shipped, post(shipped), 2)
    unnamed = [dict(BASE["tickets"][1], attendee_name=None, ticket_type="Early Bird")]
    [row] = settled(shipped, post(shipped, reference="QK-3", tickets=unnamed), 1)
    assert row["status"] == "delivered", row["last_error"]
    [put] = [r for r in fake.requests if r.method == "PUT"][-1:]
    assert "merge_fields" not in put.json()
    pieter = fake.member(PIETER)
    assert pieter is not None
    assert pieter.merge_fields == {"FNAME": "Pieter", "LNAME": "van der Merwe"}
    assert pieter.tags == {"General Admission", "Early Bird"}


# --- refused: dead at once, in plain words with Mailchimp's own -------------------------


def test_unsubscribed_or_forgotten_people_are_dead_with_mailchimps_reason(
        shipped: RelayServer, fake: FakeMailchimp) -> None:
    fake.compliance.add(PIETER)
    fake.forgotten.add(THANDI)
    rows = settled(shipped, post(shipped), 2)
    assert [r["status"] for r in rows] == ["dead", "dead"]
    forgotten, compliance = rows
    assert compliance["attempts"] == 1 and compliance["last_status_code"] == 400
    assert "Member In Compliance State" in compliance["last_error"]
    assert f"{PIETER} is in a compliance state due to unsubscribe" in compliance["last_error"]
    assert "will not subscribe them again" in compliance["last_error"]
    assert "Forgotten Email Not Subscribed" in forgotten["last_error"]
    assert "permanently deleted and cannot be re-imported" in forgotten["last_error"]
    assert "asked to be forgotten" in forgotten["last_error"]
    [attempt] = shipped.attempts(compliance["id"])
    assert attempt["outcome"] == "dead"
    assert json.loads(attempt["response_body"])["title"] == "Member In Compliance State"
    assert fake.members[AUDIENCE] == {}


def test_a_refused_api_key_is_dead_in_plain_words(make_relay: Callable[..., RelayServer],
                                                  tmp_path: Path, fake: FakeMailchimp) -> None:
    wrong = "ffffffffffffffffffffffffffffffff-us14"
    recipe(tmp_path / "recipes", f"api_key: {wrong}")
    relay = make_relay(mailchimp_url=fake.base_template)
    [row] = settled(relay, post(relay, tickets=BASE["tickets"][:1]), 1)
    assert row["status"] == "dead" and row["attempts"] == 1 and row["last_status_code"] == 401
    assert "Mailchimp refused the API key" in row["last_error"]
    assert "API Key Invalid" in row["last_error"]
    assert wrong not in row["last_error"] and "ffffffff" not in row["last_error"]
    assert len(fake.requests) == 1


def test_unknown_merge_field_and_unknown_audience(make_relay: Callable[..., RelayServer],
                                                  tmp_path: Path, fake: FakeMailchimp) -> None:
    folder = tmp_path / "recipes"
    recipe(folder, "merge_fields: {FNAME: name, TICKET: ticket}", name="fields")
    recipe(folder, "list: no-such-list", name="audience")
    relay = make_relay(mailchimp_url=fake.base_template)
    rows = settled(relay, post(relay, tickets=BASE["tickets"][:1]), 2)
    by_recipe = {r["recipe"]: r for r in rows}
    fields, audience = by_recipe["fields"], by_recipe["audience"]
    assert fields["status"] == "dead" and fields["last_status_code"] == 400
    assert "Invalid Resource: Your merge fields were invalid." in fields["last_error"]
    assert "TICKET: The merge field TICKET does not exist" in fields["last_error"]
    assert audience["status"] == "dead" and audience["last_status_code"] == 404
    assert "list not found: check the audience id" in audience["last_error"]
    assert fake.members[AUDIENCE] == {}


# --- retried ----------------------------------------------------------------------


def test_429_is_retried_after_a_short_wait(shipped: RelayServer, fake: FakeMailchimp) -> None:
    fake.fail_next(problem(429, "Too Many Requests",
                           "You have exceeded the limit of 10 simultaneous connections."))
    [row] = settled(shipped, post(shipped, tickets=BASE["tickets"][:1]), 1)
    assert row["status"] == "delivered", row["last_error"]
    first, second = shipped.attempts(row["id"])
    assert (first["outcome"], first["status_code"]) == ("retry", 429)
    assert "10 simultaneous connections" in first["error"]
    # the retry was scheduled the documented wait after the refused attempt
    # (a delivered delivery keeps the next_attempt_at of its last retry)
    assert row["next_attempt_at"] - first["started_at"] >= RATE_LIMIT_WAIT
    assert second["started_at"] >= first["started_at"] + RATE_LIMIT_WAIT
    assert second["outcome"] == "delivered"
    puts = [r for r in fake.requests if r.method == "PUT"]
    assert len(puts) == 2 and puts[1].at - puts[0].at >= RATE_LIMIT_WAIT - 0.1
    member = fake.member(THANDI)
    assert member is not None and member.tags == {"General Admission"}


def test_5xx_is_retried(shipped: RelayServer, fake: FakeMailchimp) -> None:
    fake.fail_next(Answer(503, {"title": "Service Unavailable", "status": 503,
                                "detail": "Try again shortly."}, content_type="application/problem+json"))
    [row] = settled(shipped, post(shipped, tickets=BASE["tickets"][:1]), 1)
    assert row["status"] == "delivered"
    first, _ = shipped.attempts(row["id"])
    assert first["outcome"] == "retry" and "Try again shortly." in first["error"]
    assert fake.member(THANDI) is not None


def test_never_more_simultaneous_requests_than_the_lane_allows(shipped: RelayServer,
                                                               fake: FakeMailchimp) -> None:
    fake.delay = 0.1
    events = []
    for n in range(4):
        tickets = [dict(t, attendee_email=f"p{n}.{i}@example.com") for i, t in enumerate(BASE["tickets"])]
        events.append(post(shipped, reference=f"QK-{n}", tickets=tickets))
    for event_id in events:
        assert {r["status"] for r in settled(shipped, event_id, 2)} == {"delivered"}
    assert len(fake.members[AUDIENCE]) == 8
    assert fake.max_active <= MailchimpDestination.max_in_flight < 10
    assert fake.over_limit == 0


# --- preview and options ----------------------------------------------------------


def test_relay_try_shows_the_requests_without_the_key(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAILCHIMP_API_KEY", KEY)
    monkeypatch.setenv("MAILCHIMP_AUDIENCE_ID", AUDIENCE)
    monkeypatch.setenv("RELAY_DB", str(tmp_path / "relay.db"))
    monkeypatch.setenv("RELAY_DATA", str(tmp_path / "data"))
    result = CliRunner().invoke(cli, ["try", str(SHIPPED), str(SAMPLES / "quicket/checkout_completed.json")])
    assert result.exit_code == 0, result.output
    assert KEY not in result.output and KEY.split("-")[0] not in result.output
    assert "Basic [secret API key]" in result.output
    assert f"/members/{md5(PIETER)}/tags" in result.output
    assert '"LNAME": "van der Merwe"' in result.output
    assert not (tmp_path / "relay.db").exists()

    # the preview itself holds no key (relay try also redacts, as a second guard)
    destination = MailchimpDestination(
        {"type": "mailchimp", "api_key": KEY, "list": AUDIENCE, "tags": ["VIP"],
         "merge_fields": {"FNAME": "first"}}, context(tmp_path))
    preview = destination.preview({"email": "Ann@B.com", "first": "Ann"})
    text = json.dumps(preview)
    assert KEY not in text and KEY.split("-")[0] not in text
    put, tags = preview["requests"]
    assert put["method"] == "PUT"
    assert put["url"] == f"https://us14.api.mailchimp.com/3.0/lists/{AUDIENCE}/members/{md5('ann@b.com')}"
    assert put["body"] == {"email_address": "Ann@B.com", "status_if_new": "subscribed",
                           "merge_fields": {"FNAME": "Ann"}}
    assert tags["body"] == {"tags": [{"name": "VIP", "status": "active"}]}


@pytest.mark.parametrize(("options", "key", "words"), [
    ({"api_key": "0123456789abcdef"}, "api_key", "must end in its data centre"),
    ({"api_key": "0123456789abcdef-"}, "api_key", "must end in its data centre"),
    ({"api_key": "0123456789abcdef-us14.example.com/x"}, "api_key", "must end in its data centre"),
    ({"status_if_new": "active"}, "status_if_new", "subscribed, pending"),
    ({"merge_fields": {"first name": "first"}}, "merge_fields", "not a Mailchimp merge tag"),
    ({"merge_fields": ["FNAME"]}, "merge_fields", "maps Mailchimp merge tags"),
    ({"tags": {"a": 1}}, "tags", "fixed list"),
    ({"rate_limit": 5}, "rate_limit", "requests: 10"),
    ({"audience": "x"}, "audience", "unknown option"),
])
def test_option_mistakes_name_the_option(tmp_path: Path, options: dict[str, Any], key: str,
                                         words: str) -> None:
    config = {"type": "mailchimp", "api_key": KEY, "list": AUDIENCE, **options}
    with pytest.raises(OptionError) as raised:
        MailchimpDestination(config, context(tmp_path))
    assert raised.value.key == key and words in raised.value.message
    assert "0123456789abcdef" not in raised.value.message


def test_a_recipe_field_missing_for_a_merge_field_is_a_plain_permanent_error(tmp_path: Path) -> None:
    destination = MailchimpDestination(
        {"type": "mailchimp", "api_key": KEY, "list": AUDIENCE, "merge_fields": {"FNAME": "first"}},
        context(tmp_path))
    with pytest.raises(DeliveryFailed) as raised:
        destination.preview({"email": "a@b.com", "name": "Ann"})
    assert not raised.value.retryable
    assert "merge_fields.FNAME names the field 'first'" in raised.value.message
    with pytest.raises(DeliveryFailed, match="'email' is empty"):
        destination.preview({"email": " ", "first": "Ann"})


# --- helpers ----------------------------------------------------------------------


def context(tmp_path: Path) -> DestinationContext:
    return DestinationContext(tmp_path / "data", Settings(), Pacers())


def recipe(folder: Path, *extra: str, name: str = "mailchimp") -> None:
    """A recipe like the shipped one, with literal options (``extra`` overrides)."""
    write_sources(folder)
    options = {"api_key": f"api_key: {KEY}", "list": f"list: {AUDIENCE}",
               "merge_fields": "merge_fields: {FNAME: name}", "tags": "tags: ticket"}
    for line in extra:
        options[line.split(":")[0]] = line
    lines = "\n".join(f"    {v}" for v in options.values())
    write_recipe(folder, name, f"""\
source: quicket
events: ["checkout_completed"]
for_each: tickets
fields:
  email: attendee_email
  name: attendee_name
  ticket: ticket_type
to:
  - type: mailchimp
{lines}
""")
