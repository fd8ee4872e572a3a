"""A fake Mailchimp Marketing API 3.0: audience members and their tags.

Follows the contract in destinations.md: Basic auth with the API key as password;
``PUT /lists/{list}/members/{md5(lower(email))}`` upserts a member (200, the
member); ``POST .../members/{hash}/tags`` sets tags (204). Errors are
``application/problem+json``. The base URL the relay is given is
``{fake.url}/{dc}/3.0`` (``mailchimp_url`` = ``fake.base_template``), so the fake
also checks that relay put the key's data centre in the address.

Like Mailchimp, it counts simultaneous requests and answers 429 beyond 10.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import re
import threading
import time
from typing import Any

from fakes.base import Answer, FakeAPI, Request

PROBLEM = "application/problem+json"
STATUSES = {"subscribed", "pending", "unsubscribed", "cleaned", "transactional"}
MEMBER = re.compile(r"^/lists/(?P<list>[^/]+)/members/(?P<hash>[0-9a-f]{32})(?P<tags>/tags)?$")


def problem(status: int, title: str, detail: str, errors: list[dict[str, str]] | None = None) -> Answer:
    body: dict[str, Any] = {
        "type": "https://mailchimp.com/developer/marketing/docs/errors/",
        "title": title, "status": status, "detail": detail, "instance": "fake-0000"}
    if errors:
        body["errors"] = errors
    return Answer(status, body, content_type=PROBLEM)


def invalid(detail: str, field: str = "", message: str = "") -> Answer:
    return problem(400, "Invalid Resource", detail,
                   [{"field": field, "message": message or detail}] if field else None)


@dataclasses.dataclass
class Member:
    email_address: str
    status: str
    merge_fields: dict[str, Any]
    tags: set[str] = dataclasses.field(default_factory=set)
    updates: int = 0  # PUTs after the first


class FakeMailchimp(FakeAPI):
    def __init__(self, api_key: str = "0123456789abcdef0123456789abcdef-us14",
                 lists: tuple[str, ...] = ("a1b2c3d4e5",),
                 merge_tags: tuple[str, ...] = ("FNAME", "LNAME", "PHONE", "ADDRESS", "BIRTHDAY")) -> None:
        super().__init__()
        self.api_key = api_key
        self.dc = api_key.rpartition("-")[2]
        self.members: dict[str, dict[str, Member]] = {name: {} for name in lists}
        self.merge_tags = set(merge_tags)
        self.compliance: set[str] = set()  # lower-case emails that unsubscribed / bounced
        self.forgotten: set[str] = set()  # lower-case emails permanently deleted
        self.base_template = f"{self.url}/{{dc}}/3.0"  # what relay's mailchimp_url should be
        self.delay = 0.0  # seconds each request takes (to see concurrency)
        self.active = 0
        self.max_active = 0
        self._active_lock = threading.Lock()

    # --- what tests read ------------------------------------------------------------

    def member(self, email: str, list_id: str = "a1b2c3d4e5") -> Member | None:
        return self.members[list_id].get(email.lower())

    # --- the contract ---------------------------------------------------------------

    def _answer(self, request: Request) -> Answer:
        with self._active_lock:
            self.active += 1
            self.max_active = max(self.max_active, self.active)
            crowded = self.active > 10
        try:
            if self.delay:
                time.sleep(self.delay)
            if crowded:  # Mailchimp: at most 10 simultaneous connections per account
                with self.lock:
                    self.requests.append(request)
                return self.rate_limited(request)
            return super()._answer(request)
        finally:
            with self._active_lock:
                self.active -= 1

    def rate_limited(self, request: Request) -> Answer:
        return problem(429, "Too Many Requests",
                       "You have exceeded the limit of 10 simultaneous connections.")

    def authorized(self, request: Request) -> Answer | None:
        refused = problem(401, "API Key Invalid", "Your API key may be invalid, or you've "
                          "attempted to access the wrong datacenter.")
        scheme, _, encoded = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "basic":
            return refused
        try:
            user, _, password = base64.b64decode(encoded, validate=True).decode().partition(":")
        except (ValueError, UnicodeDecodeError):
            return refused
        if not user or password != self.api_key:
            return refused
        return None

    def handle(self, request: Request) -> Answer:
        prefix = f"/{self.dc}/3.0"
        if not request.path.startswith(prefix + "/"):
            return problem(404, "Resource Not Found",
                           f"The requested resource could not be found (expected {prefix}/...).")
        match = MEMBER.match(request.path[len(prefix):])
        if match is None:
            return problem(404, "Resource Not Found", "The requested resource could not be found.")
        list_id, member_hash = match["list"], match["hash"]
        if list_id not in self.members:
            return problem(404, "Resource Not Found", "The requested resource could not be found.")
        if not request.headers.get("content-type", "").startswith("application/json"):
            return problem(400, "Invalid Resource", "The request body must be JSON.")
        try:
            body = request.json()
        except ValueError:
            return problem(400, "JSON Parse Exception",
                           "We encountered an unspecified JSON parsing error.")
        if not isinstance(body, dict):
            return invalid("The resource submitted could not be validated.")
        if match["tags"]:
            return self._tags(request, list_id, member_hash, body)
        return self._upsert(request, list_id, member_hash, body)

    def _upsert(self, request: Request, list_id: str, member_hash: str, body: dict[str, Any]) -> Answer:
        if request.method != "PUT":
            return problem(405, "Method Not Allowed", "The requested method and resource are not "
                           "compatible.")
        unknown = set(body) - {"email_address", "status_if_new", "status", "merge_fields"}
        if unknown:
            return invalid("The resource submitted could not be validated.", sorted(unknown)[0],
                           "Schema describes nothing for this field.")
        email = body.get("email_address")
        if not isinstance(email, str) or not re.fullmatch(r"[^@\s]+@[^@\s]+\.[^@\s]+", email):
            return invalid("The resource submitted could not be validated.", "email_address",
                           "This value should be a valid email address.")
        if hashlib.md5(email.lower().encode()).hexdigest() != member_hash:
            return invalid("The subscriber hash in the URL does not match email_address "
                           "(it must be the MD5 of the lower-case address).")
        status = body.get("status_if_new")
        if status not in STATUSES:
            return invalid("The resource submitted could not be validated.", "status_if_new",
                           "Data did not match any of the schemas described in anyOf.")
        merge = body.get("merge_fields", {})
        if not isinstance(merge, dict):
            return invalid("The resource submitted could not be validated.", "merge_fields",
                           "Schema describes object, string found instead")
        bad = [tag for tag in merge if tag not in self.merge_tags]
        if bad:
            return invalid("Your merge fields were invalid.", bad[0],
                           f"The merge field {bad[0]} does not exist in this audience.")
        for tag, value in merge.items():
            if not isinstance(value, (str, int, float, dict)) or isinstance(value, bool):
                return invalid("Your merge fields were invalid.", tag, "Please enter a value")
        key = email.lower()
        if key in self.compliance:
            return problem(400, "Member In Compliance State",
                           f"{email} is in a compliance state due to unsubscribe, bounce, or "
                           "compliance review and cannot be subscribed.")
        if key in self.forgotten:
            return problem(400, "Forgotten Email Not Subscribed",
                           f"{email} was permanently deleted and cannot be re-imported. The "
                           "contact must re-subscribe to get back on the list.")
        members = self.members[list_id]
        member = members.get(key)
        if member is None:
            member = members[key] = Member(email, status, dict(merge))
        else:
            member.merge_fields.update(merge)
            member.updates += 1
        return Answer(200, self._member_json(list_id, member_hash, member))

    def _tags(self, request: Request, list_id: str, member_hash: str, body: dict[str, Any]) -> Answer:
        if request.method != "POST":
            return problem(405, "Method Not Allowed", "The requested method and resource are not "
                           "compatible.")
        member = next((m for k, m in self.members[list_id].items()
                       if hashlib.md5(k.encode()).hexdigest() == member_hash), None)
        if member is None:
            return problem(404, "Resource Not Found", "The requested resource could not be found.")
        tags = body.get("tags")
        if set(body) != {"tags"} or not isinstance(tags, list) or not tags:
            return invalid("The resource submitted could not be validated.", "tags",
                           "Required property tags was not present or is not a list.")
        for tag in tags:
            if (not isinstance(tag, dict) or set(tag) - {"name", "status"}
                    or not isinstance(tag.get("name"), str) or not tag["name"].strip()
                    or tag.get("status") not in ("active", "inactive")):
                return invalid("The resource submitted could not be validated.", "tags",
                               "Each tag needs a name and a status of active or inactive.")
        for tag in tags:
            if tag["status"] == "active":
                member.tags.add(tag["name"])
            else:
                member.tags.discard(tag["name"])
        return Answer(204)

    def _member_json(self, list_id: str, member_hash: str, member: Member) -> dict[str, Any]:
        return {"id": member_hash, "email_address": member.email_address,
                "unique_email_id": member_hash[:10], "status": member.status,
                "merge_fields": member.merge_fields, "list_id": list_id,
                "tags_count": len(member.tags),
                "tags": [{"id": i, "name": t} for i, t in enumerate(sorted(member.tags))]}
