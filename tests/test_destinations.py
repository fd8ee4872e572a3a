"""The destination registry: every built-in type loads, and registers like a plugin would."""

from __future__ import annotations

import tomllib

from conftest import ROOT
from relay.destinations import BUILT_IN, Destination, destination_types


def test_every_built_in_type_loads() -> None:
    types = destination_types()
    assert set(types) >= {"http", "csv", "google_sheets", "hubspot", "mailchimp", "airtable",
                          "pipedrive", "slack"}
    for name, cls in types.items():
        assert issubclass(cls, Destination)
        assert cls.type == name


def test_built_ins_are_entry_points_too() -> None:
    """Built-in types register through the same entry point group a plugin package uses."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert project["project"]["entry-points"]["relay.destinations"] == BUILT_IN


def test_every_type_has_a_readme_section() -> None:
    readme = (ROOT / "README.md").read_text()
    for name in destination_types():
        assert f"`type: {name}`" in readme or f"**`{name}`**" in readme, name
