"""``GET /metrics``: Prometheus text whose numbers match what relay did, and no secrets."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from conftest import SECRETS, RelayServer, Reply, Sink, sample, wait_until, write_recipe, write_sources
from relay.errors import ConfigError
from relay.settings import Settings

BASE = json.loads(sample("quicket/checkout_completed.json"))
CRM_TOKEN = "crm-token-never-in-metrics-42"


def scrape(relay: RelayServer, **headers: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of /metrics by (name, labels)."""
    response = relay.client.get("/metrics", headers=headers)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(response.text) for s in family.samples}


def value(samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str,
          **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def post(relay: RelayServer, reference: str) -> Any:
    body = json.dumps(dict(BASE, reference=reference)).encode()
    response = relay.send("quicket", "quicket", body)
    assert response.status_code == 200, response.text
    return response.json()


@pytest.fixture
def crm(make_relay: Callable[..., RelayServer], tmp_path: Path, sink: Sink,
        monkeypatch: pytest.MonkeyPatch) -> Callable[..., RelayServer]:
    monkeypatch.setenv("CRM_TOKEN", CRM_TOKEN)
    write_sources(tmp_path / "recipes")
    write_recipe(tmp_path / "recipes", "crm", f"""\
source: quicket
fields:
  reference: reference
to:
  - type: http
    url: {sink.url}/crm
    headers:
      Authorization: Bearer ${{CRM_TOKEN}}
""")
    return make_relay


def test_counters_match_what_was_sent(crm: Callable[..., RelayServer], sink: Sink) -> None:
    relay = crm()
    sink.replies = [Reply(400, b'{"error":"bad"}')]  # the first delivery is dead at once
    for reference in ("R-1", "R-2", "R-3"):
        assert post(relay, reference)["status"] == "accepted"
    assert post(relay, "R-1")["status"] == "duplicate"
    body = json.dumps(dict(BASE, reference="R-9")).encode()
    for _ in range(2):
        assert relay.post("/hooks/quicket/not-the-token", body, {}).status_code == 401
    assert relay.post("/hooks/no-such-source", body, {}).status_code == 404

    def settled() -> Any:
        samples = scrape(relay)
        done = (value(samples, "relay_delivery_attempts_total", destination_type="http", outcome="delivered")
                + value(samples, "relay_delivery_attempts_total", destination_type="http", outcome="dead"))
        return samples if done == 3 else None
    samples = wait_until(settled)

    def events(outcome: str, status: str, source: str = "quicket") -> float:
        return value(samples, "relay_events_received_total", source=source, outcome=outcome, status=status)
    assert events("accepted", "200") == 3
    assert events("duplicate", "200") == 1
    assert events("rejected", "401") == 2
    assert events("rejected", "404", source="(unknown)") == 1
    assert value(samples, "relay_delivery_attempts_total", destination_type="http", outcome="delivered") == 2
    assert value(samples, "relay_delivery_attempts_total", destination_type="http", outcome="dead") == 1
    assert value(samples, "relay_delivery_latency_seconds_count", destination_type="http") == 2
    assert value(samples, "relay_delivery_attempt_duration_seconds_count", destination_type="http") == 3
    assert value(samples, "relay_queue_deliveries", state="pending") == 0
    assert value(samples, "relay_queue_oldest_pending_age_seconds") == 0


def test_queue_depth_and_age_while_the_destination_fails(crm: Callable[..., RelayServer],
                                                         sink: Sink) -> None:
    sink.default = Reply(503, b'{"error":"down"}')
    relay = crm(retry_base=60.0, retry_max_delay=60.0)
    for reference in ("R-1", "R-2"):
        post(relay, reference)
    wait_until(lambda: len(sink.received) >= 2)

    def failing() -> Any:
        samples = scrape(relay)
        # The counter moves just after the attempt is committed: wait for both.
        ok = (value(samples, "relay_queue_deliveries", state="pending") == 2
              and value(samples, "relay_queue_oldest_pending_age_seconds") > 0
              and value(samples, "relay_delivery_attempts_total", destination_type="http",
                        outcome="retry") == 2)
        return samples if ok else None
    samples = wait_until(failing)
    assert value(samples, "relay_queue_deliveries", state="sending") == 0


def test_queue_is_read_from_the_database_after_a_restart(crm: Callable[..., RelayServer],
                                                         sink: Sink) -> None:
    sink.default = Reply(503, b'{"error":"down"}')
    first = crm(retry_base=60.0, retry_max_delay=60.0)
    post(first, "R-1")
    wait_until(lambda: len(sink.received) >= 1)
    wait_until(lambda: first.rows("SELECT 1 FROM deliveries WHERE status = 'pending' AND attempts = 1"))
    first.stop()
    second = crm(retry_base=60.0, retry_max_delay=60.0)
    samples = scrape(second)
    assert value(samples, "relay_queue_deliveries", state="pending") == 1
    assert value(samples, "relay_queue_oldest_pending_age_seconds") > 0
    assert value(samples, "relay_events_received_total", source="quicket", outcome="accepted",
                 status="200") == 0  # counters start again; the queue does not


def test_no_secret_in_metrics(crm: Callable[..., RelayServer], sink: Sink) -> None:
    relay = crm()
    post(relay, "R-1")
    relay.post(f"/hooks/quicket/{SECRETS['quicket']}x", b"{}", {})
    wait_until(lambda: sink.received)
    text = relay.client.get("/metrics").text
    for secret in (*SECRETS.values(), CRM_TOKEN, "not-the-token"):
        assert secret not in text


def test_metrics_token(crm: Callable[..., RelayServer]) -> None:
    relay = crm(metrics_token="metrics-token-1")
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "metrics-token-1"}):
        response = relay.client.get("/metrics", headers=headers)
        assert response.status_code == 401
        assert "RELAY_METRICS_TOKEN" in response.json()["error"]
    samples = scrape(relay, Authorization="Bearer metrics-token-1")
    assert value(samples, "relay_queue_deliveries", state="pending") == 0
    assert relay.client.get("/healthz").status_code == 200  # only /metrics is guarded


def test_metrics_are_public_without_a_token(crm: Callable[..., RelayServer]) -> None:
    relay = crm()
    assert relay.client.get("/metrics").status_code == 200


def test_two_apps_in_one_process_count_separately(crm: Callable[..., RelayServer],
                                                  tmp_path: Path) -> None:
    one = crm()
    two = crm(db=tmp_path / "other.db")
    post(one, "R-1")
    assert value(scrape(one), "relay_events_received_total", source="quicket",
                 outcome="accepted", status="200") == 1
    assert value(scrape(two), "relay_events_received_total", source="quicket",
                 outcome="accepted", status="200") == 0


@pytest.mark.parametrize("url", ["relay.example.com", "ftp://relay.example.com",
                                 "https://relay.example.com/hooks", "https://relay.example.com/?a=1",
                                 "https://"])
def test_public_url_must_be_a_plain_http_address(url: str) -> None:
    with pytest.raises(ConfigError, match="RELAY_PUBLIC_URL"):
        Settings.from_env(environ={"RELAY_PUBLIC_URL": url})


def test_public_url_defaults_to_host_and_port() -> None:
    assert Settings.from_env(environ={"RELAY_PORT": "9000"}).public_url == "http://127.0.0.1:9000"
    assert Settings.from_env(environ={"RELAY_PUBLIC_URL": "https://relay.example.com/"}).public_url \
        == "https://relay.example.com"


def test_log_format_is_text_or_json() -> None:
    assert Settings.from_env(environ={"RELAY_LOG_FORMAT": "JSON"}).log_format == "json"
    with pytest.raises(ConfigError, match="RELAY_LOG_FORMAT"):
        Settings.from_env(environ={"RELAY_LOG_FORMAT": "xml"})
