"""What relay prints while it works never contains a secret."""

from __future__ import annotations

import json
import os
from pathlib import Path

import httpx
import pytest

from conftest import SECRETS, RelayProcess, Sink, free_port, sample, sign, wait_until, write_sources


@pytest.mark.slow
def test_serve_log_has_no_secrets(tmp_path: Path, sink: Sink) -> None:
    secret_path = "/hooks/T0SECRET/B0SECRET/xoxsecretpath0123456789"
    write_sources(tmp_path / "recipes")
    (tmp_path / "recipes" / "crm.yaml").write_text(
        "source: quicket\nfields:\n  reference: reference\nto:\n"
        "  - type: http\n    url: ${CRM_URL}\n    headers:\n      Authorization: Bearer ${CRM_TOKEN}\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("RELAY_")}
    env.update(CRM_URL=sink.url + secret_path, CRM_TOKEN="tok-very-secret-123",
               RELAY_RECIPES=str(tmp_path / "recipes"), RELAY_DB=str(tmp_path / "relay.db"),
               RELAY_DATA=str(tmp_path / "data"))
    relay = RelayProcess(tmp_path, free_port(), env)
    try:
        body = json.dumps(dict(json.loads(sample("quicket/checkout_completed.json")))).encode()
        path, headers = sign("quicket", "quicket", body)
        assert httpx.post(relay.url + path, content=body, headers=headers, timeout=10).status_code == 200
        # a refused request is logged too
        httpx.post(relay.url + "/hooks/quicket/wrong-token", content=body, headers=headers, timeout=10)
        wait_until(lambda: len(sink.received) >= 1)
        assert sink.received[0].path == secret_path  # the secret URL was really used
    finally:
        relay.terminate()
    log = b"".join(p.read_bytes() for p in tmp_path.glob("relay-*.log")).decode(errors="replace")
    assert "accepted webhook" in log
    for secret in ("T0SECRET", "xoxsecretpath", "tok-very-secret-123", SECRETS["quicket"]):
        assert secret not in log, f"{secret} leaked into the log"
