"""Destination types, found by name.

Each type registers through the ``relay.destinations`` entry point group, built-in
ones included (see pyproject.toml), so a separate package can add a type the same
way. The built-ins are also known directly, so relay works from a source checkout.
"""

from __future__ import annotations

from importlib.metadata import entry_points

from .base import (
    DeliveryContext,
    Destination,
    DestinationContext,
    OptionError,
    Sent,
)
from .csv import CsvDestination
from .http import HttpDestination

__all__ = [
    "DeliveryContext", "Destination", "DestinationContext", "OptionError", "Sent",
    "destination_types",
]

_BUILT_IN: dict[str, type[Destination]] = {
    HttpDestination.type: HttpDestination,
    CsvDestination.type: CsvDestination,
}
_cache: dict[str, type[Destination]] | None = None


def destination_types() -> dict[str, type[Destination]]:
    """Every known destination type by name (loaded once)."""
    global _cache
    if _cache is None:
        found = dict(_BUILT_IN)
        for ep in entry_points(group="relay.destinations"):
            if ep.name in found:
                continue
            try:
                cls = ep.load()
            except Exception:  # a broken plugin must not stop relay; its type stays unknown
                continue
            if isinstance(cls, type) and issubclass(cls, Destination):
                found[ep.name] = cls
        _cache = found
    return _cache
