"""The README tells the truth: its settings, commands and quick start work as written."""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from conftest import ROOT, RelayProcess, free_port, wait_until
from relay.settings import SETTINGS

README = (ROOT / "README.md").read_text()


@pytest.mark.parametrize("setting", SETTINGS, ids=lambda s: s.env)
def test_every_setting_is_documented(setting: object) -> None:
    env = setting.env  # type: ignore[attr-defined]
    assert re.search(rf"^\| `{env}` \|", README, re.MULTILINE), f"{env} missing from README"


def test_documented_settings_exist() -> None:
    documented = set(re.findall(r"^\| `(RELAY_[A-Z_]+)` \|", README, re.MULTILINE))
    assert documented == {s.env for s in SETTINGS}


def test_readme_commands_are_the_ones_ci_runs() -> None:
    assert "python3 -m venv .venv && .venv/bin/pip install -e . && .venv/bin/relay serve" in README
    test_command = "python3 -m venv .venv && .venv/bin/pip install -e '.[test]' && .venv/bin/pytest"
    assert test_command in README
    ci = (ROOT / ".ci" / "run").read_text()
    assert ".venv/bin/pip install --quiet -e '.[test]' && .venv/bin/pytest" in ci


def test_cli_commands_in_readme_exist() -> None:
    from click.testing import CliRunner

    from relay.cli import cli

    result = CliRunner().invoke(cli, ["--help"])
    assert result.exit_code == 0
    for command in re.findall(r"^\| `relay (\w+)", README, re.MULTILINE):
        assert re.search(rf"^  {command}\*? ", result.output, re.MULTILINE), command


@pytest.mark.slow
def test_quick_start_try_it(tmp_path: Path) -> None:
    """The "Try it in one minute" steps, on a copy of the shipped recipes."""
    shutil.copytree(ROOT / "recipes", tmp_path / "recipes")
    shutil.copytree(ROOT / "tests" / "samples", tmp_path / "tests" / "samples")
    env = {k: v for k, v in os.environ.items() if not k.startswith("RELAY_")}
    for name in ("QUICKET_TOKEN", "TITO_TOKEN", "TIKKL_SECRET", "OPENTICKET_NONCE", "WEBCONNEX_SECRET"):
        env.pop(name, None)
    port = free_port()
    relay = RelayProcess(tmp_path, port, env)  # relay serve, run in the checkout's folder
    try:
        # the source is off until its secret is set
        url = f"{relay.url}/hooks/quicket/abc123-choose-your-own"
        body = (tmp_path / "tests/samples/quicket/checkout_completed.json").read_bytes()
        headers = {"Content-Type": "application/json"}
        refused = httpx.post(url, content=body, headers=headers, timeout=10)
        assert refused.status_code == 503
        assert "QUICKET_TOKEN" in refused.json()["error"]

        subprocess.run([sys.executable, "-m", "relay", "secret", "set", "QUICKET_TOKEN"],
                       input=b"abc123-choose-your-own\n", cwd=tmp_path, env=env, check=True,
                       capture_output=True, timeout=60)

        def post() -> httpx.Response | None:
            response = httpx.post(url, content=body, headers=headers, timeout=10)
            return response if response.status_code == 200 else None

        answer = wait_until(post, timeout=30, interval=0.25)  # relay reloads the new secret
        assert answer.json()["status"] == "accepted"
        out = tmp_path / "data" / "quicket" / "attendees.csv"

        def rows() -> list[dict[str, str]] | None:
            if not out.exists():
                return None
            with open(out, newline="") as f:
                found = list(csv.DictReader(f))
            return found if len(found) == 2 else None

        got = wait_until(rows, timeout=30)
        tickets = json.loads(body)["tickets"]
        assert [r["ticket_id"] for r in got] == [str(t["id"]) for t in tickets]
        assert [r["email"] for r in got] == [t["attendee_email"] for t in tickets]
    finally:
        relay.terminate()
    # The URL token is a secret: it must not reach relay's output (uvicorn's access
    # log would print it).
    output = b"".join(p.read_bytes() for p in tmp_path.glob("relay-*.log"))
    assert b"accepted webhook" in output
    assert b"abc123-choose-your-own" not in output
