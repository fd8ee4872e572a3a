"""``type: airtable``: add (or update) one record per delivery in an Airtable table.

Options:

- ``token`` (required): a personal access token (``pat...``) with the scope
  ``data.records:write`` and access to the base. Keep it in a secret.
- ``base`` (required): the base's id, ``app`` and 14 letters/digits (the part of
  the base's address after ``airtable.com/``).
- ``table`` (required): the table's name (as shown on its tab) or its id (``tbl...``).
- ``merge_on`` (optional): one to three field names. With it, a record whose
  fields have the same values there is updated instead of added (Airtable's
  upsert, ``performUpsert.fieldsToMergeOn``); every delivery must then have a
  value for each of them. Without it, every delivery adds a new record.
- ``typecast`` (default true): let Airtable convert values to the column's type
  (text "65" into a number column, a new option of a single select).

The recipe's field names are the table's column names, spelled exactly as in
Airtable (capitals and spaces count):

```yaml
fields:
  Email: "field(data, 'email')"
  "First name": "field(data, 'name').first.value"
to:
  - type: airtable
    token: ${AIRTABLE_TOKEN}
    base: appXXXXXXXXXXXXXX
    table: Registrants
    merge_on: [Email]
```

Empty values (null or "") are left out, so an update never erases a cell. Up to
10 deliveries go in one request (Airtable's maximum). Two deliveries of one
batch with the same ``merge_on`` values become one record (the later one's values
win), because Airtable refuses an upsert that names one record twice.

Idempotent or not: with ``merge_on`` a retry updates the same record again
(Airtable's upsert is idempotent). Without ``merge_on`` it is a plain create: a
retry after a timeout (the record was added but the answer was lost) adds the
record a second time. Use ``merge_on`` on a column that identifies the row (an
order number, an email) to avoid that.

Rate limit: Airtable allows 5 requests a second per base (every token and program
writing to the base counts) and 50 a second per token; over it, Airtable answers
429 and refuses everything for 30 s. relay paces its requests below that (with a
0.1 s margin, since one 429 costs 30 s), and after a 429 waits the 30 s Airtable
requires before trying again.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

from ..errors import DeliveryFailed
from .base import (
    USER_AGENT,
    BatchDestination,
    DeliveryContext,
    DestinationContext,
    OptionError,
    Outcome,
    Sent,
    send_http,
)

MAX_RECORDS = 10  # records per request, Airtable's limit
MAX_MERGE_FIELDS = 3  # performUpsert.fieldsToMergeOn takes 1 to 3 fields
BASE_LIMIT = (5, 1.1)  # 5 requests a second per base, plus a 0.1 s margin
TOKEN_LIMIT = (50, 1.1)  # 50 requests a second per token, same margin
RATE_LIMIT_WAIT = 30.0  # "you will need to wait 30 seconds" after a 429; no Retry-After
BASE_ID = re.compile(r"^app[A-Za-z0-9]{14}$")
UNKNOWN_FIELD = re.compile(r'[Uu]nknown field name:?\s*"(?P<name>[^"]+)"')


def _token_account(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()[:12]


def airtable_error(body: str | None) -> tuple[str | None, str | None]:
    """Airtable's (type, message) from an error answer, as far as it says.

    ``{"error": {"type", "message"}}``, or ``{"error": "NOT_FOUND"}``, or (on a 429)
    ``{"errors": [{"error", "message"}]}``.
    """
    try:
        data = json.loads(body or "")
    except ValueError:
        text = (body or "").strip()
        return None, text[:300] or None
    if not isinstance(data, Mapping):
        return None, None
    error = data.get("error")
    if isinstance(error, Mapping):
        kind, message = error.get("type"), error.get("message")
        return (str(kind) if kind else None), (str(message) if message else None)
    if isinstance(error, str):
        return error, None
    errors = data.get("errors")
    if isinstance(errors, list) and errors and isinstance(errors[0], Mapping):
        kind, message = errors[0].get("error"), errors[0].get("message")
        return (str(kind) if kind else None), (str(message) if message else None)
    return None, None


class AirtableDestination(BatchDestination):
    type = "airtable"
    options = frozenset({"token", "base", "table", "merge_on", "typecast"})
    required = frozenset({"token", "base", "table"})
    batch_size = MAX_RECORDS
    max_in_flight = 1  # strict order of arrival: a later sale never overtakes an earlier one

    def __init__(self, config: Mapping[str, Any], context: DestinationContext) -> None:
        super().__init__(config, context)
        token = str(config["token"]).strip()
        if token.startswith("key") and not token.startswith("pat"):
            raise OptionError(
                "this looks like an old Airtable API key (key...), which Airtable no longer accepts. "
                "Create a personal access token (it starts with pat) at airtable.com/create/tokens", "token")
        self.token = token
        base = str(config["base"]).strip()
        found = re.search(r"app[A-Za-z0-9]{14}", base)
        if not BASE_ID.match(base):
            hint = f" (did you mean {found.group(0)}?)" if found else ""
            raise OptionError(
                "base must be the base's id: app followed by 14 letters and digits, the part of the "
                f"base's address after airtable.com/{hint}", "base")
        self.base = base
        table = config["table"]
        if not isinstance(table, str) or not table.strip():
            raise OptionError("table must be the table's name (as on its tab) or its id (tbl...)", "table")
        self.table = table.strip()
        merge_on = config.get("merge_on")
        if merge_on is None or merge_on == []:
            self.merge_on: list[str] = []
        else:
            if isinstance(merge_on, str):
                merge_on = [merge_on]
            if not isinstance(merge_on, list) or not all(isinstance(f, str) and f.strip() for f in merge_on):
                raise OptionError("merge_on must be a field name, or a list of field names, e.g. [Email]",
                                  "merge_on")
            if len(merge_on) > MAX_MERGE_FIELDS:
                raise OptionError(f"merge_on may name at most {MAX_MERGE_FIELDS} fields (Airtable's limit)",
                                  "merge_on")
            self.merge_on = [f.strip() for f in merge_on]
        typecast = config.get("typecast", True)
        if not isinstance(typecast, bool):
            raise OptionError("typecast must be true or false", "typecast")
        self.typecast = typecast
        base_url = context.settings.airtable_url.rstrip("/")
        self.url = f"{base_url}/{quote(self.base, safe='')}/{quote(self.table, safe='')}"
        self.method = "PATCH" if self.merge_on else "POST"  # Airtable upserts only on PATCH/PUT
        self.pacer = context.pacers.get(f"airtable:base:{self.base}", *BASE_LIMIT)
        self.token_pacer = context.pacers.get(f"airtable:token:{_token_account(token)}", *TOKEN_LIMIT)

    # --- what is sent -------------------------------------------------------------

    def _fields(self, payload: Any) -> dict[str, Any]:
        """The record's fields. :raises DeliveryFailed: (permanent) when they cannot be sent."""
        if not isinstance(payload, Mapping) or not payload:
            raise DeliveryFailed(
                "an airtable destination needs the recipe's fields to map column names to values, "
                "e.g. `Email: email`", retryable=False)
        for name in self.merge_on:
            if payload.get(name) in (None, "", [], {}):
                raise DeliveryFailed(
                    f"this delivery has no value for {name!r}, which merge_on uses to find the record "
                    f"to update. Map {name} in the recipe's fields (or check why the event has none), "
                    "then replay.", retryable=False)
        # Empty values are left out: an update never erases what the table already has.
        return {str(k): v for k, v in payload.items() if v not in (None, "")}

    def body(self, records: list[dict[str, Any]]) -> dict[str, Any]:
        body: dict[str, Any] = {}
        if self.merge_on:
            body["performUpsert"] = {"fieldsToMergeOn": list(self.merge_on)}
        body["records"] = [{"fields": fields} for fields in records]
        body["typecast"] = self.typecast
        return body

    def _headers(self, token: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {token}", "Content-Type": "application/json",
                "User-Agent": USER_AGENT}

    def preview(self, payload: Any) -> dict[str, Any]:
        body = self.body([self._fields(payload)])
        return {
            "type": self.type, "method": self.method, "url": self.url,
            "headers": self._headers("[secret]"), "body": body,
            "note": (f"updates the record with the same {', '.join(self.merge_on)}, or adds one"
                     if self.merge_on else "adds a new record")
            + f"; up to {MAX_RECORDS} deliveries go in one request",
        }

    # --- sending ------------------------------------------------------------------

    def _merge_key(self, fields: Mapping[str, Any]) -> str:
        return json.dumps([fields.get(name) for name in self.merge_on], sort_keys=True, default=str)

    async def send_batch(self, payloads: list[Any], ctxs: list[DeliveryContext]) -> list[Outcome]:
        outcomes: list[Outcome | None] = [None] * len(payloads)
        records: list[dict[str, Any]] = []
        record_of: dict[int, int] = {}  # payload index -> index in records
        by_key: dict[str, int] = {}
        for i, payload in enumerate(payloads):
            try:
                fields = self._fields(payload)
            except DeliveryFailed as failure:
                outcomes[i] = failure
                continue
            if self.merge_on:
                key = self._merge_key(fields)
                if key in by_key:  # Airtable refuses one record twice: merge, later values win
                    records[by_key[key]].update(fields)
                    record_of[i] = by_key[key]
                    continue
                by_key[key] = len(records)
            record_of[i] = len(records)
            records.append(fields)
        if records:
            results = await self._send_records(records, ctxs[0])
            for i, r in record_of.items():
                outcomes[i] = results[r]
        return [o for o in outcomes if o is not None]

    async def _send_records(self, records: list[dict[str, Any]], ctx: DeliveryContext) -> list[Outcome]:
        """One request for ``records``; one outcome each.

        Airtable refuses a whole request for one bad record (422) or for its size
        (413): then the records are sent again without it, so one bad record does
        not take nine good ones down with it.
        """
        try:
            sent = await self._request(records, ctx)
        except DeliveryFailed as failure:
            if failure.status_code not in (413, 422) or len(records) == 1:
                return [failure] * len(records)
            return await self._split(records, ctx, failure)
        return self._outcomes(sent, records)

    async def _split(self, records: list[dict[str, Any]], ctx: DeliveryContext,
                     failure: DeliveryFailed) -> list[Outcome]:
        kind, message = airtable_error(failure.response_body)
        named = UNKNOWN_FIELD.search(message or "") if kind == "UNKNOWN_FIELD_NAME" else None
        if named is not None:  # only the records that have that field are at fault
            field = named.group("name")
            bad = [i for i, r in enumerate(records) if field in r]
            if bad:
                outcomes: list[Outcome | None] = [None] * len(records)
                for i in bad:
                    outcomes[i] = failure
                rest = [i for i in range(len(records)) if i not in bad]
                if rest:
                    for i, o in zip(rest, await self._send_records([records[i] for i in rest], ctx),
                                    strict=True):
                        outcomes[i] = o
                return [o for o in outcomes if o is not None]
        results: list[Outcome] = []
        for record in records:  # which one is it? each on its own
            [outcome] = await self._send_records([record], ctx)
            results.append(outcome)
            if isinstance(outcome, DeliveryFailed) and outcome.retryable:
                # Airtable is down or limiting: the rest wait for the retry too.
                return results + [outcome] * (len(records) - len(results))
        return results

    async def _request(self, records: list[dict[str, Any]], ctx: DeliveryContext) -> Sent:
        content = json.dumps(self.body(records), ensure_ascii=False, separators=(",", ":")).encode()
        await self.token_pacer.acquire()
        try:
            return await send_http(ctx, self.method, self.url, headers=self._headers(self.token),
                                   content=content, pacer=self.pacer, rate_limit_wait=RATE_LIMIT_WAIT)
        except DeliveryFailed as failure:
            if failure.status_code == 429 and failure.retry_after is not None:
                self.token_pacer.pause(failure.retry_after)
            raise self._explain(failure) from None

    def _outcomes(self, sent: Sent, records: list[dict[str, Any]]) -> list[Outcome]:
        """Airtable's records, in the order sent, back to each record's delivery."""
        try:
            data = json.loads(sent.body or "")
        except ValueError:
            data = None
        answered = data.get("records") if isinstance(data, Mapping) else None
        if not isinstance(answered, list) or len(answered) != len(records):
            return [sent] * len(records)  # accepted; the answer just does not say more
        created = set(data.get("createdRecords") or []) if isinstance(data, Mapping) else set()
        updated = set(data.get("updatedRecords") or []) if isinstance(data, Mapping) else set()
        outcomes: list[Outcome] = []
        for record in answered:
            record_id = record.get("id") if isinstance(record, Mapping) else None
            if record_id in updated:
                note = f"updated Airtable record {record_id}"
            elif record_id in created or not self.merge_on:
                note = f"added Airtable record {record_id}"
            else:
                note = f"Airtable record {record_id}"
            outcomes.append(Sent(sent.status_code, sent.headers,
                                 json.dumps(record, ensure_ascii=False), note=note))
        return outcomes

    def _explain(self, failure: DeliveryFailed) -> DeliveryFailed:
        """The failure in plain words, with Airtable's own type and message."""
        code = failure.status_code
        if code is None:
            return failure
        kind, message = airtable_error(failure.response_body)
        said = ": ".join(p for p in (kind, message) if p)
        said = f" (Airtable says: {said})" if said else ""
        where = f"table {self.table!r} of base {self.base}"
        if code == 401:
            text = (f"HTTP 401: Airtable refused the token{said}. Check that the recipe's token secret "
                    "holds a personal access token (pat...) that has not been deleted or regenerated.")
        elif code == 403:
            text = (f"HTTP 403: the token may not write to {where}{said}. In Airtable's builder hub "
                    "(Personal access tokens), give the token the scope data.records:write and add "
                    f"base {self.base} to its access; also check the base id.")
        elif code == 404:
            text = (f"HTTP 404: Airtable found no {where}{said}. Check `base:` and `table:` in the "
                    "recipe (a table name must match its tab exactly; the table id tbl... also works).")
        elif code == 413:
            text = f"HTTP 413: the record is too large for Airtable{said}."
        elif code == 422:
            hint = {
                "UNKNOWN_FIELD_NAME": f"Every field name in the recipe must be a column of {where}, "
                                      "spelled exactly the same (capitals and spaces count).",
                "INVALID_VALUE_FOR_COLUMN": "A value does not fit its column's type; `typecast: true` lets "
                                            "Airtable convert it, or change the recipe's expression.",
                "INVALID_MULTIPLE_CHOICE_OPTIONS": "A select option does not exist in the column; "
                                                   "`typecast: true` lets Airtable add it.",
            }.get(kind or "", "Fix the recipe's fields, then replay.")
            text = f"HTTP 422: Airtable refused the record{said}. {hint}"
        elif code == 429:
            text = (f"HTTP 429: Airtable is rate limiting base {self.base} (more than 5 requests a second, "
                    f"perhaps from another program){said}; relay waits {RATE_LIMIT_WAIT:g} s, as Airtable "
                    "requires, then retries.")
        elif code >= 500 or code in (408, 425):
            text = f"HTTP {code}: Airtable had a problem of its own{said}; relay will retry."
        else:
            text = f"HTTP {code}: Airtable refused the request{said}."
        failure.message = text
        return failure
