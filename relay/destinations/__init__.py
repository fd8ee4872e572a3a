"""Destination types, found by name.

Each type registers through the ``relay.destinations`` entry point group, built-in
ones included (see pyproject.toml), so a separate package can add a type the same
way. The built-ins are also known directly, so relay works from a source checkout.
"""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points

from .base import (
    DeliveryContext,
    Destination,
    DestinationContext,
    OptionError,
    Outcome,
    Sent,
)
from .pacing import Pacer, Pacers

__all__ = [
    "DeliveryContext", "Destination", "DestinationContext", "OptionError", "Outcome", "Pacer",
    "Pacers", "Sent", "destination_types",
]

# Built-in types by name, as "module:Class", imported when first needed.
BUILT_IN = {
    "http": "relay.destinations.http:HttpDestination",
    "csv": "relay.destinations.csv:CsvDestination",
    "google_sheets": "relay.destinations.google_sheets:GoogleSheetsDestination",
    "hubspot": "relay.destinations.hubspot:HubSpotDestination",
    "mailchimp": "relay.destinations.mailchimp:MailchimpDestination",
    "airtable": "relay.destinations.airtable:AirtableDestination",
    "pipedrive": "relay.destinations.pipedrive:PipedriveDestination",
    "slack": "relay.destinations.slack:SlackDestination",
}
_cache: dict[str, type[Destination]] | None = None


def _load(target: str) -> type[Destination]:
    module_name, _, attr = target.partition(":")
    cls = getattr(importlib.import_module(module_name), attr)
    if not (isinstance(cls, type) and issubclass(cls, Destination)):
        raise TypeError(f"{target} is not a Destination")
    return cls


def destination_types() -> dict[str, type[Destination]]:
    """Every known destination type by name (loaded once)."""
    global _cache
    if _cache is None:
        found: dict[str, type[Destination]] = {}
        for name, target in BUILT_IN.items():
            found[name] = _load(target)
        for ep in entry_points(group="relay.destinations"):
            if ep.name in found:
                continue
            try:
                found[ep.name] = _load(ep.value)
            except Exception:  # a broken plugin must not stop relay; its type stays unknown
                continue
        _cache = found
    return _cache
