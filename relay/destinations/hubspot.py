"""``type: hubspot``: create or update HubSpot contacts (CRM v3), and optionally a deal.

The recipe's ``fields:`` are the contact's properties, by their HubSpot internal name
(``email``, ``firstname``, ``lastname``, ``phone``, ``company``, or a custom property's
internal name). Contacts are upserted by ``id_property`` (email by default), so a
second sale for the same email updates the contact instead of duplicating it.

```yaml
to:
  - type: hubspot
    token: ${HUBSPOT_TOKEN}       # the private app's access token (required)
    id_property: email            # optional: the property that identifies a contact
    rate_limit:                   # optional: HubSpot's limit for your plan
      requests: 190               #   default 100 per 10 s (Free and Starter);
      per: 10                     #   190 per 10 s on Professional and Enterprise
    deal:                         # optional: also create a deal for each delivery
      name: deal_name             #   a field of the recipe, or fixed text (required)
      amount: price               #   a field of the recipe (or a fixed number)
      pipeline: default           #   default: "default"
      dealstage: closedwon        #   default: "closedwon"
```

- The ``id_property`` field must have a value: a delivery without it fails at once,
  naming the field. Empty fields (null or "") are left out, so they never erase what
  HubSpot already has.
- ``deal:`` values name fields of the recipe (``name: deal_name`` takes the value
  of the field ``deal_name``); a value that is not a field name is fixed text (a
  deal called "Ticket sale"). Fields named under ``deal:`` go to the deal only,
  not to the contact (except the id property). Other keys under ``deal:`` are
  more deal properties, by internal name. The deal is associated with the contact.
  Needs the ``crm.objects.deals.write`` scope besides ``crm.objects.contacts.write``.

Idempotency: the contact upsert is idempotent (sending it twice leaves one contact
with the same properties), so retries are harmless. Creating a deal is NOT: if
HubSpot saves the deal but its answer is lost (a timeout, a dropped connection),
the retry creates a second deal for the same sale.

Rate limits: every request to one portal (token) goes through one pacer set to the
plan's limit. HubSpot sends no Retry-After: after a 429 for the ten-second window
relay waits 10 s; after a 429 for the daily limit it waits an hour (see DAILY_WAIT).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from collections.abc import Mapping
from typing import Any

from ..errors import DeliveryFailed
from .base import (
    USER_AGENT,
    BatchDestination,
    DeliveryContext,
    DestinationContext,
    OptionError,
    Outcome,
    Sent,
    flat_value,
    rate_limit_option,
    send_http,
)

DEFAULT_RATE = (100, 10.0)  # Free and Starter: 100 requests per 10 s per app
# HubSpot's rolling window starts when a request arrives there, a little after relay
# counted it: pace over a slightly longer window so jitter never tips one over.
PACE_MARGIN = 0.05
PACE_MARGIN_MIN = 0.25
WINDOW_WAIT = 10.0  # a 429 for TEN_SECONDLY_ROLLING: the rest of the 10 s window
# A 429 for the DAILY limit: it resets at midnight in the portal's own time zone,
# which relay cannot see, so it tries again every hour (one request an hour).
DAILY_WAIT = 3600.0
BATCH_LIMIT = 100  # inputs per batch upsert
UPSERT_PATH = "/crm/v3/objects/contacts/batch/upsert"
DEALS_PATH = "/crm/v3/objects/deals"
DEAL_TO_CONTACT = 3  # HubSpot-defined association type: deal -> contact
DEAL_DEFAULTS = {"pipeline": "default", "dealstage": "closedwon"}
RETRYABLE_CATEGORIES = frozenset({"RATE_LIMITS", "INTERNAL_ERROR"})
PROPERTY_NAME = re.compile(r"^[A-Za-z0-9_]+$")
CONTACT_SCOPE = "crm.objects.contacts.write"
DEAL_SCOPE = "crm.objects.deals.write"


def hubspot_message(body: str | None) -> tuple[str, str | None, list[str]]:
    """HubSpot's own words from an error body: (message, category, error codes).

    A validation error nests a JSON list in its message ("Property values were not
    valid: [{...}]"); its inner messages are what a person needs to read.
    """
    try:
        data = json.loads(body or "")
    except ValueError:
        return (body or "").strip()[:300], None, []
    if not isinstance(data, dict):
        return "", None, []
    message = str(data.get("message") or "")
    codes: list[str] = []
    head, sep, rest = message.partition(": [")
    if sep:
        try:
            inner = json.loads("[" + rest)
        except ValueError:
            inner = None
        if isinstance(inner, list) and inner:
            texts = [str(i.get("message")) for i in inner if isinstance(i, dict) and i.get("message")]
            codes = [str(i.get("error")) for i in inner if isinstance(i, dict) and i.get("error")]
            if texts:
                message = "; ".join(texts)
    details = data.get("errors")
    if isinstance(details, list):
        codes += [str(d["code"]) for d in details if isinstance(d, dict) and d.get("code")]
        if not message:
            message = "; ".join(str(d.get("message")) for d in details
                                if isinstance(d, dict) and d.get("message"))
    category = data.get("category")
    return message.strip(), str(category) if category else None, codes


def _hint(codes: list[str], what: str) -> str:
    if "PROPERTY_DOESNT_EXIST" in codes:
        return (f" Use the {what} property's internal name (HubSpot: Settings > Properties), "
                "or create the property in HubSpot, then replay.")
    if "INVALID_EMAIL" in codes:
        return " The email address is not valid: correct it at the source, then replay."
    return f" Check the recipe's fields against the {what} properties in HubSpot, then replay."


@dataclasses.dataclass
class _Prepared:
    """One delivery's payload, split into what the contact and the deal get."""

    key: str  # the id as HubSpot compares it
    id: str
    contact: dict[str, str]
    deal: dict[str, str] | None


@dataclasses.dataclass
class _Input:
    """One input of the batch upsert: every delivery in the batch for one contact."""

    key: str
    id: str
    properties: dict[str, str]
    trace: str
    members: list[int]


class HubSpotDestination(BatchDestination):
    type = "hubspot"
    options = frozenset({"token", "id_property", "deal", "rate_limit"})
    required = frozenset({"token"})
    batch_size = BATCH_LIMIT
    max_in_flight = 1  # one request at a time per recipe: contacts reach HubSpot in order

    def __init__(self, config: Mapping[str, Any], context: DestinationContext) -> None:
        super().__init__(config, context)
        token = str(config["token"]).strip()
        if token.lower().startswith("bearer "):
            token = token[7:].strip()
        if not token or any(c.isspace() for c in token):
            raise OptionError("token must be the private app's access token (one word, "
                              "for example ${HUBSPOT_TOKEN})", "token")
        self.token = token
        self.id_property = str(config.get("id_property") or "email").strip()
        if not PROPERTY_NAME.match(self.id_property):
            raise OptionError("id_property must be a HubSpot property's internal name, "
                              "for example email", "id_property")
        self.deal = self._deal_option(config.get("deal"))
        limit, per = rate_limit_option(config.get("rate_limit"), DEFAULT_RATE, example=(190, 10))
        self.base = str(context.settings.hubspot_url).rstrip("/")
        account = "hubspot:" + hashlib.sha256(token.encode()).hexdigest()[:16]
        margin = max(PACE_MARGIN_MIN, per * PACE_MARGIN)
        self.pacer = context.pacers.get(account, limit, per + margin)

    @staticmethod
    def _deal_option(value: Any) -> dict[str, str | int | float] | None:
        if value is None:
            return None
        example = "for example `deal: {name: deal_name, amount: price}`"
        if not isinstance(value, Mapping):
            raise OptionError(f"deal must be a mapping, {example}", "deal")
        deal: dict[str, str | int | float] = dict(DEAL_DEFAULTS)
        for key, item in value.items():
            key = "name" if str(key) == "dealname" else str(key)
            if not PROPERTY_NAME.match(key):
                raise OptionError(f"deal: {key!r} is not a HubSpot deal property name", "deal")
            if isinstance(item, bool) or not isinstance(item, (str, int, float)) or item == "":
                raise OptionError(f"deal.{key} must be a field name or fixed text", "deal")
            deal[key] = item
        if "name" not in deal:
            raise OptionError(f"deal needs `name:` (a field of the recipe or fixed text), {example}",
                              "deal")
        return deal

    # --- what is sent -----------------------------------------------------------

    def _headers(self, token: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {token}", "Content-Type": "application/json",
                "User-Agent": USER_AGENT}

    def _key(self, value: str) -> str:
        return value.lower() if self.id_property == "email" else value

    def prepare(self, payload: Any) -> _Prepared:
        """Split one payload into contact properties and deal properties.

        :raises DeliveryFailed: (permanent) when the payload cannot make a contact.
        """
        if not isinstance(payload, Mapping):
            raise DeliveryFailed(
                "a hubspot destination needs the recipe's fields to map HubSpot property "
                "names to values (for example `email: registrantEmail`)", retryable=False)
        raw_id = payload.get(self.id_property)
        ident = flat_value(raw_id).strip() if raw_id is not None else ""
        if not ident:
            raise DeliveryFailed(
                f"the field {self.id_property!r} is missing or empty, and HubSpot finds the "
                f"contact by it (id_property: {self.id_property}). Map it in the recipe's "
                f"`fields:` (for example `{self.id_property}: registrantEmail`), or check "
                "that the event has it, then replay.", retryable=False)
        deal: dict[str, str] | None = None
        for_deal: set[str] = set()
        if self.deal is not None:
            deal = {}
            for key, value in self.deal.items():
                name = "dealname" if key == "name" else key
                if isinstance(value, str) and value in payload:
                    for_deal.add(value)
                    found = payload[value]
                    if found is None or found == "":
                        continue
                    deal[name] = flat_value(found)
                elif key == "amount" and isinstance(value, str) and not _is_number(value):
                    raise DeliveryFailed(
                        f"deal.amount names the field {value!r}, but the recipe's fields have "
                        f"no {value!r} (they are: {', '.join(map(str, payload))}). Add it to "
                        "`fields:` or fix deal.amount, then replay.", retryable=False)
                else:
                    deal[name] = flat_value(value)
        contact: dict[str, str] = {}
        for key, value in payload.items():
            key = str(key)
            if key in for_deal and key != self.id_property:
                continue
            if value is None or value == "":
                continue  # an empty field never erases what HubSpot has
            contact[key] = flat_value(value)
        contact[self.id_property] = ident
        return _Prepared(self._key(ident), ident, contact, deal)

    def _input(self, item: _Input) -> dict[str, Any]:
        return {"idProperty": self.id_property, "id": item.id, "properties": item.properties,
                "objectWriteTraceId": item.trace}

    def _deal_body(self, properties: dict[str, str], contact_id: str) -> dict[str, Any]:
        return {"properties": properties, "associations": [{
            "to": {"id": contact_id},
            "types": [{"associationCategory": "HUBSPOT_DEFINED",
                       "associationTypeId": DEAL_TO_CONTACT}]}]}

    def preview(self, payload: Any) -> dict[str, Any]:
        prepared = self.prepare(payload)
        item = _Input(prepared.key, prepared.id, prepared.contact, "<the delivery's id>", [0])
        shown: dict[str, Any] = {
            "type": self.type, "method": "POST", "url": self.base + UPSERT_PATH,
            "headers": self._headers("[secret]"), "body": {"inputs": [self._input(item)]},
        }
        if prepared.deal is not None:
            shown["then"] = {
                "method": "POST", "url": self.base + DEALS_PATH,
                "body": self._deal_body(prepared.deal, "<the contact's id from the upsert>"),
                "note": "not idempotent: a retry after a lost answer can create a second deal",
            }
        return shown

    # --- sending ------------------------------------------------------------------

    async def _post(self, ctx: DeliveryContext, path: str, body: dict[str, Any]) -> Sent:
        """POST through the pacer. :raises DeliveryFailed: with the raw answer kept."""
        content = json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()
        try:
            return await send_http(ctx, "POST", self.base + path, headers=self._headers(self.token),
                                   content=content, pacer=self.pacer, rate_limit_wait=WINDOW_WAIT)
        except DeliveryFailed as failure:
            if failure.status_code == 429 and _policy(failure.response_body) == "DAILY":
                failure.retry_after = DAILY_WAIT
                if self.pacer is not None:
                    self.pacer.pause(DAILY_WAIT)
            raise

    def _explain(self, failure: DeliveryFailed, what: str, prefix: str = "") -> DeliveryFailed:
        """The failure in plain words, with HubSpot's own message; the answer kept."""
        code = failure.status_code
        said, category, codes = hubspot_message(failure.response_body)
        hubspot = f" (HubSpot said: {said})" if said else ""
        scope = CONTACT_SCOPE if what == "contact" else DEAL_SCOPE
        if code is None:
            message = failure.message
        elif code == 401:
            message = ("the private app token was refused: check HUBSPOT_TOKEN and the app's "
                       f"scopes ({scope}){hubspot}")
        elif code == 403:
            message = (f"the private app may not write {what}s: give it the {scope} scope "
                       f"(HubSpot: Settings > Integrations > Private Apps), then replay{hubspot}")
        elif code == 404:
            message = (f"HubSpot answered 404 (not found) at {self.base}: check RELAY_HUBSPOT_URL "
                       f"(normally https://api.hubapi.com){hubspot}")
        elif code == 429:
            if _policy(failure.response_body) == "DAILY":
                message = ("HubSpot's daily API limit for this account is used up. It resets at "
                           "midnight in the account's time zone; relay tries again every hour"
                           f"{hubspot}")
            else:
                message = (f"HubSpot's rate limit was reached; relay waits {WINDOW_WAIT:g} s and "
                           f"retries{hubspot}")
        elif failure.retryable:
            message = f"{failure.message}{hubspot}"
        elif said and (category == "VALIDATION_ERROR" or code == 400):
            message = f"HubSpot refused the {what}: {said}.{_hint(codes, what)}"
        else:
            message = f"{failure.message}{hubspot}"
        return DeliveryFailed(
            prefix + message, retryable=failure.retryable, retry_after=failure.retry_after,
            status_code=code, response_body=failure.response_body,
            response_headers=failure.response_headers)

    async def send_batch(self, payloads: list[Any], ctxs: list[DeliveryContext]) -> list[Outcome]:
        outcomes: list[Outcome | None] = [None] * len(payloads)
        prepared: list[_Prepared | None] = []
        inputs: dict[str, _Input] = {}
        for index, (payload, ctx) in enumerate(zip(payloads, ctxs, strict=True)):
            try:
                item = self.prepare(payload)
            except DeliveryFailed as failure:
                outcomes[index] = failure
                prepared.append(None)
                continue
            prepared.append(item)
            # HubSpot refuses the same id twice in one batch: merge, later sales win.
            found = inputs.get(item.key)
            if found is None:
                inputs[item.key] = _Input(item.key, item.id, dict(item.contact),
                                          str(ctx.delivery_id), [index])
            else:
                found.properties.update(item.contact)
                found.members.append(index)
        contacts = await self._upsert(list(inputs.values()), ctxs)
        for merged in inputs.values():
            for index in merged.members:
                outcomes[index] = contacts[merged.key]
        if self.deal is not None:
            await self._deals(prepared, outcomes, ctxs)
        assert all(o is not None for o in outcomes)
        return [o for o in outcomes if o is not None]

    async def _upsert(self, items: list[_Input], ctxs: list[DeliveryContext],
                      again: bool = True) -> dict[str, Outcome]:
        """Upsert ``items`` in one request; an outcome per item key."""
        if not items:
            return {}
        ctx = ctxs[items[0].members[0]]
        try:
            sent = await self._post(ctx, UPSERT_PATH, {"inputs": [self._input(i) for i in items]})
        except DeliveryFailed as failure:
            explained = self._explain(failure, "contact")
            named = self._named(items, failure.response_body) if again and len(items) > 1 else []
            if failure.status_code == 400 and named and len(named) < len(items):
                # HubSpot refused the whole batch over some contacts (an invalid email):
                # those fail, the others go again on their own.
                outcomes: dict[str, Outcome] = {i.key: explained for i in named}
                rest = [i for i in items if i not in named]
                outcomes.update(await self._upsert(rest, ctxs, again=False))
                return outcomes
            return {i.key: explained for i in items}
        return self._read_upsert(items, sent)

    def _named(self, items: list[_Input], body: str | None) -> list[_Input]:
        """The inputs whose email HubSpot's error message names."""
        if self.id_property != "email" or not body:
            return []
        text = body.lower()
        return [i for i in items if re.search(
            r"(?<![\w.@+-])" + re.escape(i.key) + r"(?![\w.@-])", text)]

    def _read_upsert(self, items: list[_Input], sent: Sent) -> dict[str, Outcome]:
        try:
            data = json.loads(sent.body or "")
            results = data.get("results") or []
            errors = data.get("errors") or []
            if not isinstance(results, list) or not isinstance(errors, list):
                raise ValueError
        except (ValueError, AttributeError):
            unreadable = DeliveryFailed(
                f"HubSpot answered {sent.status_code} but its answer could not be read; relay "
                "will send the contact again (harmless: contacts are upserted)", retryable=True,
                status_code=sent.status_code, response_body=sent.body,
                response_headers=sent.headers)
            return {i.key: unreadable for i in items}
        by_key = {i.key: i for i in items}
        by_trace = {i.trace: i for i in items}
        outcomes: dict[str, Outcome] = {}
        unmatched_results = []
        for result in results:
            props = result.get("properties") if isinstance(result, dict) else None
            value = props.get(self.id_property) if isinstance(props, dict) else None
            item = by_key.get(self._key(str(value).strip())) if value is not None else None
            if item is None:
                unmatched_results.append(result)
                continue
            outcomes[item.key] = self._contact_sent(sent, result)
        if unmatched_results and len(results) == len(items) and not errors:
            # A 200 whose results do not echo the id property: HubSpot keeps input order.
            for item, result in zip(items, results, strict=True):
                outcomes.setdefault(item.key, self._contact_sent(sent, result))
        loose: list[dict[str, Any]] = []
        for error in errors:
            if not isinstance(error, dict):
                continue
            named = self._error_targets(error, by_key, by_trace)
            if not named:
                loose.append(error)
            for item in named:
                outcomes.setdefault(item.key, self._item_failure(sent, [error]))
        for item in items:
            if item.key in outcomes:
                continue
            if loose:
                outcomes[item.key] = self._item_failure(sent, loose)
            else:
                outcomes[item.key] = DeliveryFailed(
                    "HubSpot's answer did not mention this contact; relay will send it again "
                    "(harmless: contacts are upserted)", retryable=True,
                    status_code=sent.status_code, response_body=sent.body,
                    response_headers=sent.headers)
        return outcomes

    def _error_targets(self, error: dict[str, Any], by_key: dict[str, _Input],
                       by_trace: dict[str, _Input]) -> list[_Input]:
        """The inputs a 207 error is about: by objectWriteTraceId, id, or the message."""
        found: list[_Input] = []
        context = error.get("context")
        values: list[tuple[str, str]] = []
        if isinstance(context, dict):
            for name, listed in context.items():
                for value in listed if isinstance(listed, list) else [listed]:
                    values.append((str(name), str(value)))
        if error.get("id") is not None:
            values.append(("id", str(error["id"])))
        for name, value in values:
            item = by_trace.get(value) if name == "objectWriteTraceId" else None
            item = item or by_key.get(self._key(value.strip()))
            if item is not None and item not in found:
                found.append(item)
        if not found:
            found = self._named(list(by_key.values()), str(error.get("message") or ""))
        return found

    def _item_failure(self, sent: Sent, errors: list[dict[str, Any]]) -> DeliveryFailed:
        texts, codes, retryable = [], [], False
        for error in errors:
            said, category, found = hubspot_message(json.dumps(error))
            texts.append(said or "no reason given")
            codes += found
            retryable = retryable or category in RETRYABLE_CATEGORIES
        said = "; ".join(texts)
        if retryable:
            message = f"HubSpot could not save the contact this time; relay will retry (HubSpot said: {said})"
        else:
            message = f"HubSpot refused the contact: {said}.{_hint(codes, 'contact')}"
        return DeliveryFailed(message, retryable=retryable, status_code=sent.status_code,
                              response_body=json.dumps(errors if len(errors) > 1 else errors[0]),
                              response_headers=sent.headers)

    @staticmethod
    def _contact_sent(sent: Sent, result: dict[str, Any]) -> Sent:
        state = "created" if result.get("new") else "updated"
        return Sent(sent.status_code, sent.headers, json.dumps({"contact": result}),
                    note=f"HubSpot contact {result.get('id')} {state}")

    async def _deals(self, prepared: list[_Prepared | None], outcomes: list[Outcome | None],
                     ctxs: list[DeliveryContext]) -> None:
        """One deal per delivery whose contact was saved, associated with it."""
        stop: DeliveryFailed | None = None  # a failure that would repeat for every deal
        for index, item in enumerate(prepared):
            contact = outcomes[index]
            if item is None or item.deal is None or not isinstance(contact, Sent):
                continue
            result = json.loads(contact.body or "{}").get("contact", {})
            contact_id = str(result.get("id", ""))
            saved = f"the contact was saved (HubSpot id {contact_id}), but "
            if stop is not None:
                outcomes[index] = self._explain(stop, "deal", saved)
                continue
            try:
                sent = await self._post(ctxs[index], DEALS_PATH,
                                        self._deal_body(item.deal, contact_id))
            except DeliveryFailed as failure:
                outcomes[index] = self._explain(failure, "deal", saved)
                # A wait asked for, or a refused token, holds for the rest of the batch.
                if failure.retry_after is not None or failure.status_code in (401, 403):
                    stop = failure
                continue
            try:
                deal = json.loads(sent.body or "{}")
            except ValueError:
                deal = {}
            if not isinstance(deal, dict):
                deal = {}
            outcomes[index] = Sent(
                sent.status_code, sent.headers, json.dumps({"contact": result, "deal": deal}),
                note=f"{contact.note}; deal {deal.get('id')} created")


def _policy(body: str | None) -> str | None:
    try:
        data = json.loads(body or "")
    except ValueError:
        return None
    if not isinstance(data, dict) or not data.get("policyName"):
        return None
    return str(data["policyName"])


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True
