"""The ``relay`` command through click's CliRunner: secrets, check, try, help.

Every test runs in its own folder with no RELAY_* variables and none of the
shipped recipes' secrets in the environment, so what the commands find is only
what the test put there.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from conftest import ROOT, SAMPLES, Sink, shipped_secret_names, shipped_secrets, write_recipe, write_sources
from relay.cli import cli

RECIPES = ROOT / "recipes"
SHIPPED_SECRETS = shipped_secret_names(RECIPES / "sources.yaml")
RECIPES_WITH_SECRETS = {path: shipped_secret_names(path) for path in sorted(RECIPES.glob("*.yaml"))
                        if path.name != "sources.yaml" and shipped_secret_names(path)}


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    import os
    for name in list(os.environ):
        if name.startswith("RELAY_"):
            monkeypatch.delenv(name)
    for name in list(shipped_secrets()) + ["MY_TOKEN", "CRM_TOKEN", "CRM_URL"]:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RELAY_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("RELAY_DB", str(tmp_path / "relay.db"))
    return tmp_path


def run(*args: str, input: str | None = None, env: dict[str, str | None] | None = None) -> Result:
    return CliRunner().invoke(cli, list(args), input=input, env=env)


def plain_error(result: Result, *words: str) -> None:
    """A failure the user can read: exit 1, the words, no Python traceback."""
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    for word in words:
        assert word in result.output, result.output


def token_folder(tmp: Path) -> Path:
    """A recipes folder whose one source needs the secret ${MY_TOKEN}."""
    folder = tmp / "recipes"
    folder.mkdir()
    (folder / "sources.yaml").write_text("quicket:\n  platform: quicket\n  token: ${MY_TOKEN}\n")
    write_recipe(folder, "attendees", """\
source: quicket
for_each: tickets
fields:
  email: attendee_email
to:
  - type: csv
    path: attendees.csv
""")
    return folder


def test_help_lists_every_command() -> None:
    result = run("--help")
    assert result.exit_code == 0
    commands = result.output.split("Commands:")[1]
    for name in ("serve", "check", "try", "replay", "secret"):
        assert re.search(rf"^\s+{name}\*?\s", commands, re.MULTILINE), (name, result.output)
    result = run("secret", "--help")
    assert result.exit_code == 0
    assert all(name in result.output for name in ("set", "list", "delete"))


# --- secrets ---------------------------------------------------------------------


def test_secret_set_list_delete(env: Path) -> None:
    result = run("secret", "set", "MY_TOKEN", input="s3cret-value-xyz\n")
    assert result.exit_code == 0, result.output
    assert "Secret MY_TOKEN saved" in result.output
    assert "s3cret-value-xyz" not in result.output

    result = run("secret", "set", "OTHER_ONE", input="another-value-123")
    assert result.exit_code == 0, result.output

    result = run("secret", "list")
    assert result.exit_code == 0
    names = [line.split("\t")[0] for line in result.output.splitlines()]
    assert names == ["MY_TOKEN", "OTHER_ONE"]
    assert all(re.fullmatch(r"\w+\t\d{4}-\d\d-\d\d \d\d:\d\d", line)
               for line in result.output.splitlines())
    assert "s3cret-value-xyz" not in result.output and "another-value-123" not in result.output

    result = run("secret", "delete", "MY_TOKEN")
    assert result.exit_code == 0 and "Secret MY_TOKEN deleted" in result.output
    assert [line.split("\t")[0] for line in run("secret", "list").output.splitlines()] == ["OTHER_ONE"]
    plain_error(run("secret", "delete", "MY_TOKEN"), "no secret named MY_TOKEN")


def test_secret_set_refuses_bad_names_and_empty_values(env: Path) -> None:
    plain_error(run("secret", "set", "1-bad name", input="value\n"), "cannot be a secret name")
    plain_error(run("secret", "set", "GOOD_NAME", input="\n"), "cannot be empty")
    assert run("secret", "list").output == ""


def test_a_stored_secret_resolves_in_recipes(env: Path) -> None:
    folder = token_folder(env)
    result = run("check", str(folder))
    plain_error(result, "MY_TOKEN", "sources.yaml:3:")

    assert run("secret", "set", "MY_TOKEN", input="a-long-url-token-0123456789\n").exit_code == 0
    result = run("check", str(folder))
    assert result.exit_code == 0, result.output
    assert "OK: 1 sources, 1 recipes." in result.output

    assert run("secret", "delete", "MY_TOKEN").exit_code == 0
    plain_error(run("check", str(folder)), "MY_TOKEN")


def test_secrets_are_encrypted_at_rest(env: Path) -> None:
    value = "plain-text-would-be-bad-0123456789"
    assert run("secret", "set", "MY_TOKEN", input=value + "\n").exit_code == 0
    files = sorted(env.glob("relay.db*"))  # the database, and its WAL while it has one
    assert files and files[0].name == "relay.db"
    raw = b"".join(path.read_bytes() for path in files)
    assert b"MY_TOKEN" in raw  # we are looking at the right bytes...
    assert value.encode() not in raw  # ...and the value is not among them
    # the key that encrypts it was generated once, readable only by its owner
    key = env / "data" / "secret.key"
    assert key.exists() and key.stat().st_mode & 0o077 == 0
    assert value.encode() not in key.read_bytes()


def test_a_wrong_secret_key_is_a_plain_error(env: Path) -> None:
    folder = token_folder(env)
    saved = run("secret", "set", "MY_TOKEN", input="a-long-url-token-0123456789\n",
                env={"RELAY_SECRET_KEY": "the-first-key"})
    assert saved.exit_code == 0, saved.output
    assert not (env / "data" / "secret.key").exists()  # RELAY_SECRET_KEY was used instead
    assert run("check", str(folder), env={"RELAY_SECRET_KEY": "the-first-key"}).exit_code == 0

    result = run("check", str(folder), env={"RELAY_SECRET_KEY": "not-the-same-key"})
    plain_error(result, "MY_TOKEN cannot be decrypted", "RELAY_SECRET_KEY")
    result = run("check", str(folder))  # no RELAY_SECRET_KEY: a new key file, also wrong
    plain_error(result, "MY_TOKEN cannot be decrypted")


# --- relay check ------------------------------------------------------------------


def test_check_names_each_unset_secret_of_the_shipped_recipes(env: Path) -> None:
    assert SHIPPED_SECRETS  # the shipped sources.yaml does use secrets
    lines = (RECIPES / "sources.yaml").read_text().splitlines()
    result = run("check", str(RECIPES), "--db", str(env / "no-such.db"))
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    problems = result.stdout.splitlines()
    for name in SHIPPED_SECRETS:
        [line_no] = [i for i, line in enumerate(lines, 1)
                     if "${" + name + "}" in line and not line.lstrip().startswith("#")]
        expected = f"{RECIPES / 'sources.yaml'}:{line_no}:"
        assert any(p.startswith(expected) and "${" + name + "}" in p
                   and f"relay secret set {name}" in p for p in problems), (name, problems)
    # each recipe with secrets of its own reports its first unset one, and nothing else
    for path, names in RECIPES_WITH_SECRETS.items():
        [problem] = [p for p in problems if p.startswith(f"{path}:")]
        assert any("${" + n + "}" in problem and f"relay secret set {n}" in problem for n in names), problem
    expected = len(SHIPPED_SECRETS) + len(RECIPES_WITH_SECRETS)
    assert len(problems) == expected, problems  # the recipes themselves are fine
    assert f"{expected} problem(s) found." in result.stderr
    assert not (env / "no-such.db").exists()  # check never creates a database


def test_check_passes_with_the_secrets_in_the_environment(env: Path) -> None:
    values = shipped_secrets()
    result = run("check", str(RECIPES), "--db", str(env / "no-such.db"), env=dict(values))
    assert result.exit_code == 0, result.output
    assert result.stdout == ""
    for value in values.values():
        assert value not in result.output


# --- relay try --------------------------------------------------------------------


def previews(output: str) -> list[tuple[str, Any]]:
    """``[(header line, parsed JSON preview), ...]`` from ``relay try`` output."""
    parts = re.split(r"^(--- destination .*)$", output, flags=re.MULTILINE)
    return [(parts[i], json.loads(parts[i + 1])) for i in range(1, len(parts), 2)]


def test_try_shows_one_preview_per_ticket_and_sends_nothing(env: Path) -> None:
    payload = SAMPLES / "quicket" / "checkout_completed.json"
    result = run("try", str(RECIPES / "quicket-attendees.yaml"), str(payload))
    assert result.exit_code == 0, result.output
    assert result.output.startswith("event type: checkout_completed\n")
    shown = previews(result.output)
    assert [header for header, _ in shown] == ["--- destination 1 (item 0): csv",
                                               "--- destination 1 (item 1): csv"]
    event = json.loads(payload.read_text())
    for (_, preview), ticket in zip(shown, event["tickets"], strict=True):
        row = dict(zip(preview["columns"], preview["row"], strict=True))
        assert row["order"] == event["reference"]
        assert row["ticket_id"] == ticket["id"]
        assert row["name"] == ticket["attendee_name"]
        assert row["email"] == ticket["attendee_email"]
    # a dry run: no CSV file, no database, no key
    assert not (env / "data" / "quicket").exists()
    assert not (env / "relay.db").exists()
    assert not (env / "data" / "secret.key").exists()


def test_try_says_when_nothing_would_be_sent(env: Path) -> None:
    recipe = str(RECIPES / "quicket-attendees.yaml")
    event = json.loads((SAMPLES / "quicket" / "checkout_completed.json").read_text())
    no_tickets = env / "no-tickets.json"
    no_tickets.write_text(json.dumps(dict(event, tickets=[])))
    result = run("try", recipe, str(no_tickets))
    assert result.exit_code == 0, result.output
    assert "Nothing would be sent" in result.output and "tickets" in result.output
    assert "--- destination" not in result.output

    # Quicket's "Send test" posts a checkout_started: not an event this recipe takes
    result = run("try", recipe, str(SAMPLES / "quicket" / "send_test.json"))
    assert result.exit_code == 0, result.output
    assert "Nothing would be sent" in result.output and "checkout_started" in result.output
    assert "--- destination" not in result.output

    when = write_recipe(env / "recipes", "big", """\
source: quicket
when: "amount > `1000`"
fields:
  reference: reference
to:
  - type: csv
    path: big.csv
""")
    write_sources(env / "recipes")
    result = run("try", str(when), str(SAMPLES / "quicket" / "checkout_completed.json"))
    assert result.exit_code == 0, result.output
    assert "Nothing would be sent" in result.output and "amount > `1000`" in result.output
    assert "--- destination" not in result.output


def test_try_never_shows_a_secret(env: Path, sink: Sink) -> None:
    folder = env / "recipes"
    write_sources(folder)
    path = write_recipe(folder, "crm", """\
source: quicket
events: ["checkout_completed"]
fields:
  reference: reference
  email: email
to:
  - type: http
    url: ${CRM_URL}
    headers:
      Authorization: "Bearer ${CRM_TOKEN}"
""")
    token, url = "crm-api-token-9f8e7d6c5b4a", f"{sink.url}/contacts"
    assert run("secret", "set", "CRM_TOKEN", input=token + "\n").exit_code == 0
    result = run("try", str(path), str(SAMPLES / "quicket" / "checkout_completed.json"),
                 env={"CRM_URL": url})
    assert result.exit_code == 0, result.output
    [(header, preview)] = previews(result.output)
    assert header == "--- destination 1: http"
    assert preview["headers"]["Authorization"] == "Bearer [secret]"
    assert preview["url"] == "[secret]"  # a URL from a secret is a secret too
    assert preview["body"] == {"reference": "QK-20250614-0042", "email": "thandi.nkosi@example.com"}
    assert token not in result.output and url not in result.output
    assert sink.received == []  # a dry run sends nothing


def test_try_with_a_missing_secret_says_which(env: Path) -> None:
    folder = env / "recipes"
    write_sources(folder)
    path = write_recipe(folder, "crm", """\
source: quicket
fields:
  reference: reference
to:
  - type: http
    url: http://127.0.0.1:9/contacts
    headers:
      Authorization: "Bearer ${CRM_TOKEN}"
""")
    plain_error(run("try", str(path), str(SAMPLES / "quicket" / "checkout_completed.json")),
                "CRM_TOKEN", f"{path}:")
