"""``relay serve``'s log: text or one JSON object a line, secrets hidden; the public URL;
forwarded headers trusted only from RELAY_FORWARDED_ALLOW_IPS."""

from __future__ import annotations

import io
import json
import logging
import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from conftest import SECRETS, RelayProcess, Sink, free_port, sample, sign, wait_until, write_sources
from relay.logs import JsonFormatter, SecretFilter

CRM_TOKEN = "tok-very-secret-123"
SECRET_PATH = "/hooks/T0SECRET/B0SECRET/xoxsecretpath0123456789"
BODY = json.dumps(dict(json.loads(sample("quicket/checkout_completed.json")))).encode()


def start(tmp_path: Path, sink: Sink, **settings: str) -> RelayProcess:
    write_sources(tmp_path / "recipes")
    (tmp_path / "recipes" / "crm.yaml").write_text(
        "source: quicket\nfields:\n  reference: reference\nto:\n"
        "  - type: http\n    url: ${CRM_URL}\n    headers:\n      Authorization: Bearer ${CRM_TOKEN}\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("RELAY_")}
    env.update(CRM_URL=sink.url + SECRET_PATH, CRM_TOKEN=CRM_TOKEN,
               RELAY_RECIPES=str(tmp_path / "recipes"), RELAY_DB=str(tmp_path / "relay.db"),
               RELAY_DATA=str(tmp_path / "data"), **settings)
    return RelayProcess(tmp_path, free_port(), env)


def exercise(relay: RelayProcess, sink: Sink, headers: dict[str, str] | None = None) -> None:
    """One accepted webhook, and refusals whose messages would carry secret values."""
    path, signed = sign("quicket", "quicket", BODY)
    assert httpx.post(relay.url + path, content=BODY, headers=signed, timeout=10).status_code == 200
    # the source name comes from the URL: here it is a secret value, so it must be hidden
    extra = headers or {}
    assert httpx.post(relay.url + f"/hooks/{CRM_TOKEN}", content=BODY, headers=extra,
                      timeout=10).status_code == 404
    assert httpx.post(relay.url + f"/hooks/{SECRETS['quicket']}", content=BODY, headers=extra,
                      timeout=10).status_code == 404
    wait_until(lambda: len(sink.received) >= 1)
    assert sink.received[0].path == SECRET_PATH
    assert sink.received[0].headers["authorization"] == f"Bearer {CRM_TOKEN}"


def output(tmp_path: Path) -> str:
    return b"".join(p.read_bytes() for p in tmp_path.glob("relay-*.log")).decode(errors="replace")


def assert_no_secrets(log: str) -> None:
    for secret in ("T0SECRET", "xoxsecretpath", CRM_TOKEN, SECRETS["quicket"]):
        assert secret not in log, f"{secret} leaked into the log"


def rejected_clients(tmp_path: Path) -> list[str]:
    conn = sqlite3.connect(tmp_path / "relay.db")
    try:
        return [row[0] for row in conn.execute("SELECT client FROM rejections ORDER BY id")]
    finally:
        conn.close()


@pytest.mark.slow
def test_json_log(tmp_path: Path, sink: Sink) -> None:
    relay = start(tmp_path, sink, RELAY_LOG_FORMAT="json", RELAY_PUBLIC_URL="https://relay.example.com",
                  RELAY_FORWARDED_ALLOW_IPS="127.0.0.1")
    try:
        exercise(relay, sink, headers={"X-Forwarded-For": "203.0.113.7"})
    finally:
        relay.terminate()
    log = output(tmp_path)
    lines: list[dict[str, Any]] = [json.loads(line) for line in log.splitlines()]
    for line in lines:
        assert {"time", "level", "logger", "message"} <= set(line)
        assert line["time"].endswith("Z")
    messages = [line["message"] for line in lines]
    assert "webhooks go to https://relay.example.com/hooks/<source>" in messages
    assert any(m.startswith("accepted webhook") for m in messages)
    assert any(line["logger"].startswith("uvicorn") for line in lines)  # uvicorn's lines too
    assert "refused a webhook for '[secret]': 404" in "\n".join(messages)
    assert_no_secrets(log)
    # behind a trusted proxy, the client is the one it forwarded for
    assert rejected_clients(tmp_path) == ["203.0.113.7", "203.0.113.7"]


@pytest.mark.slow
def test_text_log(tmp_path: Path, sink: Sink) -> None:
    relay = start(tmp_path, sink)
    try:
        exercise(relay, sink, headers={"X-Forwarded-For": "203.0.113.7"})
    finally:
        relay.terminate()
    log = output(tmp_path)
    assert f"relay: webhooks go to http://127.0.0.1:{relay.port}/hooks/<source>" in log
    assert "INFO relay.ingest: accepted webhook" in log
    assert "refused a webhook for '[secret]': 404" in log
    assert not any(line.startswith("{") for line in log.splitlines())
    assert_no_secrets(log)
    # no proxy is trusted by default: a forwarded address is ignored
    assert rejected_clients(tmp_path) == ["127.0.0.1", "127.0.0.1"]


@pytest.fixture
def captured() -> Iterator[tuple[logging.Logger, SecretFilter, io.StringIO]]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    hidden = SecretFilter(["s3cret-value"])
    handler.addFilter(hidden)
    logger = logging.getLogger("relay.test-logging")
    logger.addHandler(handler)
    logger.propagate = False
    logger.setLevel(logging.INFO)
    yield logger, hidden, stream
    logger.removeHandler(handler)
    logger.propagate = True
    logger.setLevel(logging.NOTSET)


def test_filter_hides_secrets_in_args_extras_and_tracebacks(
        captured: tuple[logging.Logger, SecretFilter, io.StringIO]) -> None:
    logger, hidden, stream = captured
    logger.warning("url %s", "https://x/s3cret-value", extra={"url": "s3cret-value", "n": 3})
    try:
        raise ValueError("bad s3cret-value")
    except ValueError:
        logger.exception("failed")
    hidden.update(["later-secret"])  # after a reload
    logger.info("now later-secret")
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert lines[0]["message"] == "url https://x/[secret]"
    assert lines[0]["url"] == "[secret]" and lines[0]["n"] == 3 and lines[0]["level"] == "WARNING"
    assert "ValueError: bad [secret]" in lines[1]["exception"]
    assert lines[2]["message"] == "now [secret]"
    assert "s3cret-value" not in stream.getvalue()
