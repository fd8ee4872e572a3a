"""A fake Airtable Web API (v0) for the records endpoints relay uses.

It follows the contract in docs/destinations.md "Airtable" and Airtable's reference:

- ``Authorization: Bearer <token>``; a wrong or missing token is 401
  ``AUTHENTICATION_REQUIRED``; a base the token may not reach (or that does not
  exist) is 403 ``INVALID_PERMISSIONS_OR_MODEL_NOT_FOUND``; an unknown table is
  404 ``TABLE_NOT_FOUND``; any other path is 404 ``{"error": "NOT_FOUND"}``.
- ``POST /v0/{base}/{table}`` creates ``{"records": [{"fields": {...}}], "typecast": bool}``;
  ``PATCH`` (or ``PUT``) with ``performUpsert.fieldsToMergeOn`` upserts. 1 to 10
  records a request; every record is ``{"fields": {...}}`` (no ``id`` in an upsert);
  ``performUpsert`` only on PATCH/PUT, with 1 to 3 existing field names, a value for
  each in every record, and no two records of one request naming the same record.
  Field names must be the table's (422 ``UNKNOWN_FIELD_NAME``, naming it); values
  must fit the column (``typecast`` converts what it can), else 422
  ``INVALID_VALUE_FOR_COLUMN``.
- The reply lists the records in the order sent; an upsert adds ``createdRecords``
  and ``updatedRecords`` (ids).
- ``rate_limit(5, 1.0)`` answers Airtable's 429 (no Retry-After).

Field types the fake knows: ``text`` (also email, phone, select...), ``number``,
``checkbox``.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import time
from typing import Any
from urllib.parse import unquote

from fakes.base import Answer, FakeAPI, Request

INVALID_REQUEST = "INVALID_REQUEST_UNKNOWN"


def error(status: int, kind: str, message: str) -> Answer:
    return Answer(status, {"error": {"type": kind, "message": message}})


@dataclasses.dataclass
class Table:
    id: str
    name: str
    fields: dict[str, str]  # name -> type
    records: list[dict[str, Any]] = dataclasses.field(default_factory=list)  # {id, createdTime, fields}


class FakeAirtable(FakeAPI):
    def __init__(self, token: str = "patFAKE.0123456789abcdef") -> None:
        self.token = token
        self.bases: dict[str, dict[str, Table]] = {}
        self._ids = itertools.count(1)
        super().__init__()

    @property
    def base_url(self) -> str:
        return self.url + "/v0"

    # --- what tests use ---------------------------------------------------------

    def add_table(self, base: str, name: str, fields: dict[str, str]) -> Table:
        tables = self.bases.setdefault(base, {})
        table = Table(id="tbl" + f"{len(tables) + 1:014d}", name=name, fields=dict(fields))
        tables[table.id] = table
        return table

    def table(self, base: str, name_or_id: str) -> Table | None:
        for table in self.bases.get(base, {}).values():
            if name_or_id in (table.id, table.name):
                return table
        return None

    def rows(self, base: str, table: str) -> list[dict[str, Any]]:
        """The fields of every record of the table, in the order they were created."""
        found = self.table(base, table)
        assert found is not None
        with self.lock:
            return [dict(r["fields"]) for r in found.records]

    def writes(self) -> list[Request]:
        return [r for r in self.requests if r.method in ("POST", "PATCH", "PUT")]

    # --- the contract -------------------------------------------------------------

    def authorized(self, request: Request) -> Answer | None:
        if request.headers.get("authorization") != f"Bearer {self.token}":
            return error(401, "AUTHENTICATION_REQUIRED", "Authentication required")
        return None

    def rate_limited(self, request: Request) -> Answer:
        # Airtable's 429 (shape unsure: {"errors": [...]}); no Retry-After: wait 30 s.
        return Answer(429, {"errors": [{"error": "RATE_LIMIT_REACHED",
                                        "message": "Rate limit exceeded. Please try again later"}]})

    def handle(self, request: Request) -> Answer:
        parts = request.path.split("/")
        if len(parts) != 4 or parts[1] != "v0":
            return Answer(404, {"error": "NOT_FOUND"})
        base, table_ref = unquote(parts[2]), unquote(parts[3])
        if base not in self.bases:
            return error(403, "INVALID_PERMISSIONS_OR_MODEL_NOT_FOUND",
                         "Invalid permissions, or the requested model was not found. Check that both your "
                         "user and your token have the required permissions, and that the model names "
                         "and/or ids are correct.")
        table = self.table(base, table_ref)
        if table is None:
            return error(404, "TABLE_NOT_FOUND", f'Could not find table {table_ref} in application {base}')
        if request.method not in ("POST", "PATCH", "PUT"):
            return Answer(404, {"error": "NOT_FOUND"})
        if not request.headers.get("content-type", "").startswith("application/json"):
            return error(415, "INVALID_REQUEST_UNKNOWN", "Content-Type must be application/json")
        try:
            body = request.json()
        except ValueError:
            return error(422, "INVALID_REQUEST_BODY", "Could not parse request body")
        return self._write(request.method, table, body)

    def _write(self, method: str, table: Table, body: Any) -> Answer:
        invalid = error(422, INVALID_REQUEST, "Invalid request: parameter validation failed. "
                                              "Check your request data.")
        if not isinstance(body, dict) or set(body) - {"records", "typecast", "performUpsert",
                                                      "returnFieldsByFieldId"}:
            return invalid
        typecast = body.get("typecast", False)
        if not isinstance(typecast, bool):
            return invalid
        records = body.get("records")
        if not isinstance(records, list) or not 1 <= len(records) <= 10:
            return error(422, "INVALID_RECORDS", "You must provide an array of up to 10 record objects.")
        upsert = body.get("performUpsert")
        if upsert is not None:
            if method == "POST":  # upserts only on PATCH / PUT
                return invalid
            merge_on = upsert.get("fieldsToMergeOn") if isinstance(upsert, dict) else None
            if not isinstance(merge_on, list) or not 1 <= len(merge_on) <= 3 \
                    or not all(isinstance(f, str) for f in merge_on) or set(upsert) != {"fieldsToMergeOn"}:
                return invalid
            for name in merge_on:
                if name not in table.fields:
                    return error(422, "UNKNOWN_FIELD_NAME", f'Unknown field name: "{name}"')
        elif method != "POST":
            return invalid  # relay never updates by record id
        cleaned: list[dict[str, Any]] = []
        for record in records:
            if not isinstance(record, dict) or set(record) != {"fields"} or not isinstance(record["fields"], dict):
                return invalid
            fields: dict[str, Any] = {}
            for name, value in record["fields"].items():
                if name not in table.fields:
                    return error(422, "UNKNOWN_FIELD_NAME", f'Unknown field name: "{name}"')
                ok, converted = self._convert(table.fields[name], value, typecast)
                if not ok:
                    return error(422, "INVALID_VALUE_FOR_COLUMN",
                                 f'Field "{name}" cannot accept the provided value')
                fields[name] = converted
            cleaned.append(fields)
        now = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())
        with self.lock:
            if upsert is None:
                out = [self._create(table, fields, now) for fields in cleaned]
                return Answer(200, {"records": out})
            merge_on = upsert["fieldsToMergeOn"]
            keys = []
            for fields in cleaned:
                if any(fields.get(name) in (None, "") for name in merge_on):
                    return error(422, INVALID_REQUEST,
                                 f"Every record must have a value for each of fieldsToMergeOn: {merge_on}")
                keys.append(json.dumps([fields[name] for name in merge_on]))
            if len(set(keys)) != len(keys):
                return error(422, INVALID_REQUEST,
                             "Cannot upsert: two records in the request match on fieldsToMergeOn")
            out, created, updated = [], [], []
            for fields, key in zip(cleaned, keys, strict=True):
                matches = [r for r in table.records
                           if json.dumps([r["fields"].get(name) for name in merge_on]) == key]
                if len(matches) > 1:
                    return error(422, INVALID_REQUEST,
                                 "Cannot upsert: more than one record matches on fieldsToMergeOn")
                if matches:
                    matches[0]["fields"].update(fields)
                    out.append(json.loads(json.dumps(matches[0])))
                    updated.append(matches[0]["id"])
                else:
                    out.append(self._create(table, fields, now))
                    created.append(out[-1]["id"])
            return Answer(200, {"records": out, "createdRecords": created, "updatedRecords": updated})

    def _create(self, table: Table, fields: dict[str, Any], now: str) -> dict[str, Any]:
        record = {"id": "rec" + f"{next(self._ids):014d}", "createdTime": now, "fields": dict(fields)}
        table.records.append(record)
        return json.loads(json.dumps(record))

    @staticmethod
    def _convert(kind: str, value: Any, typecast: bool) -> tuple[bool, Any]:
        if value is None:
            return True, None
        if kind == "number":
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                return True, value
            if typecast and isinstance(value, str):
                try:
                    return True, float(value)
                except ValueError:
                    return False, None
            return False, None
        if kind == "checkbox":
            if isinstance(value, bool):
                return True, value
            if typecast:
                return True, bool(value)
            return False, None
        if isinstance(value, str):
            return True, value
        if typecast and isinstance(value, (int, float)):
            return True, str(value)
        return False, None
