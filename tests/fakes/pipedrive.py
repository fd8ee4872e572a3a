"""A fake Pipedrive API v2 for the persons endpoints relay uses.

It follows docs/destinations.md "Pipedrive" and Pipedrive's v2 reference:

- ``x-api-token: <token>``; wrong or missing: 401 ``{"success": false, "error": "Unauthorized access"}``.
- ``GET /api/v2/persons/search?term=&fields=&exact_match=``: ``term`` required (2+
  characters, or 1 with ``exact_match``), ``fields`` a comma list of name, email,
  phone, notes, custom_fields, ``exact_match`` true/false; the answer is
  ``{"success": true, "data": {"items": [{"result_score", "item": {"id", "type",
  "name", "emails": [...], "phones": [...], ...}}]}, "additional_data": {...}}``.
  ``search_lag`` seconds makes new persons invisible to search for that long, as
  Pipedrive's search index lags behind.
- ``POST /api/v2/persons``: ``name`` required; ``emails``/``phones`` lists of
  ``{"value", "primary", "label"}`` (value required, at most one primary);
  ``org_id``/``owner_id``/``visible_to`` integers (the org and owner must exist);
  ``label_ids`` integers; ``custom_fields`` keys must be known custom fields; any
  other key is refused. ``PATCH /api/v2/persons/{id}``: the same, all optional,
  for a person that exists (else 404).
- Errors are ``{"success": false, "error": "...", "error_info": "..."}`` with 400/404.
- ``rate_limit(20, 2.0)`` answers Pipedrive's 429; ``search_limit`` (per 2 s) counts
  searches separately, in ``search_over_limit``.
"""

from __future__ import annotations

import collections
import copy
import itertools
import re
import time
from typing import Any

from fakes.base import Answer, FakeAPI, Request

SEARCH_FIELDS = frozenset({"name", "email", "phone", "notes", "custom_fields"})
BODY_FIELDS = frozenset({"name", "owner_id", "org_id", "emails", "phones", "visible_to", "label_ids",
                         "custom_fields", "add_time", "marketing_status"})
INFO = "Please check developers.pipedrive.com"


def fail(status: int, message: str) -> Answer:
    return Answer(status, {"success": False, "error": message, "error_info": INFO, "data": None,
                           "additional_data": None})


def ok(data: Any, status: int = 200, additional: Any = None) -> Answer:
    return Answer(status, {"success": True, "data": data, "additional_data": additional})


class FakePipedrive(FakeAPI):
    def __init__(self, token: str = "0123456789abcdef0123456789abcdef01234567") -> None:
        self.token = token
        self.persons: dict[int, dict[str, Any]] = {}
        self.created_at: dict[int, float] = {}
        self.ids = itertools.count(1)
        self.orgs: set[int] = {1}
        self.users: set[int] = {1}
        self.custom_fields: set[str] = set()
        self.search_lag = 0.0
        self.search_limit: int | None = None
        self.search_window: collections.deque[float] = collections.deque()
        self.search_over_limit = 0
        super().__init__()

    @property
    def base_url(self) -> str:
        return self.url + "/api/v2"

    # --- what tests use ---------------------------------------------------------

    def add_person(self, name: str, email: str, phones: tuple[str, ...] = ()) -> int:
        with self.lock:
            person_id = next(self.ids)
            self.persons[person_id] = self._new(person_id, {
                "name": name, "emails": [{"value": email, "primary": True}],
                "phones": [{"value": p, "primary": i == 0} for i, p in enumerate(phones)]})
            self.created_at[person_id] = 0.0  # long indexed
            return person_id

    def with_email(self, email: str) -> list[dict[str, Any]]:
        with self.lock:
            return [copy.deepcopy(p) for p in self.persons.values()
                    if any(e["value"].lower() == email.lower() for e in p["emails"])]

    def calls(self) -> list[tuple[str, str]]:
        return [(r.method, r.path) for r in self.requests]

    # --- the contract -------------------------------------------------------------

    def authorized(self, request: Request) -> Answer | None:
        if request.headers.get("x-api-token") != self.token:
            return Answer(401, {"success": False, "error": "Unauthorized access", "errorCode": 401,
                                "error_info": INFO})
        return None

    def rate_limited(self, request: Request) -> Answer:
        return Answer(429, {"success": False, "error": "Request over limit", "errorCode": 429,
                            "error_info": INFO}, headers={"x-ratelimit-limit": "20", "x-ratelimit-remaining": "0"})

    def handle(self, request: Request) -> Answer:
        path = request.path
        if request.method == "GET" and path == "/api/v2/persons/search":
            return self._search(request)
        if request.method == "POST" and path == "/api/v2/persons":
            return self._write(request, None)
        match = re.fullmatch(r"/api/v2/persons/(\d+)", path)
        if match and request.method in ("PATCH", "GET"):
            person_id = int(match.group(1))
            with self.lock:
                if person_id not in self.persons:
                    return fail(404, "Person not found")
                if request.method == "GET":
                    return ok(copy.deepcopy(self.persons[person_id]))
            return self._write(request, person_id)
        return fail(404, "Unknown method .")

    def _search(self, request: Request) -> Answer:
        with self.lock:
            if self.search_limit is not None:
                while self.search_window and self.search_window[0] <= request.at - 2.0:
                    self.search_window.popleft()
                if len(self.search_window) >= self.search_limit:
                    self.search_over_limit += 1
                    return self.rate_limited(request)
                self.search_window.append(request.at)
        query = {k: v[-1] for k, v in request.query.items()}
        unknown = set(query) - {"term", "fields", "exact_match", "organization_id", "include_fields", "limit",
                                "cursor"}
        if unknown:
            return fail(400, f"Unknown query parameter: {sorted(unknown)[0]}")
        exact = query.get("exact_match", "false")
        if exact not in ("true", "false"):
            return fail(400, "exact_match must be a boolean")
        term = query.get("term", "")
        if len(term) < (1 if exact == "true" else 2):
            return fail(400, "Validation failed: term: Search term must be at least 2 characters long")
        fields = set((query.get("fields") or ",".join(sorted(SEARCH_FIELDS))).split(","))
        if not fields or fields - SEARCH_FIELDS:
            return fail(400, f"Validation failed: fields: invalid value {query.get('fields')!r}")
        now = time.time()

        def matches(value: str) -> bool:
            return value.lower() == term.lower() if exact == "true" else term.lower() in value.lower()

        items = []
        with self.lock:
            for person_id, p in sorted(self.persons.items()):
                if now - self.created_at[person_id] < self.search_lag:
                    continue  # not indexed yet
                values = []
                if "email" in fields:
                    values += [e["value"] for e in p["emails"]]
                if "name" in fields:
                    values.append(p["name"])
                if "phone" in fields:
                    values += [e["value"] for e in p["phones"]]
                if any(matches(v) for v in values):
                    items.append({"result_score": 1.0, "item": {
                        "id": p["id"], "type": "person", "name": p["name"],
                        "phones": [e["value"] for e in p["phones"]],
                        "emails": [e["value"] for e in p["emails"]],
                        "visible_to": p["visible_to"], "owner": {"id": p["owner_id"]},
                        "organization": {"id": p["org_id"]} if p["org_id"] else None,
                        "custom_fields": [], "notes": [], "update_time": p["update_time"]}})
        return ok({"items": items}, additional={"next_cursor": None})

    def _write(self, request: Request, person_id: int | None) -> Answer:
        if not request.headers.get("content-type", "").startswith("application/json"):
            return fail(400, "Content-Type must be application/json")
        try:
            body = request.json()
        except ValueError:
            return fail(400, "Invalid JSON in request body")
        if not isinstance(body, dict):
            return fail(400, "Validation failed: body must be an object")
        unknown = set(body) - BODY_FIELDS
        if unknown:
            return fail(400, f"Validation failed: {sorted(unknown)[0]}: Parameter is not allowed")
        if person_id is None or "name" in body:
            name = body.get("name")
            if not isinstance(name, str) or not name.strip():
                return fail(400, "Validation failed: name: Name must be given")
        for key in ("emails", "phones"):
            if key in body:
                items = body[key]
                if not isinstance(items, list) or not all(
                        isinstance(i, dict) and isinstance(i.get("value"), str) and i["value"]
                        and set(i) <= {"value", "primary", "label"}
                        and isinstance(i.get("primary", False), bool) for i in items):
                    return fail(400, f"Validation failed: {key}: must be a list of {{value, primary, label}}")
                if sum(1 for i in items if i.get("primary")) > 1:
                    return fail(400, f"Validation failed: {key}: only one can be primary")
        for key in ("org_id", "owner_id", "visible_to"):
            if key in body and (not isinstance(body[key], int) or isinstance(body[key], bool)):
                return fail(400, f"Validation failed: {key}: must be an integer")
        if "org_id" in body and body["org_id"] not in self.orgs:
            return fail(400, f"Organization with id {body['org_id']} does not exist")
        if "owner_id" in body and body["owner_id"] not in self.users:
            return fail(400, f"User with id {body['owner_id']} does not exist")
        if "label_ids" in body and (not isinstance(body["label_ids"], list)
                                    or not all(isinstance(i, int) for i in body["label_ids"])):
            return fail(400, "Validation failed: label_ids: must be an array of integers")
        if "custom_fields" in body:
            custom = body["custom_fields"]
            if not isinstance(custom, dict):
                return fail(400, "Validation failed: custom_fields: must be an object")
            for key in custom:
                if key not in self.custom_fields:
                    return fail(400, f"Custom field with key '{key}' does not exist")
        with self.lock:
            if person_id is None:
                person_id = next(self.ids)
                self.persons[person_id] = self._new(person_id, body)
                self.created_at[person_id] = time.time()
                return ok(copy.deepcopy(self.persons[person_id]), 201)
            person = self.persons[person_id]
            for key, value in body.items():
                if key == "custom_fields":
                    person["custom_fields"].update(value)
                elif key in ("emails", "phones"):
                    person[key] = [{"value": i["value"], "primary": bool(i.get("primary")),
                                    "label": i.get("label", "work")} for i in value]
                else:
                    person[key] = value
            person["update_time"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            return ok(copy.deepcopy(person))

    @staticmethod
    def _new(person_id: int, body: dict[str, Any]) -> dict[str, Any]:
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        return {
            "id": person_id, "name": body["name"], "owner_id": body.get("owner_id", 1),
            "org_id": body.get("org_id"),
            "emails": [{"value": i["value"], "primary": bool(i.get("primary")), "label": i.get("label", "work")}
                       for i in body.get("emails", [])],
            "phones": [{"value": i["value"], "primary": bool(i.get("primary")), "label": i.get("label", "work")}
                       for i in body.get("phones", [])],
            "visible_to": body.get("visible_to", 3), "label_ids": body.get("label_ids", []),
            "custom_fields": dict(body.get("custom_fields", {})), "add_time": now, "update_time": now,
            "is_deleted": False,
        }
