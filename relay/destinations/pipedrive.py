"""``type: pipedrive``: add or update a person in Pipedrive (API v2), found by email.

Options:

- ``token`` (required): the personal API token of the Pipedrive user relay acts
  as (Pipedrive: your name > Personal preferences > API). Keep it in a secret.
- ``company`` (optional): the company's subdomain, ``acme`` for acme.pipedrive.com;
  relay then talks to ``https://acme.pipedrive.com/api/v2``. Without it, relay uses
  the ``RELAY_PIPEDRIVE_URL`` setting (default ``https://api.pipedrive.com/api/v2``,
  which works for every company).
- ``rate_limit`` (optional): ``{requests: 20, per: 2, search: 10}``, the burst limit of
  the company's plan: requests per ``per`` seconds, and searches in the same window.
  The default (20 requests and 10 searches per 2 s) is the lowest plan's; set it
  higher for a higher plan.

The recipe's fields are the person's:

- ``email`` (required): the person is found by it; a delivery without one fails,
  naming the field.
- ``name``: the person's name (Pipedrive needs one; the email stands in when empty).
- ``phone`` (optional): added as the person's primary phone number (numbers the
  person already has are kept).
- ``org_id``, ``owner_id``, ``visible_to``, ``label_ids`` (optional): Pipedrive's ids.
- ``custom_fields`` (optional): a mapping of custom field keys (the 40-character
  key Pipedrive shows under Settings > Data fields) to values.

Any other field name is refused (with a message naming it), so a typo does not
vanish silently.

```yaml
fields:
  name: "{{ firstname }} {{ lastname }}"
  email: email
  custom_fields:
    8f4c1a...: guid          # a custom field "Last order"
to:
  - type: pipedrive
    token: ${PIPEDRIVE_TOKEN}
```

How a delivery is sent: ``GET /persons/search?term=<email>&fields=email&exact_match=true``;
if a person has that email, ``PATCH /persons/{id}`` with the fields (their emails are
left as they are); else ``POST /persons`` with name, email (primary) and phone.
Emails are not unique in Pipedrive: when several persons have the email, the one
with the lowest id (the oldest) is updated, and the attempt says so.

Not idempotent: Pipedrive has no upsert. A retry after a timeout (the person was
added but the answer was lost) normally finds that person and updates it, but
Pipedrive's search can lag a few seconds behind a new person, and another program
may add the same email between relay's search and its add: either way a duplicate
person can appear (Pipedrive's "Merge duplicates" joins them). relay remembers the
persons it added recently, so two orders from one buyer a second apart still make
one person. Deliveries go one at a time (``max_in_flight`` 1) for the same reason.

Rate limit: every request counts against ``rate_limit.requests`` per ``per`` seconds
and a search also against ``rate_limit.search`` (Pipedrive limits search more
tightly), per API token, with a 0.1 s margin. After a 429, relay honours Pipedrive's
``Retry-After`` if it sends one, else waits the 2 s burst window; when 429s keep
coming (the daily token budget is spent), each retry waits longer, up to 15 minutes.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlencode

from ..errors import DeliveryFailed
from .base import (
    USER_AGENT,
    DeliveryContext,
    Destination,
    DestinationContext,
    OptionError,
    Sent,
    send_http,
)

DEFAULT_LIMIT = 20  # requests per window on the lowest plan
DEFAULT_SEARCH_LIMIT = 10  # searches per window
DEFAULT_WINDOW = 2.0  # Pipedrive's burst window, seconds
MARGIN = 0.1  # the vendor counts arrivals; a request may take longer to arrive than the next
RATE_LIMIT_WAIT = 2.0  # no Retry-After: the rest of the 2 s burst window (not documented as such)
LONGEST_WAIT = 900.0  # repeated 429s (daily budget spent): back off up to 15 minutes
RECENT_TTL = 600.0  # how long a person relay added is remembered (Pipedrive's search may lag)
RECENT_MAX = 5000
COMPANY = re.compile(r"^[a-z0-9][a-z0-9-]*$")
PLAIN_FIELDS = ("org_id", "owner_id", "visible_to")
KNOWN_FIELDS = frozenset({"name", "email", "phone", "label_ids", "custom_fields", *PLAIN_FIELDS})


def _token_account(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()[:12]


def pipedrive_error(body: str | None) -> str | None:
    """Pipedrive's own error text: ``{"success": false, "error": "...", "error_info": "..."}``."""
    try:
        data = json.loads(body or "")
    except ValueError:
        text = (body or "").strip()
        return text[:300] or None
    if not isinstance(data, Mapping):
        return None
    error = data.get("error")
    if isinstance(error, Mapping):  # some endpoints nest it
        error = error.get("message") or json.dumps(error)
    parts = [str(p) for p in (error, data.get("error_info")) if p]
    return ". ".join(parts) or None


def _int(value: Any, field: str) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and value.strip().isdigit():
        return int(value.strip())
    raise DeliveryFailed(
        f"{field} must be a number (Pipedrive's id), not {value!r}. Fix the recipe, then replay.",
        retryable=False)


class PipedriveDestination(Destination):
    type = "pipedrive"
    options = frozenset({"token", "company", "rate_limit"})
    required = frozenset({"token"})
    batch_size = 1
    max_in_flight = 1  # search-then-write: two at once for one buyer would add them twice

    def __init__(self, config: Mapping[str, Any], context: DestinationContext) -> None:
        super().__init__(config, context)
        self.token = str(config["token"]).strip()
        company = config.get("company")
        if company is not None and company != "":
            name = str(company).strip().lower()
            name = re.sub(r"^https?://", "", name).split("/")[0].removesuffix(".pipedrive.com")
            if not COMPANY.match(name):
                raise OptionError("company must be your Pipedrive subdomain: acme for acme.pipedrive.com",
                                  "company")
            self.base_url = f"https://{name}.pipedrive.com/api/v2"
        else:
            self.base_url = context.settings.pipedrive_url.rstrip("/")
        limit, per, search = DEFAULT_LIMIT, DEFAULT_WINDOW, DEFAULT_SEARCH_LIMIT
        rate = config.get("rate_limit")
        if rate is not None:
            if not isinstance(rate, Mapping) or set(rate) - {"requests", "per", "search"} \
                    or "requests" not in rate:
                raise OptionError("rate_limit must look like {requests: 40, per: 2, search: 20} "
                                  "(your plan's burst limit; search is optional)", "rate_limit")
            try:
                limit = int(rate["requests"])
                per = float(rate.get("per", DEFAULT_WINDOW))
                search = int(rate.get("search", min(DEFAULT_SEARCH_LIMIT, limit)))
            except (TypeError, ValueError):
                raise OptionError("rate_limit's requests, per and search must be numbers", "rate_limit") \
                    from None
            if limit < 1 or per <= 0 or search < 1:
                raise OptionError("rate_limit's requests and search must be at least 1, and per more than 0",
                                  "rate_limit")
        account = _token_account(self.token)
        self.pacer = context.pacers.get(f"pipedrive:{account}", limit, per + MARGIN)
        self.search_pacer = context.pacers.get(f"pipedrive-search:{account}", search, per + MARGIN)
        # email -> (person id, when): persons relay added or updated lately, for when
        # Pipedrive's search has not caught up with them yet.
        self.recent: OrderedDict[str, tuple[int, float]] = OrderedDict()

    # --- what is sent -------------------------------------------------------------

    def person(self, payload: Any) -> dict[str, Any]:
        """The recipe's fields checked. :raises DeliveryFailed: (permanent) naming the field."""
        if not isinstance(payload, Mapping):
            raise DeliveryFailed("a pipedrive destination needs the recipe's fields to be a mapping, "
                                 "e.g. `email: email`", retryable=False)
        unknown = sorted(str(k) for k in payload if k not in KNOWN_FIELDS)
        if unknown:
            raise DeliveryFailed(
                f"Pipedrive persons have no field {unknown[0]!r}. A recipe may map name, email, phone, "
                "org_id, owner_id, visible_to, label_ids, and custom fields under `custom_fields:` by "
                "their key (Settings > Data fields in Pipedrive). Fix the recipe, then replay.",
                retryable=False)
        email = payload.get("email")
        if isinstance(email, (int, float)) or email is None:
            email = "" if email is None else str(email)
        if not isinstance(email, str) or not email.strip():
            raise DeliveryFailed(
                "this delivery has no `email`, which relay needs to find or add the person in Pipedrive. "
                "Map email in the recipe's fields (or check why the event has none), then replay.",
                retryable=False)
        person: dict[str, Any] = {"email": email.strip()}
        name = payload.get("name")
        person["name"] = str(name).strip() if name not in (None, "") else ""
        phone = payload.get("phone")
        if phone not in (None, ""):
            person["phone"] = str(phone).strip()
        for field in PLAIN_FIELDS:
            if payload.get(field) not in (None, ""):
                person[field] = _int(payload[field], field)
        labels = payload.get("label_ids")
        if labels not in (None, "", []):
            if not isinstance(labels, list):
                labels = [labels]
            person["label_ids"] = [_int(v, "label_ids") for v in labels]
        custom = payload.get("custom_fields")
        if custom not in (None, {}):
            if not isinstance(custom, Mapping):
                raise DeliveryFailed("custom_fields must map Pipedrive custom field keys to values",
                                     retryable=False)
            person["custom_fields"] = {str(k): v for k, v in custom.items()}
        return person

    def create_body(self, person: Mapping[str, Any]) -> dict[str, Any]:
        body: dict[str, Any] = {"name": person["name"] or person["email"],
                                "emails": [{"value": person["email"], "primary": True}]}
        if "phone" in person:
            body["phones"] = [{"value": person["phone"], "primary": True}]
        body.update({k: person[k] for k in (*PLAIN_FIELDS, "label_ids", "custom_fields") if k in person})
        return body

    def update_body(self, person: Mapping[str, Any], phones: list[str] | None) -> dict[str, Any]:
        """The PATCH body: the person's emails stay; a new phone number joins theirs as primary."""
        body: dict[str, Any] = {}
        if person["name"]:
            body["name"] = person["name"]
        if "phone" in person and person["phone"] not in (phones or []):
            body["phones"] = [{"value": person["phone"], "primary": True}] + [
                {"value": p, "primary": False} for p in (phones or []) if p]
        body.update({k: person[k] for k in (*PLAIN_FIELDS, "label_ids", "custom_fields") if k in person})
        return body

    def search_url(self, email: str) -> str:
        query = urlencode({"term": email, "fields": "email", "exact_match": "true"})
        return f"{self.base_url}/persons/search?{query}"

    def _headers(self, token: str, body: bool) -> dict[str, str]:
        headers = {"x-api-token": token, "Accept": "application/json", "User-Agent": USER_AGENT}
        if body:
            headers["Content-Type"] = "application/json"
        return headers

    def preview(self, payload: Any) -> dict[str, Any]:
        person = self.person(payload)
        return {
            "type": self.type,
            "headers": self._headers("[secret]", True),
            "steps": [
                {"method": "GET", "url": self.search_url(person["email"]),
                 "note": "find the person by email"},
                {"method": "PATCH", "url": f"{self.base_url}/persons/<id>",
                 "body": self.update_body(person, []), "note": "if found: update the first (lowest id)"},
                {"method": "POST", "url": f"{self.base_url}/persons",
                 "body": self.create_body(person), "note": "if not found: add the person"},
            ],
        }

    # --- sending ------------------------------------------------------------------

    async def _call(self, ctx: DeliveryContext, method: str, url: str, body: Any,
                    action: str) -> tuple[Any, Sent]:
        """One request: Pipedrive's ``data``, and the answer. :raises DeliveryFailed: in plain words."""
        content = b"" if body is None else json.dumps(body, ensure_ascii=False).encode()
        if method == "GET":
            await self.search_pacer.acquire()
        try:
            sent = await send_http(ctx, method, url, headers=self._headers(self.token, body is not None),
                                   content=content, pacer=self.pacer, rate_limit_wait=RATE_LIMIT_WAIT)
        except DeliveryFailed as failure:
            raise self._explain(failure, ctx, action) from None
        try:
            data = json.loads(sent.body or "")
        except ValueError:
            data = None
        if isinstance(data, Mapping) and data.get("success") is False:
            said = pipedrive_error(sent.body)
            raise DeliveryFailed(f"Pipedrive did not {action}: {said}", retryable=False,
                                 status_code=sent.status_code, response_body=sent.body,
                                 response_headers=sent.headers)
        return (data.get("data") if isinstance(data, Mapping) else None), sent

    async def send(self, payload: Any, ctx: DeliveryContext) -> Sent:
        person = self.person(payload)
        email = person["email"]
        data, _ = await self._call(ctx, "GET", self.search_url(email), None, "search for the person")
        items = data.get("items") if isinstance(data, Mapping) else None
        found = sorted((i["item"] for i in items or []
                        if isinstance(i, Mapping) and isinstance(i.get("item"), Mapping)
                        and isinstance(i["item"].get("id"), int)), key=lambda item: item["id"])
        notes: list[str] = []
        if len(found) > 1:
            notes.append(f"{len(found)} persons in Pipedrive have the email {email} "
                         f"(ids {', '.join(str(f['id']) for f in found)}); relay updated the oldest, "
                         f"{found[0]['id']}")
        if found:
            person_id = found[0]["id"]
            phones = [str(p) for p in found[0].get("phones") or [] if p]
            return await self._update(ctx, person, person_id, phones, notes)
        remembered = self._remembered(email)
        if remembered is not None:
            try:
                return await self._update(ctx, person, remembered, None, [
                    f"Pipedrive's search did not find {email} yet; relay updated person {remembered}, "
                    "which it added moments ago"])
            except DeliveryFailed as failure:
                if failure.status_code not in (404, 410):
                    raise
                self.recent.pop(email.lower(), None)  # deleted or merged meanwhile: add anew
        data, sent = await self._call(ctx, "POST", f"{self.base_url}/persons", self.create_body(person),
                                      "add the person")
        new_id = data.get("id") if isinstance(data, Mapping) else None
        if isinstance(new_id, int):
            self._remember(email, new_id)
        return Sent(sent.status_code, sent.headers, sent.body, note=f"added person {new_id}")

    async def _update(self, ctx: DeliveryContext, person: Mapping[str, Any], person_id: int,
                      phones: list[str] | None, notes: list[str]) -> Sent:
        body = self.update_body(person, phones)
        _, sent = await self._call(ctx, "PATCH", f"{self.base_url}/persons/{person_id}", body,
                                   f"update person {person_id}")
        self._remember(person["email"], person_id)
        note = "; ".join([f"updated person {person_id}", *notes])
        # The attempt keeps the body, not the note: a warning goes in front of it.
        body_text = f"{note}\n{sent.body}" if notes else sent.body
        return Sent(sent.status_code, sent.headers, body_text, note=note)

    def _remembered(self, email: str) -> int | None:
        entry = self.recent.get(email.lower())
        if entry is None or time.monotonic() - entry[1] > RECENT_TTL:
            return None
        return entry[0]

    def _remember(self, email: str, person_id: int) -> None:
        self.recent[email.lower()] = (person_id, time.monotonic())
        self.recent.move_to_end(email.lower())
        while len(self.recent) > RECENT_MAX:
            self.recent.popitem(last=False)

    def _explain(self, failure: DeliveryFailed, ctx: DeliveryContext, action: str) -> DeliveryFailed:
        """The failure in plain words, with Pipedrive's own error text."""
        code = failure.status_code
        if code is None:
            return failure
        said = pipedrive_error(failure.response_body)
        said_text = f" (Pipedrive says: {said})" if said else ""
        if code == 400:
            text = (f"HTTP 400: Pipedrive refused to {action}{said_text}. Check the recipe's fields "
                    "(ids, custom field keys and their values), then replay.")
        elif code == 401:
            text = (f"HTTP 401: the API token was refused{said_text}. Put the personal API token from "
                    "Pipedrive (your name > Personal preferences > API) in the recipe's token secret.")
        elif code == 402:
            text = (f"HTTP 402: Pipedrive says the company's plan or payment does not allow this{said_text}. "
                    "Check the subscription under Billing in Pipedrive, then replay.")
        elif code == 403:
            text = (f"HTTP 403: the token's user may not {action}{said_text}. In Pipedrive, give that user "
                    "permission to add and edit people (and to see the ones relay updates).")
        elif code == 404:
            text = (f"HTTP 404: Pipedrive found nothing at this address{said_text}. Check `company:` (or "
                    "RELAY_PIPEDRIVE_URL); if a person was deleted meanwhile, replay.")
        elif code == 429:
            wait = failure.retry_after
            if failure.response_headers.get("retry-after") is None and wait is not None:
                # Still limited on later attempts: the daily budget, not the burst. Back off.
                wait = min(RATE_LIMIT_WAIT * 4 ** (ctx.attempt - 1), LONGEST_WAIT)
                failure.retry_after = wait
                if self.pacer is not None:
                    self.pacer.pause(wait)
            if wait is not None:
                self.search_pacer.pause(wait)
            text = (f"HTTP 429: Pipedrive is rate limiting this API token{said_text}; relay waits "
                    f"{wait or RATE_LIMIT_WAIT:g} s, then retries. If it keeps happening, set rate_limit to "
                    "your plan's limit, or check other programs using the token.")
        elif code >= 500 or code in (408, 425):
            text = f"HTTP {code}: Pipedrive had a problem of its own{said_text}; relay will retry."
        else:
            text = f"HTTP {code}: Pipedrive refused to {action}{said_text}."
        failure.message = text
        return failure
