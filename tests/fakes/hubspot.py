"""A fake HubSpot CRM v3 API: contacts by batch upsert, deals with an association.

It follows the contract in docs/destinations.md ("HubSpot"): a private app token as
``Authorization: Bearer``; ``POST /crm/v3/objects/contacts/batch/upsert`` with up to
100 inputs, each ``{idProperty, id, properties}``, no id twice in one batch, known
properties only; ``POST /crm/v3/objects/deals`` with properties and an association
to an existing contact. Errors come back in HubSpot's shape (``status``, ``message``,
``category``), and a rate-limited request gets HubSpot's 429 body (no Retry-After).

What it holds, in HubSpot's terms: ``contacts`` by lower-cased email (each with its
HubSpot ``id`` and ``properties``), ``deals`` (with the contact ids they are
associated with), and ``arrivals``: the emails of accepted upsert inputs in the order
they reached it.
"""

from __future__ import annotations

import json
import re
import threading
import time
import uuid
from typing import Any

from fakes.base import Answer, FakeAPI, Request

TOKEN = "pat-na1-11111111-2222-3333-4444-555555555555"
UPSERT = "/crm/v3/objects/contacts/batch/upsert"
DEALS = "/crm/v3/objects/deals"
CONTACT_PROPERTIES = frozenset({
    "email", "firstname", "lastname", "phone", "mobilephone", "company", "website", "jobtitle",
    "city", "country", "lifecyclestage", "hs_lead_status", "ticket_id",
})
DEAL_PROPERTIES = frozenset({
    "dealname", "dealstage", "pipeline", "amount", "closedate", "description", "dealtype",
})
PIPELINES = {"default": frozenset({
    "appointmentscheduled", "qualifiedtobuy", "presentationscheduled", "decisionmakerboughtin",
    "contractsent", "closedwon", "closedlost"})}
EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[A-Za-z]{2,}$")


def error(message: str, category: str = "VALIDATION_ERROR", **extra: Any) -> dict[str, Any]:
    return {"status": "error", "message": message, "correlationId": str(uuid.uuid4()),
            "category": category, **extra}


def invalid_properties(items: list[dict[str, Any]]) -> str:
    """HubSpot's message for invalid property values: a JSON list inside the text."""
    return "Property values were not valid: " + json.dumps(items, separators=(",", ":"))


def no_such_property(name: str) -> dict[str, Any]:
    text = f'Property "{name}" does not exist'
    return {"isValid": False, "message": text, "error": "PROPERTY_DOESNT_EXIST", "name": name,
            "localizedErrorMessage": text, "portalId": 12345678}


class FakeHubSpot(FakeAPI):
    def __init__(self, token: str = TOKEN) -> None:
        self.token = token
        self.contacts: dict[str, dict[str, Any]] = {}
        self.deals: list[dict[str, Any]] = []
        self.arrivals: list[str] = []
        # Answer 207 per input for these (lower-cased) emails, with this message;
        # invalid email addresses get one on their own, as HubSpot does.
        self.refuse: dict[str, str] = {}
        # False: refuse a whole batch with a 400 for an invalid email instead of a 207.
        self.multi_status = True
        # False: 207 errors name the input only by its id (context.ids), not its trace id.
        self.trace_ids = True
        self.next_id = 9001
        self.state = threading.Lock()
        self.gate: threading.Event | None = None
        super().__init__()

    # --- the contract ---------------------------------------------------------------

    def authorized(self, request: Request) -> Answer | None:
        if request.headers.get("authorization") == f"Bearer {self.token}":
            return None
        return Answer(401, error(
            "Authentication credentials not found. This API supports OAuth 2.0 authentication "
            "and you can find more details at https://developers.hubspot.com/docs/methods/auth/"
            "oauth-overview", "INVALID_AUTHENTICATION"))

    def rate_limited(self, request: Request) -> Answer:
        limit, per = self.limit or (100, 10.0)
        return Answer(429, {
            "status": "error", "message": "You have reached your ten_secondly_rolling limit.",
            "errorType": "RATE_LIMIT", "correlationId": str(uuid.uuid4()),
            "policyName": "TEN_SECONDLY_ROLLING", "groupName": "publicapi:private-app:1"},
            headers={"X-HubSpot-RateLimit-Interval-Milliseconds": str(int(per * 1000)),
                     "X-HubSpot-RateLimit-Max": str(limit), "X-HubSpot-RateLimit-Remaining": "0"})

    def handle(self, request: Request) -> Answer:
        gate = self.gate
        if gate is not None:
            gate.wait(timeout=10)
        if request.method != "POST" or request.path not in (UPSERT, DEALS):
            return Answer(404, error(f"Unable to find {request.method} {request.path}",
                                     "OBJECT_NOT_FOUND"))
        if not request.headers.get("content-type", "").startswith("application/json"):
            return Answer(415, error("Content-Type must be application/json", "VALIDATION_ERROR"))
        try:
            body = request.json()
        except ValueError as e:
            return Answer(400, error(f"Invalid input JSON on line 1: {e}"))
        with self.state:
            return self.upsert(body) if request.path == UPSERT else self.create_deal(body)

    def upsert(self, body: Any) -> Answer:
        inputs = body.get("inputs") if isinstance(body, dict) else None
        if not isinstance(inputs, list) or not inputs:
            return Answer(400, error("Invalid input JSON: `inputs` must be a non-empty list"))
        if len(inputs) > 100:
            return Answer(400, error(f"Batch input size {len(inputs)} exceeds the limit of 100"))
        seen: set[str] = set()
        duplicates: list[str] = []
        unknown: list[str] = []
        for item in inputs:
            if not (isinstance(item, dict) and item.get("idProperty") == "email"
                    and isinstance(item.get("id"), str) and item["id"]
                    and isinstance(item.get("properties"), dict)
                    and all(isinstance(v, (str, int, float, bool)) or v is None
                            for v in item["properties"].values())
                    and isinstance(item.get("objectWriteTraceId", ""), str)):
                return Answer(400, error(
                    "Invalid input JSON: each input needs idProperty (email), id and a "
                    f"properties object, got {item!r}"))
            key = item["id"].lower()
            if key in seen:
                duplicates.append(item["id"])
            seen.add(key)
            unknown += [p for p in item["properties"] if p not in CONTACT_PROPERTIES
                        and p not in unknown]
        if duplicates:
            return Answer(400, error(
                f"Duplicate IDs found in batch input: {duplicates}. IDs must be unique"))
        if unknown:
            return Answer(400, error(invalid_properties([no_such_property(p) for p in unknown])))

        refusals = {}
        for item in inputs:
            key = item["id"].lower()
            said = self.refuse.get(key) or (None if EMAIL.match(item["id"]) else
                                            f"Email address {item['id']} is invalid")
            if said is not None:
                refusals[key] = said
        if refusals and not self.multi_status:
            return Answer(400, error(invalid_properties([
                {"isValid": False, "message": m, "error": "INVALID_EMAIL", "name": "email"}
                for m in refusals.values()])))

        now = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())
        results, errors = [], []
        for item in inputs:
            key = item["id"].lower()
            if key in refusals:
                context: dict[str, list[str]] = {"ids": [item["id"]]}
                if self.trace_ids and item.get("objectWriteTraceId"):
                    context["objectWriteTraceId"] = [item["objectWriteTraceId"]]
                errors.append({
                    "status": "error", "category": "VALIDATION_ERROR",
                    "message": invalid_properties([{"isValid": False, "message": refusals[key],
                                                    "error": "INVALID_EMAIL", "name": "email"}]),
                    "context": context,
                    "errors": [{"message": refusals[key], "code": "INVALID_EMAIL",
                                "context": {"propertyName": ["email"]}}]})
                continue
            self.arrivals.append(key)
            properties = {k: str(v) for k, v in item["properties"].items() if v is not None}
            properties["email"] = key
            contact = self.contacts.get(key)
            new = contact is None
            if contact is None:
                contact = self.contacts[key] = {"id": str(self.next_id), "properties": {},
                                                "createdAt": now}
                self.next_id += 1
            contact["properties"].update(properties)
            contact["updatedAt"] = now
            results.append({
                "id": contact["id"], "new": new, "archived": False,
                "createdAt": contact["createdAt"], "updatedAt": now,
                "properties": {**contact["properties"], "hs_object_id": contact["id"],
                               "lastmodifieddate": now}})
        answer: dict[str, Any] = {"status": "COMPLETE", "results": results,
                                  "startedAt": now, "completedAt": now}
        if errors:
            answer.update(numErrors=len(errors), errors=errors)
            return Answer(207, answer)
        return Answer(200, answer)

    def create_deal(self, body: Any) -> Answer:
        if not isinstance(body, dict) or not isinstance(body.get("properties"), dict):
            return Answer(400, error("Invalid input JSON: `properties` must be an object"))
        props = body["properties"]
        unknown = [p for p in props if p not in DEAL_PROPERTIES]
        if unknown:
            return Answer(400, error(invalid_properties([no_such_property(p) for p in unknown])))
        pipeline = props.get("pipeline", "default")
        problems = []
        if pipeline not in PIPELINES:
            problems.append({"isValid": False, "name": "pipeline", "error": "INVALID_OPTION",
                             "message": f"{pipeline} is not a valid pipeline"})
        elif props.get("dealstage") not in PIPELINES[pipeline]:
            problems.append({"isValid": False, "name": "dealstage", "error": "INVALID_OPTION",
                             "message": f"{props.get('dealstage')} is not a valid deal stage of "
                                        f"pipeline {pipeline}"})
        if "amount" in props:
            try:
                float(props["amount"])
            except (TypeError, ValueError):
                problems.append({"isValid": False, "name": "amount", "error": "INVALID_FLOAT",
                                 "message": f"{props['amount']} was not a valid number"})
        if not props.get("dealname"):
            problems.append({"isValid": False, "name": "dealname", "error": "REQUIRED",
                             "message": "dealname is required"})
        if problems:
            return Answer(400, error(invalid_properties(problems)))
        associations = body.get("associations", [])
        contact_ids: list[str] = []
        known = {c["id"] for c in self.contacts.values()}
        for association in associations if isinstance(associations, list) else [None]:
            to = association.get("to") if isinstance(association, dict) else None
            target = to.get("id") if isinstance(to, dict) else None
            types = association.get("types") if isinstance(association, dict) else None
            if not isinstance(target, str) or types != [
                    {"associationCategory": "HUBSPOT_DEFINED", "associationTypeId": 3}]:
                return Answer(400, error(f"Invalid association: {association!r}"))
            if target not in known:
                return Answer(400, error(f"No contact with ID {target}", "OBJECT_NOT_FOUND"))
            contact_ids.append(target)
        now = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())
        deal: dict[str, Any] = {"id": str(self.next_id), "properties": {k: str(v) for k, v in props.items()},
                "contact_ids": contact_ids, "createdAt": now}
        self.next_id += 1
        self.deals.append(deal)
        return Answer(201, {"id": deal["id"], "properties": {**deal["properties"],
                                                             "hs_object_id": deal["id"]},
                            "createdAt": now, "updatedAt": now, "archived": False})

    # --- what tests use --------------------------------------------------------------

    def hold(self) -> threading.Event:
        """Keep the next requests waiting (up to 10 s) until the event is set, so that
        relay's lane stays busy while a test queues more sales behind it."""
        self.gate = threading.Event()
        return self.gate

    def contact(self, email: str) -> dict[str, Any]:
        with self.state:
            return dict(self.contacts[email.lower()])
