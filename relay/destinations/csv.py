"""``type: csv``: append one row per delivery to a CSV file in the data folder.

Options: ``path`` (required, relative to the data folder, ending in ``.csv``) and
``columns`` (optional: the header row; by default the recipe's field names in
order). A new file gets the header row first. An existing file's own header row
decides where each field goes; a field with no column there fails with a message
naming it (rather than silently shifting every column). Nested values are
written as JSON. Each row is flushed to disk before the delivery counts as done.
"""

from __future__ import annotations

import asyncio
import csv
import io
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..errors import DeliveryFailed
from .base import DeliveryContext, Destination, DestinationContext, OptionError, Sent, flat_value

# One lock per file, shared by every recipe writing to it, so rows never interleave.
_LOCKS: dict[Path, asyncio.Lock] = {}



def _cell(value: Any) -> Any:
    """Numbers stay numbers (the csv module writes them as is); the rest as text."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return value
    return flat_value(value)


class CsvDestination(Destination):
    type = "csv"
    options = frozenset({"path", "columns"})
    required = frozenset({"path"})

    def __init__(self, config: Mapping[str, Any], context: DestinationContext) -> None:
        super().__init__(config, context)
        relative = Path(str(config["path"]))
        if relative.is_absolute() or ".." in relative.parts:
            raise OptionError(
                "path must be relative to the data folder and stay inside it "
                "(for example tito/tickets.csv)", "path")
        if relative.suffix.lower() != ".csv":
            raise OptionError("path must end in .csv", "path")
        self.path = (Path(context.data_dir) / relative).resolve()
        columns = config.get("columns")
        if columns is not None and (
            not isinstance(columns, list) or not columns
            or not all(isinstance(c, str) and c for c in columns)
        ):
            raise OptionError("columns must be a list of column names", "columns")
        self.columns: list[str] | None = list(columns) if columns else None

    def _header_for(self, payload: Mapping[str, Any]) -> list[str]:
        return self.columns or [str(k) for k in payload]

    def row(self, header: list[str], payload: Any) -> list[Any]:
        """The payload placed under ``header``. :raises DeliveryFailed: (permanent)"""
        if not isinstance(payload, Mapping):
            raise DeliveryFailed(
                "a csv destination needs the recipe's fields to be a mapping of column "
                "names to values", retryable=False)
        missing = [k for k in payload if k not in header]
        if missing:
            raise DeliveryFailed(
                f"{self.path.name} has no column {missing[0]!r} (its columns: "
                f"{', '.join(header)}). Add the column to the file's first row, or remove "
                "the field from the recipe, then replay.", retryable=False)
        return [_cell(payload.get(column)) for column in header]

    def preview(self, payload: Any) -> dict[str, Any]:
        header = self._existing_header() or (
            self._header_for(payload) if isinstance(payload, Mapping) else [])
        return {"type": self.type, "path": str(self.path), "columns": header,
                "row": self.row(header, payload)}

    def _existing_header(self) -> list[str] | None:
        try:
            with open(self.path, newline="", encoding="utf-8") as f:
                first = next(csv.reader(f), None)
        except FileNotFoundError:
            return None
        except (OSError, UnicodeDecodeError, csv.Error) as e:
            raise DeliveryFailed(f"cannot read {self.path}: {e}", retryable=True) from None
        return first or None

    def _append(self, payload: Any) -> str:
        header = self._existing_header()
        new_file = header is None
        if header is None:
            if not isinstance(payload, Mapping):
                self.row([], payload)  # raises the plain-words error
            header = self._header_for(payload)
        values = self.row(header, payload)
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        if new_file:
            writer.writerow(header)
        writer.writerow(values)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a", newline="", encoding="utf-8") as f:
                f.write(buffer.getvalue())
                f.flush()
                os.fsync(f.fileno())
        except OSError as e:
            raise DeliveryFailed(
                f"cannot write {self.path}: {e.strerror}; relay will retry", retryable=True
            ) from None
        return f"appended a row to {self.path}"

    async def send(self, payload: Any, ctx: DeliveryContext) -> Sent:
        lock = _LOCKS.setdefault(self.path, asyncio.Lock())
        async with lock:
            note = await asyncio.to_thread(self._append, payload)
        return Sent(note=note)
