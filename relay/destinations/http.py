"""``type: http``: send the mapped fields to any URL.

Options: ``url`` (required), ``method`` (POST, PUT, PATCH, DELETE), ``headers``,
``body`` (``json``, the default, or ``form``), and ``sign`` to sign each request
so the receiver can check it came from this relay:

```yaml
sign:
  secret: ${CRM_SIGNING_SECRET}
  scheme: standard   # Standard Webhooks: webhook-id/-timestamp/-signature (default)
  # scheme: hmac-sha256 -> X-Relay-Signature: sha256=<hex of HMAC(secret, body)>
```

Every request carries ``Idempotency-Key`` (the same on every attempt of one
delivery), so a receiver can drop the duplicates that at-least-once delivery
can produce.

The url may take values from the mapped fields after its host:
``https://crm.example.com/contacts/{{ contact_id }}``. Each value is
percent-encoded (a ``/``, ``?``, ``#`` or ``@`` in it stays data), and the
scheme, host and port are the ones the recipe wrote: event data cannot send a
delivery anywhere else.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

import httpx
import jinja2

from ..errors import DeliveryFailed
from ..mapping import is_template
from ..sandbox import BoundedSandbox, LimitExceeded, render, time_limit
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

METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
SCHEMES = frozenset({"standard", "hmac-sha256"})


def _quoted(value: Any) -> str:
    return quote("" if value is None else flat_value(value), safe="")


# Every {{ value }} in a url is percent-encoded as it is written out.
URL_JINJA = BoundedSandbox(undefined=jinja2.StrictUndefined, autoescape=False, finalize=_quoted)


class UrlTemplate:
    """A destination url, fixed or with ``{{ field }}`` parts after the host."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.template: jinja2.Template | None = None
        fixed = text
        if is_template(text):
            fixed = text[:min(i for i in (text.find("{{"), text.find("{%")) if i >= 0)]
            parts = urlsplit(fixed)
            if parts.scheme not in ("http", "https") or not parts.netloc or not parts.path.startswith("/"):
                raise OptionError(
                    "only the part of the url after the host can use {{ }}: write the scheme, host "
                    "and a / first, e.g. https://crm.example.com/contacts/{{ contact_id }}", "url")
            try:
                self.template = URL_JINJA.from_string(text)
            except jinja2.TemplateSyntaxError as e:
                raise OptionError(f"the url's template is not valid: {e.message}", "url") from None
        try:
            parsed = httpx.URL(fixed)
        except (httpx.InvalidURL, TypeError) as e:
            raise OptionError(f"{text!r} is not a URL: {e}", "url") from None
        if parsed.scheme not in ("http", "https") or not parsed.host:
            raise OptionError(
                f"the url must start with http:// or https:// and name a host, not {text!r}", "url")
        self.origin = (parsed.scheme, parsed.host, parsed.port)

    def for_payload(self, payload: Any) -> str:
        """The url for one delivery. :raises DeliveryFailed: (permanent) when it cannot be made."""
        if self.template is None:
            return self.text
        context = dict(payload) if isinstance(payload, Mapping) else {"value": payload}
        try:
            with time_limit():
                url = render(self.template, context)
        except jinja2.UndefinedError as e:
            raise DeliveryFailed(f"the url uses a field the delivery does not have: {e.message}",
                                 retryable=False) from None
        except (LimitExceeded, jinja2.TemplateError, ValueError, TypeError, ArithmeticError) as e:
            raise DeliveryFailed(f"the url could not be made: {e}", retryable=False) from None
        try:
            parsed = httpx.URL(url)
        except httpx.InvalidURL as e:
            raise DeliveryFailed(f"the url made from this delivery is not valid: {e}",
                                 retryable=False) from None
        if (parsed.scheme, parsed.host, parsed.port) != self.origin:  # cannot happen: belt and braces
            raise DeliveryFailed("the url made from this delivery points at another host; not sent",
                                 retryable=False)
        return url



class HttpDestination(Destination):
    type = "http"
    options = frozenset({"url", "method", "headers", "body", "sign"})
    required = frozenset({"url"})

    def __init__(self, config: Mapping[str, Any], context: DestinationContext) -> None:
        super().__init__(config, context)
        self.url = str(config["url"]).strip()
        self.url_template = UrlTemplate(self.url)
        self.method = str(config.get("method", "POST")).upper()
        if self.method not in METHODS:
            raise OptionError(f"method must be one of {', '.join(sorted(METHODS))}", "method")
        headers = config.get("headers") or {}
        if not isinstance(headers, Mapping):
            raise OptionError("headers must be a mapping of header names to values", "headers")
        self.headers = {str(k): flat_value(v) for k, v in headers.items()}
        self.body = str(config.get("body", "json"))
        if self.body not in ("json", "form"):
            raise OptionError("body must be json or form", "body")
        sign = config.get("sign")
        self.sign_secret: str | None = None
        self.sign_scheme = "standard"
        if sign is not None:
            if not isinstance(sign, Mapping) or not sign.get("secret"):
                raise OptionError("sign needs `secret:` (for example ${CRM_SIGNING_SECRET})", "sign")
            self.sign_secret = str(sign["secret"])
            self.sign_scheme = str(sign.get("scheme", "standard"))
            if self.sign_scheme not in SCHEMES:
                raise OptionError(f"sign.scheme must be one of {', '.join(sorted(SCHEMES))}", "sign")

    def encode(self, payload: Any) -> tuple[bytes, str]:
        if self.body == "form":
            items = payload.items() if isinstance(payload, Mapping) else [("value", payload)]
            return urlencode([(str(k), flat_value(v)) for k, v in items]).encode(), \
                "application/x-www-form-urlencoded"
        return json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode(), \
            "application/json"

    def signature_headers(self, content: bytes, msg_id: str, now: float) -> dict[str, str]:
        if self.sign_secret is None:
            return {}
        key = self.sign_secret.encode()
        if self.sign_scheme == "hmac-sha256":
            return {"X-Relay-Signature": "sha256=" + hmac.new(key, content, hashlib.sha256).hexdigest()}
        if self.sign_secret.startswith("whsec_"):
            key = base64.b64decode(self.sign_secret.removeprefix("whsec_"))
        ts = str(int(now))
        digest = hmac.new(key, f"{msg_id}.{ts}.".encode() + content, hashlib.sha256).digest()
        return {
            "webhook-id": msg_id,
            "webhook-timestamp": ts,
            "webhook-signature": "v1," + base64.b64encode(digest).decode(),
        }

    def request_headers(self, content_type: str, idempotency_key: str) -> dict[str, str]:
        headers = {"User-Agent": USER_AGENT, "Content-Type": content_type,
                   "Idempotency-Key": idempotency_key}
        headers.update(self.headers)
        return headers

    def preview(self, payload: Any) -> dict[str, Any]:
        content, content_type = self.encode(payload)
        headers = self.request_headers(content_type, "<a new key per delivery>")
        if self.sign_secret is not None:
            headers.update({k: "<signed when sent>" for k in
                            self.signature_headers(content, "msg", time.time())})
        return {"type": self.type, "method": self.method, "url": self.url_template.for_payload(payload),
                "headers": headers,
                "body": payload if self.body == "json" else content.decode()}

    async def send(self, payload: Any, ctx: DeliveryContext) -> Sent:
        content, content_type = self.encode(payload)
        headers = self.request_headers(content_type, ctx.idempotency_key)
        headers.update(self.signature_headers(content, ctx.idempotency_key, time.time()))
        url = self.url_template.for_payload(payload)
        return await send_http(ctx, self.method, url, headers=headers, content=content)
