"""A fake Slack incoming webhook.

``POST /services/T.../B.../<token>`` with ``{"text": "..."}`` (and optional
``blocks``) answers 200 ``ok`` as plain text. The hook's URL is ``fake.webhook``;
any other path is ``404 no_service``, like a revoked webhook. Errors are plain
text, as Slack's are: 400 ``invalid_payload`` / ``no_text``; and a test can make
the channel archived (410 ``channel_is_archived``) or deleted (404
``channel_not_found``), or answer 429 with ``Retry-After``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from fakes.base import Answer, FakeAPI, Request

TEXT = "text/plain; charset=utf-8"


def plain(status: int, text: str, headers: dict[str, str] | None = None) -> Answer:
    return Answer(status, text, headers=headers or {}, content_type=TEXT)


@dataclasses.dataclass
class Message:
    text: str | None
    blocks: list[Any] | None
    at: float


class FakeSlack(FakeAPI):
    def __init__(self, token: str = "T0001/B0002/x8Yq2fakeSECRETtokenZZ91") -> None:
        super().__init__()
        self.path = f"/services/{token}"
        self.webhook = self.url + self.path
        self.messages: list[Message] = []
        self.channel = "ok"  # or "archived", "deleted"

    def texts(self) -> list[str | None]:
        with self.lock:
            return [m.text for m in self.messages]

    def authorized(self, request: Request) -> Answer | None:
        if request.method != "POST" or request.path != self.path:
            return plain(404, "no_service")
        return None

    def rate_limited(self, request: Request) -> Answer:
        return plain(429, "rate_limited", {"Retry-After": "1"})

    def handle(self, request: Request) -> Answer:
        if not request.headers.get("content-type", "").startswith("application/json"):
            return plain(400, "invalid_payload")
        try:
            body = request.json()
        except ValueError:
            return plain(400, "invalid_payload")
        if not isinstance(body, dict) or set(body) - {"text", "blocks"}:
            return plain(400, "invalid_payload")
        text, blocks = body.get("text"), body.get("blocks")
        if text is not None and not isinstance(text, str):
            return plain(400, "invalid_payload")
        if blocks is not None and not (isinstance(blocks, list) and blocks
                                       and all(isinstance(b, dict) and b.get("type") for b in blocks)):
            return plain(400, "invalid_blocks")
        if not (text and text.strip()) and not blocks:
            return plain(400, "no_text")
        if self.channel == "archived":
            return plain(410, "channel_is_archived")
        if self.channel == "deleted":
            return plain(404, "channel_not_found")
        self.messages.append(Message(text, blocks, request.at))
        return plain(200, "ok")
