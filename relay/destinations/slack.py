"""``type: slack``: post a message to a Slack channel through an incoming webhook.

Options:

```yaml
fields:
  text: "New sale: {{ tickets | length }} ticket(s) for {{ event_name }}"
to:
  - type: slack
    webhook: ${SLACK_WEBHOOK_URL}   # required: the incoming webhook's URL (a secret)
    text: text                      # optional: the recipe field holding the message
    escape: true                    # optional (default true): see below
```

The message is the recipe's field named by ``text`` (by default the field
``text``). A recipe without that field gets one ``name: value`` line per field.
A recipe field ``blocks`` (a list of Slack Block Kit blocks) is sent as it is,
with the text as the notification fallback.

``escape`` (on by default) turns ``&``, ``<`` and ``>`` in the text into Slack's
``&amp;``, ``&lt;``, ``&gt;``, so that a buyer named ``<!channel>`` cannot notify
everyone. Turn it off only when your text builds Slack links (``<https://...|label>``)
itself.

The webhook URL is a secret (anyone holding it can post to the channel): relay
never shows it, in ``relay try``, in errors or in logs of attempts.

Slack takes about one message per second per webhook; relay paces each webhook
URL to that, and honours the ``Retry-After`` of a 429. Posting is **not
idempotent**: if Slack posts the message but its answer is lost (a timeout),
relay retries and the channel shows the message twice.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

import httpx

from ..errors import DeliveryFailed
from .base import (
    USER_AGENT,
    DeliveryContext,
    Destination,
    DestinationContext,
    OptionError,
    Sent,
    flat_value,
    send_http,
)

HIDDEN_URL = "[secret webhook URL]"
# Slack: "1 message per second per webhook, short bursts allowed"; a 429 carries
# Retry-After (honoured). Without one, wait that second.
PER_SECOND = 1
RATE_LIMIT_WAIT = 1.0
MAKE_NEW = ("make a new incoming webhook in Slack (api.slack.com/apps > your app > Incoming "
            "Webhooks), save its URL with `relay secret set` under the name the recipe's webhook "
            "uses, then replay")
# Slack's plain-text error codes, in plain words.
EXPLAINED = {
    "invalid_payload": "Slack could not read the message: check the recipe's text and blocks "
                       "fields, then replay",
    "no_text": "the message is empty: give the recipe's text field a value, then replay",
    "channel_not_found": f"the webhook's channel no longer exists (deleted, or made private): {MAKE_NEW}",
    "channel_is_archived": f"the channel was archived: unarchive it, or {MAKE_NEW}",
    "action_prohibited": "a Slack admin has stopped this webhook from posting to the channel: "
                         "ask them, then replay",
    "posting_to_general_channel_denied": "only admins may post in this channel: pick another "
                                         f"channel and {MAKE_NEW}",
    "user_not_found": f"the person this webhook posts to no longer exists: {MAKE_NEW}",
    "no_service": f"the webhook was removed or revoked in Slack: {MAKE_NEW}",
    "no_service_id": f"the webhook was removed or revoked in Slack: {MAKE_NEW}",
    "invalid_token": f"Slack no longer accepts this webhook: {MAKE_NEW}",
    "no_team": f"the Slack workspace of this webhook is gone: {MAKE_NEW}",
    "team_disabled": f"the Slack workspace of this webhook is disabled: {MAKE_NEW}",
}


def escape(text: str) -> str:
    """Slack's three escapes: text that cannot become a link or a mention."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


class SlackDestination(Destination):
    type = "slack"
    options = frozenset({"webhook", "text", "escape"})
    required = frozenset({"webhook"})
    batch_size = 1
    max_in_flight = 1  # messages appear in the channel in the order of the sales

    def __init__(self, config: Mapping[str, Any], context: DestinationContext) -> None:
        super().__init__(config, context)
        self.url = str(config["webhook"]).strip()
        # The URL is a secret: no message here quotes it.
        try:
            parsed = httpx.URL(self.url)
        except (httpx.InvalidURL, TypeError):
            raise OptionError("the webhook is not a URL: paste the whole Incoming Webhook URL "
                              "from Slack (https://hooks.slack.com/services/...)", "webhook") from None
        if parsed.scheme not in ("http", "https") or not parsed.host:
            raise OptionError("the webhook must be an https:// URL, like "
                              "https://hooks.slack.com/services/...", "webhook")
        text = config.get("text")
        if text is not None and (not isinstance(text, str) or not text):
            raise OptionError("text names the recipe field holding the message, e.g. text: message",
                              "text")
        self.text_field: str | None = text
        escape_option = config.get("escape", True)
        if not isinstance(escape_option, bool):
            raise OptionError("escape must be true or false", "escape")
        self.escape = escape_option
        account = "slack:" + hashlib.sha256(self.url.encode()).hexdigest()[:16]
        self.pacer = context.pacers.get(account, PER_SECOND, 1.0)

    def message(self, payload: Any) -> dict[str, Any]:
        """The JSON body Slack receives. :raises DeliveryFailed: (permanent)"""
        if not isinstance(payload, Mapping):
            raise DeliveryFailed("a slack destination needs the recipe's fields to be a mapping "
                                 "(text: ...)", retryable=False)
        blocks = payload.get("blocks")
        if blocks is not None and not (isinstance(blocks, list) and blocks):
            raise DeliveryFailed("the field blocks must be a list of Slack blocks", retryable=False)
        name = self.text_field or "text"
        if name in payload:
            text = flat_value(payload[name])
        elif self.text_field is not None:
            raise DeliveryFailed(
                f"the slack destination's text names the field {name!r}, but the recipe has no "
                f"such field (its fields: {', '.join(map(str, payload)) or 'none'}). Fix the "
                "recipe, then replay.", retryable=False)
        else:
            text = "\n".join(f"{k}: {flat_value(v)}" for k, v in payload.items() if k != "blocks")
        if not text.strip() and not blocks:
            why = f"the field {name!r} has no value" if name in payload else "the recipe has no fields"
            raise DeliveryFailed(f"the message is empty ({why}): Slack needs some text. Fix the "
                                 "recipe, then replay.", retryable=False)
        body: dict[str, Any] = {"text": escape(text) if self.escape else text}
        if blocks:
            body["blocks"] = blocks
        return body

    def preview(self, payload: Any) -> dict[str, Any]:
        return {"type": self.type, "method": "POST", "url": HIDDEN_URL,
                "headers": {"Content-Type": "application/json"}, "body": self.message(payload)}

    async def send(self, payload: Any, ctx: DeliveryContext) -> Sent:
        content = json.dumps(self.message(payload), ensure_ascii=False, separators=(",", ":")).encode()
        headers = {"Content-Type": "application/json", "User-Agent": USER_AGENT}
        try:
            sent = await send_http(ctx, "POST", self.url, headers=headers, content=content,
                                   pacer=self.pacer, rate_limit_wait=RATE_LIMIT_WAIT)
        except DeliveryFailed as failure:
            raise self._explained(failure) from None
        return Sent(sent.status_code, sent.headers, sent.body, note="posted to Slack")

    def _hide(self, text: str) -> str:
        """Remove the webhook URL, and its secret path, from ``text``."""
        path = httpx.URL(self.url).raw_path.decode("ascii", "replace")
        for secret in (self.url, path if len(path) > 1 else None):
            if secret:
                text = text.replace(secret, HIDDEN_URL)
        return text

    def _explained(self, failure: DeliveryFailed) -> DeliveryFailed:
        code = failure.status_code
        said = (failure.response_body or "").strip()[:200]
        if code is None:
            message = failure.message
        elif code == 429:
            message = f"HTTP 429: Slack is rate limiting this webhook ({said or 'no reason given'}); " \
                      "relay will wait and retry"
        elif failure.retryable:
            message = f"HTTP {code}: Slack had a problem ({said or 'no reason given'}); relay will retry"
        else:
            explanation = EXPLAINED.get(said) or (
                f"Slack refused the webhook: {MAKE_NEW}" if code in (401, 403, 404, 410)
                else "check the recipe's text and blocks fields, then replay")
            message = f"HTTP {code}: Slack refused the message ({said or 'no reason given'}): {explanation}"
        return DeliveryFailed(
            self._hide(message), retryable=failure.retryable, retry_after=failure.retry_after,
            status_code=code,
            response_body=None if failure.response_body is None else self._hide(failure.response_body),
            response_headers=failure.response_headers)
