"""``type: mailchimp``: add or update each person as a member of a Mailchimp audience.

Options:

```yaml
to:
  - type: mailchimp
    api_key: ${MAILCHIMP_API_KEY}   # required; ends in the data centre, e.g. ...-us14
    list: ${MAILCHIMP_AUDIENCE_ID}  # required: the audience ("list") id
    email: email                    # the recipe field holding the address (default: email)
    status_if_new: subscribed       # subscribed (default), pending, unsubscribed,
                                    # cleaned or transactional
    merge_fields:                   # optional: Mailchimp merge tag -> recipe field name
      FNAME: first_name
      LNAME: last_name
    tags: ticket_type               # optional: a recipe field holding a tag or a list of
                                    # tags, or a fixed list: tags: ["Gala 2025", VIP]
    rate_limit: {requests: 10, per: 1}   # optional; see below
```

Merge fields are named explicitly: ``merge_fields`` maps each Mailchimp merge tag
(Audience > Settings > Audience fields and *|MERGE|* tags) to the name of one of
the recipe's ``fields``. Recipe fields it does not name are not sent. An empty
value is left out, so it never blanks what Mailchimp already holds.

Each delivery is ``PUT /lists/{list}/members/{md5 of the lower-case email}``
(``status_if_new`` only applies to people not yet in the audience: an existing
member keeps their status) and then, if there are tags, ``POST .../tags`` with each
tag ``active``. Both are idempotent: a retry, or a second sale to the same person,
updates the one member and never duplicates it.

Mailchimp limits each account to 10 simultaneous connections (429 beyond that).
A recipe's Mailchimp destination keeps at most 4 requests in flight, one person
at a time per email address (so two updates of one person keep their order), and
all recipes of one account share a pacer of 10 requests a second (``rate_limit``
overrides it). A 429 carries no Retry-After; relay waits 5 s, then retries.

A person who unsubscribed, bounced or asked to be forgotten cannot be added back
through the API ("Member In Compliance State", "Forgotten Email Not Subscribed"):
such a delivery is dead at once with Mailchimp's explanation.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import re
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import quote

from ..errors import DeliveryFailed
from .base import (
    USER_AGENT,
    DeliveryContext,
    Destination,
    DestinationContext,
    OptionError,
    Sent,
    flat_value,
    rate_limit_option,
    send_http,
)

STATUSES = ("subscribed", "pending", "unsubscribed", "cleaned", "transactional")
MERGE_TAG = re.compile(r"^[A-Za-z0-9_]{1,10}$")  # Mailchimp merge tags: up to 10 characters
DATA_CENTRE = re.compile(r"^[a-z0-9]+$")  # us14, us21, ...: one label of a host name
# Mailchimp documents no per-second limit, only 10 simultaneous connections per
# account, and sends no Retry-After with its 429. A connection frees up as soon as
# one of the account's requests finishes, so a short wait is enough: 5 s.
RATE_LIMIT_WAIT = 5.0
DEFAULT_RATE = (10, 1.0)  # requests per seconds, per account (a guard, not a vendor rule)
COMPLIANCE = {
    "member in compliance state": (
        "this person unsubscribed, bounced or was flagged by a compliance review, so "
        "Mailchimp will not subscribe them again through its API. Only they can sign up "
        "again, with your audience's Mailchimp signup form. Nothing to fix in relay."),
    "forgotten email not subscribed": (
        "this person asked to be forgotten (their contact was permanently deleted), so "
        "Mailchimp will not add them again through its API. Only they can sign up again, "
        "with your audience's Mailchimp signup form. Nothing to fix in relay."),
}


def subscriber_hash(email: str) -> str:
    """Mailchimp's member id: the MD5 of the lower-case email address."""
    return hashlib.md5(email.lower().encode()).hexdigest()


def _problem(text: str | None) -> tuple[str, str, list[str]]:
    """(title, detail, ["field: message", ...]) from Mailchimp's problem+json answer."""
    try:
        data = json.loads(text or "")
    except ValueError:
        return "", (text or "").strip()[:300], []
    if not isinstance(data, dict):
        return "", "", []
    errors = []
    for item in data.get("errors") or []:
        if isinstance(item, dict):
            field, message = str(item.get("field") or "").strip(), str(item.get("message") or "").strip()
            errors.append(f"{field}: {message}" if field else message)
    return str(data.get("title") or "").strip(), str(data.get("detail") or "").strip(), errors


def _said(title: str, detail: str, errors: list[str]) -> str:
    parts = [p for p in (title, detail) if p]
    said = ": ".join(parts) if parts else "no explanation"
    if errors:
        said += " (" + "; ".join(errors) + ")"
    return said


class MailchimpDestination(Destination):
    type = "mailchimp"
    options = frozenset({"api_key", "list", "email", "status_if_new", "merge_fields", "tags",
                         "rate_limit"})
    required = frozenset({"api_key", "list"})
    batch_size = 1
    max_in_flight = 4  # well under Mailchimp's 10 simultaneous connections per account

    def __init__(self, config: Mapping[str, Any], context: DestinationContext) -> None:
        super().__init__(config, context)
        self.api_key = str(config["api_key"]).strip()
        key, dash, dc = self.api_key.rpartition("-")
        dc = dc.lower()
        if not dash or not key or not DATA_CENTRE.match(dc):
            # Never quote the key: it is a secret.
            raise OptionError(
                "the api_key must end in its data centre, like ...-us14: copy the whole key "
                "from Mailchimp (Profile > Extras > API keys)", "api_key")
        self.dc = dc
        self.list_id = str(config["list"]).strip()
        self.email_field = str(config.get("email") or "email")
        self.status_if_new = str(config.get("status_if_new", "subscribed"))
        if self.status_if_new not in STATUSES:
            raise OptionError(f"status_if_new must be one of {', '.join(STATUSES)}, "
                              f"not {self.status_if_new!r}", "status_if_new")
        merge = config.get("merge_fields") or {}
        if not isinstance(merge, Mapping):
            raise OptionError("merge_fields maps Mailchimp merge tags to recipe fields, e.g. "
                              "{FNAME: first_name, LNAME: last_name}", "merge_fields")
        self.merge_fields: dict[str, str] = {}
        for tag, field in merge.items():
            if not MERGE_TAG.match(str(tag)):
                raise OptionError(
                    f"{tag!r} is not a Mailchimp merge tag: use the tag shown in Audience > "
                    "Settings > Audience fields and *|MERGE|* tags, e.g. FNAME", "merge_fields")
            if not isinstance(field, str) or not field:
                raise OptionError(f"merge_fields.{tag} must name one of the recipe's fields",
                                  "merge_fields")
            self.merge_fields[str(tag).upper()] = field
        tags = config.get("tags")
        self.tags_field: str | None = None
        self.fixed_tags: list[str] = []
        if isinstance(tags, str) and tags:
            self.tags_field = tags
        elif isinstance(tags, list) and all(isinstance(t, (str, int)) and str(t).strip() for t in tags):
            self.fixed_tags = _clean_tags(tags)
        elif tags not in (None, [], ""):
            raise OptionError("tags is either the name of a recipe field holding a tag (or a list "
                              "of tags), or a fixed list such as [VIP, Gala 2025]", "tags")
        self.base = context.settings.mailchimp_url.replace("{dc}", self.dc).rstrip("/")
        limit, per = rate_limit_option(config.get("rate_limit"), DEFAULT_RATE)
        account = "mailchimp:" + hashlib.sha256(self.api_key.encode()).hexdigest()[:16]
        self.pacer = context.pacers.get(account, limit, per)
        self._locks: dict[str, asyncio.Lock] = {}
        self._users: dict[str, int] = {}

    # --- what is sent -------------------------------------------------------------

    def _field(self, payload: Mapping[str, Any], name: str, option: str) -> Any:
        if name not in payload:
            raise DeliveryFailed(
                f"the Mailchimp destination's {option} names the field {name!r}, but the "
                f"recipe has no such field (its fields: {', '.join(map(str, payload)) or 'none'}). "
                "Fix the recipe, then replay.", retryable=False)
        return payload[name]

    def requests(self, payload: Any) -> tuple[str, list[tuple[str, str, dict[str, Any]]]]:
        """(email, [(method, url, body), ...]) for one person.

        :raises DeliveryFailed: permanent, when the recipe's fields do not fit.
        """
        if not isinstance(payload, Mapping):
            raise DeliveryFailed("a mailchimp destination needs the recipe's fields to be a "
                                 "mapping (email: ..., first_name: ...)", retryable=False)
        email = self._field(payload, self.email_field, f"email field ({self.email_field!r})")
        email = "" if email is None else str(email).strip()
        if not email:
            raise DeliveryFailed(f"the field {self.email_field!r} is empty: Mailchimp needs an "
                                 "email address for each member", retryable=False)
        merge: dict[str, Any] = {}
        for tag, name in self.merge_fields.items():
            value = self._field(payload, name, f"merge_fields.{tag}")
            if value is None or value == "":
                continue  # never blank what Mailchimp already has
            # Numbers stay numbers and an address stays an object; the rest as text.
            keep = isinstance(value, (int, float, dict)) and not isinstance(value, bool)
            merge[tag] = value if keep else flat_value(value)
        tags = list(self.fixed_tags)
        if self.tags_field is not None:
            value = self._field(payload, self.tags_field, "tags")
            tags = _clean_tags(value if isinstance(value, list) else [value])
        member = f"{self.base}/lists/{quote(self.list_id, safe='')}/members/{subscriber_hash(email)}"
        body: dict[str, Any] = {"email_address": email, "status_if_new": self.status_if_new}
        if merge:
            body["merge_fields"] = merge
        out = [("PUT", member, body)]
        if tags:
            out.append(("POST", member + "/tags",
                        {"tags": [{"name": t, "status": "active"} for t in tags]}))
        return email, out

    def _headers(self, secret: bool = False) -> dict[str, str]:
        token = "[secret API key]" if secret else \
            base64.b64encode(f"relay:{self.api_key}".encode()).decode()
        return {"Authorization": f"Basic {token}", "Content-Type": "application/json",
                "User-Agent": USER_AGENT}

    def preview(self, payload: Any) -> dict[str, Any]:
        _, requests = self.requests(payload)
        return {"type": self.type, "requests": [
            {"method": method, "url": url, "headers": self._headers(secret=True), "body": body}
            for method, url, body in requests]}

    # --- sending ------------------------------------------------------------------

    @asynccontextmanager
    async def _person(self, key: str) -> AsyncIterator[None]:
        """One request sequence per person at a time (FIFO), so updates keep their order."""
        lock = self._locks.setdefault(key, asyncio.Lock())
        self._users[key] = self._users.get(key, 0) + 1
        try:
            async with lock:
                yield
        finally:
            self._users[key] -= 1
            if not self._users[key]:
                del self._users[key], self._locks[key]

    async def send(self, payload: Any, ctx: DeliveryContext) -> Sent:
        email, requests = self.requests(payload)
        sent = Sent()
        async with self._person(subscriber_hash(email)):
            for method, url, body in requests:
                content = json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()
                try:
                    sent = await send_http(ctx, method, url, headers=self._headers(), content=content,
                                           pacer=self.pacer, rate_limit_wait=RATE_LIMIT_WAIT)
                except DeliveryFailed as failure:
                    raise self._explained(failure, email) from None
        tags = len(requests) - 1
        return Sent(sent.status_code, sent.headers, sent.body,
                    note=f"{email} added or updated in audience {self.list_id}"
                    + (" with its tags" if tags else ""))

    def _explained(self, failure: DeliveryFailed, email: str) -> DeliveryFailed:
        """The same failure, its message in plain words with Mailchimp's own."""
        code = failure.status_code
        if code is None:  # no answer at all: the shared message names only the host
            return failure
        title, detail, errors = _problem(failure.response_body)
        said = _said(title, detail, errors)
        if code == 429:
            message = (f"HTTP 429: Mailchimp is busy with too many connections from this account "
                       f"({said}); relay will wait {RATE_LIMIT_WAIT:g} s and retry")
        elif code >= 500 or failure.retryable:
            message = f"HTTP {code}: Mailchimp had a problem ({said}); relay will retry"
        elif title.lower() in COMPLIANCE:
            message = f"HTTP {code}: Mailchimp will not add {email}: {said}. {COMPLIANCE[title.lower()]}"
        elif code == 401:
            message = (f"HTTP 401: Mailchimp refused the API key ({said}). Make a new key in "
                       "Mailchimp (Profile > Extras > API keys), save it with `relay secret set` "
                       "under the name the recipe's api_key uses, then replay.")
        elif code == 403:
            message = (f"HTTP 403: Mailchimp does not allow this ({said}). Check that the API "
                       "key's user may manage this audience, then replay.")
        elif code == 404:
            message = (f"HTTP 404: Mailchimp list not found: check the audience id in the recipe's "
                       f"`list:` (Audience > Settings > Audience name and defaults) ({said}), "
                       "then replay.")
        else:
            message = (f"HTTP {code}: Mailchimp refused {email}: {said}. Check the recipe's "
                       "fields against the audience's fields, then replay.")
        return DeliveryFailed(
            message, retryable=failure.retryable, retry_after=failure.retry_after,
            status_code=code, response_body=failure.response_body,
            response_headers=failure.response_headers)


def _clean_tags(values: list[Any]) -> list[str]:
    """Tag names as text, without blanks or repeats, in order."""
    seen: list[str] = []
    for value in values:
        if value is None or isinstance(value, (dict, list)):
            continue
        name = str(value).strip()
        if name and name not in seen:
            seen.append(name)
    return seen
