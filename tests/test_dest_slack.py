"""type: slack, end to end: real Quicket webhooks through relay to a fake Slack webhook.

What is asserted is what the fake channel holds afterwards, what relay recorded
for refused messages, and that the webhook URL (a secret) shows nowhere.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from conftest import (
    ROOT,
    SAMPLES,
    RelayServer,
    free_port,
    sample,
    wait_until,
    write_recipe,
    write_sources,
)
from fakes.slack import FakeSlack, plain
from relay.cli import cli
from relay.destinations import DestinationContext, OptionError, Pacers
from relay.destinations.slack import SlackDestination
from relay.errors import DeliveryFailed
from relay.settings import Settings

BASE = json.loads(sample("quicket/checkout_completed.json"))
SHIPPED = ROOT / "recipes" / "any-to-slack.yaml"
TOKEN = "x8Yq2fakeSECRETtokenZZ91"


@pytest.fixture
def fake() -> Iterator[FakeSlack]:
    f = FakeSlack(token=f"T0001/B0002/{TOKEN}")
    yield f
    f.close()


@pytest.fixture
def shipped(make_relay: Callable[..., RelayServer], tmp_path: Path, fake: FakeSlack,
            monkeypatch: pytest.MonkeyPatch) -> RelayServer:
    """The shipped recipe, its webhook URL (in the environment) the fake's."""
    folder = tmp_path / "recipes"
    write_sources(folder)
    shutil.copy(SHIPPED, folder / SHIPPED.name)
    monkeypatch.setenv("SLACK_WEBHOOK_URL", fake.webhook)
    return make_relay()


def post(relay: RelayServer, **changes: Any) -> int:
    body = json.dumps(dict(BASE, **changes)).encode()
    response = relay.send("quicket", "quicket", body)
    assert response.status_code == 200, response.text
    return int(response.json()["event"])


def settled(relay: RelayServer, event_id: int, count: int = 1) -> list[dict[str, Any]]:
    def check() -> list[dict[str, Any]] | None:
        rows = relay.rows("SELECT * FROM deliveries WHERE event_id = ? ORDER BY id", [event_id])
        done = len(rows) == count and all(r["status"] in ("delivered", "dead") for r in rows)
        return rows if done else None
    return wait_until(check, timeout=30)  # type: ignore[no-any-return]



def assert_url_nowhere(relay: RelayServer) -> None:
    """Neither the webhook URL nor its token is in any delivery or attempt."""
    stored = json.dumps(relay.rows("SELECT * FROM deliveries") + relay.rows("SELECT * FROM attempts"))
    assert TOKEN not in stored and "/services/" not in stored


# --- messages -----------------------------------------------------------------------


def test_each_sale_is_a_message(shipped: RelayServer, fake: FakeSlack) -> None:
    [row] = settled(shipped, post(shipped))
    assert row["status"] == "delivered" and row["last_status_code"] == 200
    assert fake.texts() == [
        "New sale: 2 ticket(s) for My Big Event, R300.00 (order QK-20250614-0042, "
        "thandi.nkosi@example.com)"]
    [request] = fake.requests
    assert request.method == "POST" and request.path == f"/services/T0001/B0002/{TOKEN}"
    assert shipped.attempts(row["id"])[0]["response_body"] == "ok"
    assert_url_nowhere(shipped)


def test_without_a_text_field_each_field_is_a_line_and_mentions_are_escaped(
        make_relay: Callable[..., RelayServer], tmp_path: Path, fake: FakeSlack) -> None:
    recipe(tmp_path / "recipes", """\
fields:
  order: reference
  buyer: email
  event: event_name
""", webhook=fake.webhook)
    relay = make_relay()
    settled(relay, post(relay, event_name="<!channel> Gala & Dinner"))
    assert fake.texts() == ["order: QK-20250614-0042\nbuyer: thandi.nkosi@example.com\n"
                            "event: &lt;!channel&gt; Gala &amp; Dinner"]


def test_a_named_text_field_and_blocks_pass_through(make_relay: Callable[..., RelayServer],
                                                    tmp_path: Path, fake: FakeSlack) -> None:
    recipe(tmp_path / "recipes", """\
fields:
  message: "Sale {{ reference }}"
  blocks:
    - type: "'section'"
      text:
        type: "'mrkdwn'"
        text: "*{{ event_name }}*: {{ tickets | length }} tickets"
""", webhook=fake.webhook, options="    text: message\n")
    relay = make_relay()
    settled(relay, post(relay))
    [message] = fake.messages
    assert message.text == "Sale QK-20250614-0042"
    assert message.blocks == [{"type": "section",
                               "text": {"type": "mrkdwn", "text": "*My Big Event*: 2 tickets"}}]


# --- refused: dead at once, with Slack's reason -----------------------------------------


def test_archived_channel_is_dead_with_slacks_reason(shipped: RelayServer, fake: FakeSlack) -> None:
    fake.channel = "archived"
    [row] = settled(shipped, post(shipped))
    assert row["status"] == "dead" and row["attempts"] == 1 and row["last_status_code"] == 410
    assert "channel_is_archived" in row["last_error"]
    assert "the channel was archived" in row["last_error"]
    assert "make a new incoming webhook" in row["last_error"]
    [attempt] = shipped.attempts(row["id"])
    assert attempt["outcome"] == "dead" and attempt["response_body"] == "channel_is_archived"
    assert fake.messages == []
    assert_url_nowhere(shipped)


def test_deleted_channel_and_revoked_webhook(make_relay: Callable[..., RelayServer], tmp_path: Path,
                                             fake: FakeSlack) -> None:
    folder = tmp_path / "recipes"
    recipe(folder, name="deleted", webhook=fake.webhook)
    recipe(folder, name="revoked", webhook=fake.url + "/services/T0001/B0002/revokedTOKEN")
    fake.channel = "deleted"
    relay = make_relay()
    rows = {r["recipe"]: r for r in settled(relay, post(relay), 2)}
    assert rows["deleted"]["status"] == "dead" and rows["deleted"]["last_status_code"] == 404
    assert "channel_not_found" in rows["deleted"]["last_error"]
    assert "channel no longer exists" in rows["deleted"]["last_error"]
    assert rows["revoked"]["status"] == "dead"
    assert "no_service" in rows["revoked"]["last_error"]
    assert "removed or revoked" in rows["revoked"]["last_error"]
    assert "revokedTOKEN" not in json.dumps(relay.rows("SELECT * FROM attempts"))
    assert_url_nowhere(relay)


# --- rate limits --------------------------------------------------------------------


def test_429_retry_after_is_honoured(shipped: RelayServer, fake: FakeSlack) -> None:
    fake.fail_next(plain(429, "rate_limited", {"Retry-After": "1"}))
    [row] = settled(shipped, post(shipped))
    assert row["status"] == "delivered", row["last_error"]
    first, second = shipped.attempts(row["id"])
    assert (first["outcome"], first["status_code"]) == ("retry", 429)
    assert "rate_limited" in first["error"]
    assert second["outcome"] == "delivered"
    refused, accepted = fake.requests
    assert accepted.at - refused.at >= 1.0
    assert len(fake.messages) == 1
    assert_url_nowhere(shipped)


def test_one_message_a_second_per_webhook(shipped: RelayServer, fake: FakeSlack) -> None:
    events = [post(shipped, reference=f"QK-{n}") for n in range(3)]
    for event_id in events:
        assert settled(shipped, event_id)[0]["status"] == "delivered"
    times = [m.at for m in fake.messages]
    assert len(times) == 3
    for before, after in zip(times, times[1:], strict=False):
        assert after - before >= 0.9  # the pacer's 1 s, less network jitter
    # in the order of the sales
    assert [t.split("order ")[1].split(",")[0] for t in fake.texts() if t] == ["QK-0", "QK-1", "QK-2"]


# --- the URL is a secret --------------------------------------------------------------


def test_a_connection_error_does_not_show_the_url(make_relay: Callable[..., RelayServer],
                                                   tmp_path: Path) -> None:
    closed = free_port()
    recipe(tmp_path / "recipes", webhook=f"http://127.0.0.1:{closed}/services/T0001/B0002/{TOKEN}")
    relay = make_relay()
    event_id = post(relay)
    [row] = wait_until(lambda: (rows := relay.rows(
        "SELECT * FROM deliveries WHERE event_id = ? AND attempts >= 1", [event_id])) and rows)
    assert "could not connect to 127.0.0.1" in row["last_error"]
    assert_url_nowhere(relay)


def test_relay_try_hides_the_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    url = f"https://hooks.slack.com/services/T0001/B0002/{TOKEN}"
    monkeypatch.setenv("SLACK_WEBHOOK_URL", url)
    monkeypatch.setenv("RELAY_DB", str(tmp_path / "relay.db"))
    monkeypatch.setenv("RELAY_DATA", str(tmp_path / "data"))
    result = CliRunner().invoke(cli, ["try", str(SHIPPED), str(SAMPLES / "quicket/checkout_completed.json")])
    assert result.exit_code == 0, result.output
    assert TOKEN not in result.output and "hooks.slack.com" not in result.output
    assert '"url": "[secret webhook URL]"' in result.output
    assert "New sale: 2 ticket(s) for My Big Event" in result.output
    # the preview itself holds no URL (relay try also redacts, as a second guard)
    preview = SlackDestination({"type": "slack", "webhook": url}, context(tmp_path)).preview(
        {"text": "hi"})
    assert preview == {"type": "slack", "method": "POST", "url": "[secret webhook URL]",
                       "headers": {"Content-Type": "application/json"}, "body": {"text": "hi"}}


@pytest.mark.parametrize(("options", "key", "words"), [
    ({"webhook": f"hooks.slack.com/services/{TOKEN}"}, "webhook", "https:// URL"),
    ({"webhook": f"ftp://hooks.slack.com/services/{TOKEN}"}, "webhook", "https:// URL"),
    ({"webhook": f"https://hooks.slack.com:abc/services/{TOKEN}"}, "webhook", "not a URL"),
    ({"text": 3}, "text", "names the recipe field"),
    ({"escape": "no"}, "escape", "true or false"),
    ({"channel": "#sales"}, "channel", "unknown option"),
])
def test_option_mistakes_name_the_option_and_never_the_url(
        tmp_path: Path, options: dict[str, Any], key: str, words: str) -> None:
    config = {"type": "slack", "webhook": f"https://hooks.slack.com/services/{TOKEN}", **options}
    with pytest.raises(OptionError) as raised:
        SlackDestination(config, context(tmp_path))
    assert raised.value.key == key and words in raised.value.message
    assert TOKEN not in raised.value.message


def test_a_missing_or_empty_text_is_a_plain_permanent_error(tmp_path: Path) -> None:
    url = f"https://hooks.slack.com/services/{TOKEN}"
    named = SlackDestination({"type": "slack", "webhook": url, "text": "message"}, context(tmp_path))
    with pytest.raises(DeliveryFailed, match="names the field 'message'") as raised:
        named.preview({"text": "hello"})
    assert not raised.value.retryable
    default = SlackDestination({"type": "slack", "webhook": url}, context(tmp_path))
    with pytest.raises(DeliveryFailed, match="the message is empty"):
        default.preview({"text": " "})


# --- helpers ----------------------------------------------------------------------


def context(tmp_path: Path) -> DestinationContext:
    return DestinationContext(tmp_path / "data", Settings(), Pacers())


def recipe(folder: Path, fields: str = 'fields:\n  text: "New sale: {{ reference }}"\n', *,
           webhook: str, name: str = "slack", options: str = "") -> None:
    write_sources(folder)
    write_recipe(folder, name, f"""\
source: quicket
events: ["checkout_completed"]
{fields}to:
  - type: slack
    webhook: {webhook}
{options}""")
