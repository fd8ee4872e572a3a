"""Broken recipes: each kind of mistake is reported at its file, line and field, in
plain words, and disables only its own recipe.

Every case below is a real YAML file in a temporary recipes folder, loaded the way
relay loads it. The expected line numbers are counted by hand from the text.
"""

from __future__ import annotations

import json
import re
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from conftest import (
    ROOT,
    RelayServer,
    Sink,
    sample,
    shipped_secret_names,
    shipped_secrets,
    sign,
    wait_until,
    write_recipe,
    write_sources,
)
from relay.cli import cli
from relay.destinations import DestinationContext
from relay.errors import ConfigError, SecretMissing
from relay.recipes import Recipe, Recipes, load_recipes
from relay.sources import load_sources

UNUSED_URL = "http://127.0.0.1:9/unused"

# Secrets the unit tests know. The MISSING ones are never set anywhere.
ENV = {
    "RELAY_TEST_CRM_URL": "https://crm.example.com/hook/url-secret-0001",
    "RELAY_TEST_OTHER": "other-secret-value-0002",
}
MISSING = ("RELAY_TEST_MISSING_URL", "RELAY_TEST_MISSING_TOKEN")


@dataclass(frozen=True)
class Case:
    text: str
    line: int
    field: str | None  # what the message starts with ("fields.email"), None if it names no field
    says: tuple[str, ...]  # words the message must contain


def yaml(text: str) -> str:
    return textwrap.dedent(text).lstrip("\n")


CASES: dict[str, Case] = {
    "yaml-syntax": Case(yaml(f"""
        source: tito
        events: ["ticket.*"]
        fields:
          email: email
           name: first_name
        to:
          - type: http
            url: {UNUSED_URL}
        """), 5, None, ("not valid YAML",)),
    "fields-jmespath": Case(yaml(f"""
        source: tito
        events: ["ticket.*"]
        fields:
          name: first_name
          email: "email[["
        to:
          - type: http
            url: {UNUSED_URL}
        """), 5, "fields.email", ("'email[['", "is not a valid JMESPath expression")),
    "when-jmespath": Case(yaml(f"""
        source: tito
        events: ["ticket.*"]
        when: "registration.receipt.paid &&"
        fields:
          email: email
        to:
          - type: http
            url: {UNUSED_URL}
        """), 3, "when", ("registration.receipt.paid &&", "is not a valid JMESPath expression")),
    "for-each-jmespath": Case(yaml(f"""
        source: tito
        events: ["ticket.*"]
        for_each: "tickets[?price >"
        fields:
          email: email
        to:
          - type: http
            url: {UNUSED_URL}
        """), 3, "for_each", ("tickets[?price >", "is not a valid JMESPath expression")),
    "jinja-syntax": Case(yaml(f"""
        source: tito
        events: ["ticket.*"]
        fields:
          email: email
          name: "{{{{ first_name }}"
        to:
          - type: http
            url: {UNUSED_URL}
        """), 5, "fields.name", ("template error", "unexpected '}'")),
    "unknown-type": Case(yaml(f"""
        source: tito
        events: ["ticket.*"]
        fields:
          email: email
        to:
          - type: http
            url: {UNUSED_URL}
          - type: ftp
            host: ftp.example.com
        """), 8, "to[1].type", ("unknown destination type 'ftp'", "http", "csv")),
    "missing-url": Case(yaml("""
        source: tito
        events: ["ticket.*"]
        fields:
          email: email
        to:
          - type: http
            method: PUT
        """), 6, "to[0]", ("needs `url:`",)),
    "unknown-option": Case(yaml(f"""
        source: tito
        events: ["ticket.*"]
        fields:
          email: email
        to:
          - type: http
            url: {UNUSED_URL}
            timeout: 5
        """), 8, "to[0].timeout", ("unknown option 'timeout'", "url", "headers")),
    "secret-in-url": Case(yaml("""
        source: tito
        events: ["ticket.*"]
        fields:
          email: email
        to:
          - type: http
            url: ${RELAY_TEST_MISSING_URL}
        """), 7, "to[0].url", ("${RELAY_TEST_MISSING_URL} is not set",
                                "`relay secret set RELAY_TEST_MISSING_URL`")),
    "secret-in-header": Case(yaml("""
        source: tito
        events: ["ticket.*"]
        fields:
          email: email
        to:
          - type: http
            url: ${RELAY_TEST_CRM_URL}
            headers:
              X-Api-Key: ${RELAY_TEST_OTHER}
              Authorization: "Bearer ${RELAY_TEST_MISSING_TOKEN}"
        """), 10, "to[0].headers.Authorization", ("${RELAY_TEST_MISSING_TOKEN} is not set",
                                                  "`relay secret set RELAY_TEST_MISSING_TOKEN`")),
    "unknown-source": Case(yaml(f"""
        description: meant for tito, but the name has a typo
        source: titto
        events: ["ticket.*"]
        fields:
          email: email
        to:
          - type: http
            url: {UNUSED_URL}
        """), 2, "source", ("there is no source 'titto' in sources.yaml", "tito")),
    "unknown-key": Case(yaml(f"""
        source: tito
        events: ["ticket.*"]
        filter: "registration.receipt.paid"
        fields:
          email: email
        to:
          - type: http
            url: {UNUSED_URL}
        """), 3, "filter", ("unknown key 'filter'", "when", "for_each")),
    "missing-fields": Case(yaml(f"""
        # A recipe that forgot to say what to send.
        source: tito
        events: ["ticket.*"]
        to:
          - type: http
            url: {UNUSED_URL}
        """), 2, None, ("`fields:` is missing",)),
    "missing-to": Case(yaml("""
        # A recipe that forgot to say where to send.
        source: tito
        events: ["ticket.*"]
        fields:
          email: email
        """), 2, None, ("`to:`", "at least one destination")),
}


def good_recipe(url: str) -> str:
    return yaml(f"""
        source: tito
        events: ["ticket.*"]
        when: "registration.receipt.paid"
        fields:
          email: email
          name: "{{{{ first_name }}}} {{{{ last_name }}}}"
        to:
          - type: http
            url: {url}
        """)


def load(folder: Path, tmp_path: Path, env: dict[str, str] | None = None) -> Recipes:
    lookup = (ENV if env is None else env).get
    sources = load_sources(folder, lookup)
    assert sources.all_errors() == []
    return load_recipes(folder, sources, lookup, DestinationContext(tmp_path / "data"))


def load_one(tmp_path: Path, text: str, env: dict[str, str] | None = None) -> tuple[Recipe, Path]:
    folder = tmp_path / "recipes"
    write_sources(folder)
    path = write_recipe(folder, "broken", text)
    [recipe] = load(folder, tmp_path, env).items
    return recipe, path


def assert_error_at(recipe: Recipe, path: Path, line: int) -> ConfigError:
    assert recipe.error is not None, "the recipe loaded without an error"
    assert recipe.active is False
    assert recipe.to == []
    error = recipe.error
    assert (error.path, error.line) == (str(path), line), error.located()
    assert error.located() == f"{path}:{line}: {error.message}"
    assert "\n" not in error.message
    return error


# --- each kind of mistake ---------------------------------------------------------


@pytest.mark.parametrize("name", list(CASES))
def test_broken_recipe_is_located(tmp_path: Path, name: str) -> None:
    case = CASES[name]
    recipe, path = load_one(tmp_path, case.text)
    error = assert_error_at(recipe, path, case.line)
    if case.field is not None:
        assert error.message.startswith(f"{case.field}: "), error.message
    for words in case.says:
        assert words in error.message, error.message
    for value in ENV.values():
        assert value not in error.message


def test_line_numbers_are_counted_right() -> None:
    # The hand-counted lines above point where each case says they do.
    def at(name: str) -> str:
        case = CASES[name]
        return case.text.splitlines()[case.line - 1].strip()

    assert at("yaml-syntax") == "name: first_name"
    assert at("fields-jmespath").startswith("email:")
    assert at("when-jmespath").startswith("when:")
    assert at("for-each-jmespath").startswith("for_each:")
    assert at("jinja-syntax").startswith("name:")
    assert at("unknown-type") == "- type: ftp"
    assert at("missing-url") == "- type: http"
    assert at("unknown-option") == "timeout: 5"
    assert at("secret-in-url").startswith("url: ${")
    assert at("secret-in-header").startswith("Authorization:")
    assert at("unknown-source") == "source: titto"
    assert at("unknown-key").startswith("filter:")
    assert at("missing-fields") == at("missing-to") == "source: tito"


@pytest.mark.parametrize("name", ["secret-in-url", "secret-in-header"])
def test_unresolved_secret_says_how_to_set_it(tmp_path: Path, name: str) -> None:
    recipe, path = load_one(tmp_path, CASES[name].text)
    error = assert_error_at(recipe, path, CASES[name].line)
    assert isinstance(error, SecretMissing)
    [secret] = [m for m in MISSING if m in CASES[name].text]
    assert f"${{{secret}}}" in error.message
    assert f"relay secret set {secret}" in error.message
    assert f"environment variable {secret}" in error.message
    # the values of the secrets that are set never appear
    for value in ENV.values():
        assert value not in error.message
        assert value not in error.located()


def test_a_secret_that_is_set_is_used(tmp_path: Path) -> None:
    # The same header recipe loads once the missing secret exists.
    env = {**ENV, "RELAY_TEST_MISSING_TOKEN": "token-value-0003"}
    recipe, _ = load_one(tmp_path, CASES["secret-in-header"].text, env)
    assert recipe.error is None and recipe.active
    [destination] = recipe.to
    assert destination.preview({})["url"] == ENV["RELAY_TEST_CRM_URL"]
    assert destination.preview({})["headers"]["Authorization"] == "Bearer token-value-0003"
    assert set(env.values()) <= recipe.secret_values


def test_secret_value_is_not_shown_in_an_error(tmp_path: Path) -> None:
    # A secret whose value makes the url invalid: the error says so without the value.
    env = {"RELAY_TEST_CRM_URL": "crm.example.com/hook?key=very-secret-key"}
    recipe, path = load_one(tmp_path, CASES["secret-in-header"].text.replace(
        "${RELAY_TEST_MISSING_TOKEN}", "static").replace("${RELAY_TEST_OTHER}", "x"), env)
    error = assert_error_at(recipe, path, 7)
    assert error.message.startswith("to[0].url: ")
    assert "http://" in error.message
    assert "very-secret-key" not in error.located()
    assert "[secret]" in error.message


def test_nested_field_reports_its_own_line(tmp_path: Path) -> None:
    recipe, path = load_one(tmp_path, yaml(f"""
        source: tito
        fields:
          email: email
          person:
            first: first_name
            last: "last_name[["
          tags:
            - "'tito'"
        to:
          - type: http
            url: {UNUSED_URL}
        """))
    error = assert_error_at(recipe, path, 6)
    assert error.message.startswith("fields.person.last: "), error.message
    assert "is not a valid JMESPath expression" in error.message


def test_nested_list_field_reports_its_own_line(tmp_path: Path) -> None:
    recipe, path = load_one(tmp_path, yaml(f"""
        source: tito
        fields:
          email: email
          tags:
            - "'tito'"
            - "{{{{ oops"
        to:
          - type: http
            url: {UNUSED_URL}
        """))
    error = assert_error_at(recipe, path, 6)
    assert error.message.startswith("fields.tags[1]: "), error.message
    assert "template error" in error.message


def test_nested_fields_compile_when_right(tmp_path: Path) -> None:
    recipe, _ = load_one(tmp_path, yaml(f"""
        source: tito
        fields:
          person:
            first: first_name
            tags: ["'tito'", 1]
        to:
          - type: http
            url: {UNUSED_URL}
        """))
    assert recipe.error is None
    from relay.mapping import evaluate
    assert recipe.fields is not None
    assert evaluate(recipe.fields, {"first_name": "Ann"}) == {
        "person": {"first": "Ann", "tags": ["tito", 1]}}


def test_fields_that_are_not_a_mapping_point_at_fields(tmp_path: Path) -> None:
    recipe, path = load_one(tmp_path, yaml(f"""
        source: tito
        events: ["ticket.*"]
        fields: email
        to:
          - type: http
            url: {UNUSED_URL}
        """))
    error = assert_error_at(recipe, path, 3)
    assert error.message.startswith("fields: ")
    assert "map names to expressions" in error.message


def test_empty_to_points_at_to(tmp_path: Path) -> None:
    recipe, path = load_one(tmp_path, "source: tito\nfields:\n  email: email\nto: []\n")
    error = assert_error_at(recipe, path, 4)
    assert error.message.startswith("to: ")


def test_one_broken_recipe_leaves_the_others_working(tmp_path: Path) -> None:
    folder = tmp_path / "recipes"
    write_sources(folder)
    write_recipe(folder, "good", good_recipe(UNUSED_URL))
    for name, case in CASES.items():
        write_recipe(folder, name, case.text)
    recipes = load(folder, tmp_path)
    assert len(recipes.items) == len(CASES) + 1
    good = recipes.get("good")
    assert good is not None and good.active and good.error is None
    assert {r.name for r in recipes.items if r.error is not None} == set(CASES)
    assert len(recipes.errors()) == len(CASES)


def test_errors_before_source_still_belong_to_their_source(tmp_path: Path) -> None:
    # An unknown key stops loading before `source:` is read; the recipe still shows
    # under tito (so tito's route log reports it). An unparseable file cannot say
    # its source, so it shows under every source.
    folder = tmp_path / "recipes"
    write_sources(folder)
    for name in ("unknown-key", "yaml-syntax", "unknown-source"):
        write_recipe(folder, name, CASES[name].text)
    recipes = load(folder, tmp_path)
    assert {r.name for r in recipes.for_source("tito")} == {"unknown-key", "yaml-syntax"}
    assert {r.name for r in recipes.for_source("quicket")} == {"yaml-syntax"}
    assert {r.name for r in recipes.for_source("titto")} == {"unknown-source", "yaml-syntax"}
    assert recipes.get("unknown-key").source == "tito"  # type: ignore[union-attr]


def test_fields_that_fail_on_an_event_are_route_errors_not_crashes(tmp_path: Path) -> None:
    # A field whose result is not data, or a filter given the wrong kind of value,
    # must give the recipe an "error" outcome; any other exception would stop the
    # router for every event.
    from relay.routing import route_event

    folder = tmp_path / "recipes"
    write_sources(folder)
    write_recipe(folder, "good", good_recipe(UNUSED_URL))
    write_recipe(folder, "expref", yaml(f"""
        source: tito
        fields:
          email: "&email"
        to:
          - type: http
            url: {UNUSED_URL}
        """))
    write_recipe(folder, "dictsort", yaml(f"""
        source: tito
        fields:
          sorted: "{{{{ email | dictsort }}}}"
        to:
          - type: http
            url: {UNUSED_URL}
        """))
    recipes = load(folder, tmp_path)
    assert recipes.errors() == []
    event = {"id": 1, "source": "tito", "type": "ticket.completed", "is_test": 0,
             "received_at": 1.0, "body": sample("tito/ticket.completed.json")}
    routed = route_event(recipes, event)
    outcomes = {r["recipe"]: (r["outcome"], r["message"]) for r in routed.routes}
    assert outcomes["good"] == ("queued", None)
    assert outcomes["expref"][0] == "error" and "field email: '&email'" in outcomes["expref"][1]
    assert outcomes["dictsort"][0] == "error" and "field sorted: " in outcomes["dictsort"][1]
    assert [d["recipe"] for d in routed.deliveries] == ["good"]
    json.dumps([d["payload"] for d in routed.deliveries])  # storable


# --- end to end ------------------------------------------------------------------


BROKEN_ELSEWHERE = yaml(f"""
    source: tito
    events: ["registration.*"]
    when: "&&"
    fields:
      email: email
    to:
      - type: http
        url: {UNUSED_URL}
    """)


def test_broken_recipes_are_logged_and_the_good_one_delivers(
        make_relay: Any, tmp_path: Path, sink: Sink, monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in ENV.items():
        monkeypatch.setenv(name, value)
    for name in MISSING:
        monkeypatch.delenv(name, raising=False)
    folder = tmp_path / "recipes"
    write_sources(folder)
    write_recipe(folder, "good", good_recipe(f"{sink.url}/good"))
    for name, case in CASES.items():
        write_recipe(folder, name, case.text)
    write_recipe(folder, "broken-elsewhere", BROKEN_ELSEWHERE)  # events do not match

    relay: RelayServer = make_relay()
    health = relay.client.get("/healthz").json()
    assert health == {"status": "ok", "sources": 7, "recipes": len(CASES) + 2,
                      "errors": len(CASES) + 1}

    body = sample("tito/ticket.completed.json")
    path, headers = sign("tito", "tito", body)
    headers["X-Webhook-Name"] = "ticket.completed"
    response = relay.post(path, body, headers)
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "accepted"
    event_id = response.json()["event"]

    wait_until(lambda: sink.received)
    [got] = sink.received
    assert got.path == "/good"
    assert got.json() == {"email": "winter@example.com", "name": "Peter Winter"}

    # Routing commits all of an event's routes at once, before the delivery.
    routes = relay.rows("SELECT recipe, outcome, message FROM routes WHERE event_id = ?",
                        [event_id])
    by_name = {r["recipe"]: r for r in routes}
    assert len(by_name) == len(routes)
    assert by_name.pop("good")["outcome"] == "queued"
    # Every broken tito recipe whose events match (or whose error came before its
    # events were read) is logged; the one for other events, and the one naming a
    # source that does not exist, are not.
    expected = set(CASES) - {"unknown-source"}
    assert set(by_name) == expected
    for name, row in by_name.items():
        case = CASES[name]
        assert row["outcome"] == "error"
        location = f"{folder / name}.yaml:{case.line}: "
        assert row["message"].startswith("the recipe is disabled by an error: " + location)
        for value in ENV.values():
            assert value not in row["message"]
    assert relay.rows("SELECT recipe FROM deliveries WHERE event_id = ?", [event_id]) == [
        {"recipe": "good"}]


# --- relay check -----------------------------------------------------------------


LOCATED = re.compile(r"^(?P<file>[^:]+\.yaml):(?P<line>\d+): (?P<message>\S.*)$")


def check(folder: Path, tmp_path: Path, env: dict[str, str | None]) -> Any:
    runner = CliRunner(env={"RELAY_DATA": str(tmp_path / "data"), **env})
    return runner.invoke(cli, ["check", str(folder), "--db", str(tmp_path / "no.db")])


def test_check_prints_one_line_per_problem(tmp_path: Path) -> None:
    folder = tmp_path / "recipes"
    write_sources(folder)
    write_recipe(folder, "good", good_recipe(UNUSED_URL))
    for name, case in CASES.items():
        write_recipe(folder, name, case.text)
    result = check(folder, tmp_path, {**ENV, **{name: None for name in MISSING}})
    assert result.exit_code == 1, result.output
    lines = result.stdout.splitlines()
    assert len(lines) == len(CASES)
    seen = {}
    for line in lines:
        match = LOCATED.match(line)
        assert match, line
        seen[Path(match["file"]).stem] = (int(match["line"]), match["message"])
    assert set(seen) == set(CASES)
    for name, case in CASES.items():
        line, message = seen[name]
        assert line == case.line, (name, line)
        if case.field is not None:
            assert message.startswith(f"{case.field}: ")
        for value in ENV.values():
            assert value not in message
    assert f"{len(CASES)} problem(s) found." in result.stderr


def test_check_passes_a_good_folder(tmp_path: Path) -> None:
    folder = tmp_path / "recipes"
    write_sources(folder)
    write_recipe(folder, "good", good_recipe(UNUSED_URL))
    # the header recipe is good once its secrets are there
    write_recipe(folder, "with-secrets", CASES["secret-in-header"].text)
    env = {**ENV, "RELAY_TEST_MISSING_TOKEN": "now-it-is-set"}
    result = check(folder, tmp_path, dict(env))
    assert result.exit_code == 0, result.output
    assert result.stdout == ""
    assert "OK: 7 sources, 2 recipes." in result.stderr
    # and without that one secret, the same folder fails on exactly that line
    result = check(folder, tmp_path, {**ENV, "RELAY_TEST_MISSING_TOKEN": None})
    assert result.exit_code == 1
    assert result.stdout.splitlines() == [
        f"{folder / 'with-secrets.yaml'}:10: to[0].headers.Authorization: the secret "
        "${RELAY_TEST_MISSING_TOKEN} is not set. Set it with `relay secret set "
        "RELAY_TEST_MISSING_TOKEN` (or the environment variable RELAY_TEST_MISSING_TOKEN), "
        "then reload."]


def test_shipped_recipes_have_no_errors(tmp_path: Path) -> None:
    folder = ROOT / "recipes"
    secrets = shipped_secrets()  # every ${NAME} of sources.yaml and the recipes
    names = sorted(secrets)
    assert len(names) >= 5, names
    env: dict[str, str | None] = dict(secrets)
    result = check(folder, tmp_path, env)
    assert result.exit_code == 0, result.output
    assert result.stdout == ""
    # Loaded directly, too: every recipe is active and every source ready.
    lookup = {k: v for k, v in env.items() if v}.get
    sources = load_sources(folder, lookup)
    recipes = load_recipes(folder, sources, lookup, DestinationContext(tmp_path / "data"))
    assert sources.all_errors() == [] and recipes.errors() == []
    assert len(recipes.items) >= 5 and all(r.active for r in recipes.items)
    assert {r.source for r in recipes.items} <= set(sources)
    # Without its secrets, check names each of sources.yaml's (so the run above really
    # needed them); a recipe reports its first unset secret.
    result = check(folder, tmp_path, {name: None for name in names})
    assert result.exit_code == 1
    for name in shipped_secret_names(folder / "sources.yaml"):
        assert f"relay secret set {name}`" in result.stdout

