"""Sources: the names in ``/hooks/{source}``, each bound to a platform and its secrets.

``sources.yaml`` in the recipes folder maps each source name to a ``platform`` and
its secret(s) and options. A source whose entry has an error is kept, disabled,
with that error: requests to it are answered "not configured" (so the platform
retries later) instead of being forgotten.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from pathlib import Path

from ..errors import ConfigError, SourceNotConfigured, UnknownSource
from ..yamlfile import Located, Lookup, load, plain, resolve
from .base import Described, Platform, Request, Signed
from .hmac_scheme import GitHub, HmacPlatform, Shopify, Stripe, TicketTailor
from .openticket import OpenTicket
from .quicket import Quicket
from .standard_webhooks import StandardWebhooks
from .tikkl import Tikkl
from .tito import Tito
from .token import StaticToken
from .webconnex import Webconnex

__all__ = [
    "PLATFORMS", "Described", "Platform", "Request", "Signed", "Source", "Sources",
    "load_sources",
]

PLATFORMS: dict[str, type[Platform]] = {
    cls.name: cls
    for cls in (
        Tikkl, Tito, Quicket, OpenTicket, Webconnex, StandardWebhooks, HmacPlatform,
        StaticToken, Stripe, GitHub, Shopify, TicketTailor,
    )
}

SOURCE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
COMMON_KEYS = {"platform", "secret", "secrets", "token", "nonce", "description"}


@dataclasses.dataclass
class Source:
    name: str
    platform_name: str
    platform: Platform | None  # None when the entry has an error
    error: ConfigError | None = None
    line: int = 1

    @property
    def retry_status(self) -> int:
        cls = PLATFORMS.get(self.platform_name)
        return cls.retry_status if cls else 503

    def ready(self) -> Platform:
        """:raises SourceNotConfigured: when the entry has an error."""
        if self.platform is None:
            message = self.error.message if self.error else "it is not configured"
            raise SourceNotConfigured(
                f"The source {self.name!r} cannot accept webhooks yet: {message}"
            )
        return self.platform


class Sources(dict[str, Source]):
    """Loaded sources by name, plus errors of the file as a whole."""

    errors: list[ConfigError]

    def __init__(self) -> None:
        super().__init__()
        self.errors = []

    def get_source(self, name: str) -> Source:
        """:raises UnknownSource:"""
        source = self.get(name)
        if source is None:
            raise UnknownSource(
                f"There is no source named {name!r}. The webhook URL must end in one of the "
                "names in sources.yaml" + (f" ({', '.join(sorted(self))})." if self else ".")
            )
        return source

    def all_errors(self) -> list[ConfigError]:
        return self.errors + [s.error for s in self.values() if s.error]


def build_platform(name: str, entry: Located, lookup: Lookup) -> Platform:
    """Build one source's platform from its sources.yaml entry.

    :raises ConfigError: at the entry's line, naming the field.
    """
    node = entry.node
    if not isinstance(node, Mapping):
        raise entry.error("each source is a mapping with at least `platform:` and a secret")
    platform_name = node.get("platform")
    if platform_name is None:
        raise entry.error(f"`platform:` is missing; one of {', '.join(sorted(PLATFORMS))}")
    cls = PLATFORMS.get(str(platform_name))
    if cls is None:
        raise entry.error(
            f"unknown platform {platform_name!r}; use one of {', '.join(sorted(PLATFORMS))}",
            "platform",
        )
    unknown = set(map(str, node)) - COMMON_KEYS - set(cls.options)
    if unknown:
        key = sorted(unknown)[0]
        allowed = sorted(COMMON_KEYS | set(cls.options))
        raise entry.error(f"unknown option {key!r} for platform {cls.name}; allowed: {', '.join(allowed)}", key)

    secrets: list[str] = []
    for key in ("secrets", "secret", "token", "nonce"):
        if key not in node:
            continue
        raw = node[key]
        values = raw if isinstance(raw, list) else [raw]
        for value in values:
            if not isinstance(value, (str, int)) or str(value) == "":
                raise entry.error("a secret must be a non-empty string", key)
            # Pasted secrets often carry a stray space or newline, and a header
            # value arrives stripped: strip here so that they can match.
            resolved = resolve(str(value), lookup, entry, key).strip()
            if not resolved:
                raise entry.error("this secret resolves to an empty value", key)
            secrets.append(resolved)
    if not secrets:
        raise entry.error(
            "no secret: add `secrets: [\"${NAME}\"]` (or `token:` for a URL token) and "
            "set NAME with `relay secret set NAME`"
        )
    options = {str(k): plain(v) for k, v in node.items() if str(k) in cls.options}
    try:
        return cls(secrets, options)
    except ConfigError as e:
        raise entry.error(e.message) from None


def load_sources(folder: Path, lookup: Lookup) -> Sources:
    """Read ``folder/sources.yaml``. Errors are kept, never raised, so relay starts."""
    sources = Sources()
    path = folder / "sources.yaml"
    display = str(path)
    if not path.exists():
        sources.errors.append(ConfigError(
            "there is no sources.yaml: relay needs it to know which platforms may send "
            "webhooks (see the README)", path=display, line=1))
        return sources
    try:
        data = load(path, display)
    except ConfigError as e:
        sources.errors.append(e)
        return sources
    if data is None:
        return sources
    if not isinstance(data, Mapping):
        sources.errors.append(ConfigError(
            "sources.yaml must map source names to their settings", path=display, line=1))
        return sources
    top = Located(data, display)
    for raw_name in data:
        name = str(raw_name)
        entry = top.child(raw_name)
        line = top.error("", raw_name).line or 1
        node = data[raw_name]
        platform_name = str(node.get("platform", "")) if isinstance(node, Mapping) else ""
        if not SOURCE_NAME.match(name):
            error = top.error(
                "a source name may use letters, digits, '-', '_' and '.', up to 64 characters",
                raw_name)
            sources[name] = Source(name, platform_name, None, error, line)
            continue
        try:
            platform = build_platform(name, entry, lookup)
        except ConfigError as e:
            sources[name] = Source(name, platform_name, None, e, line)
        else:
            sources[name] = Source(name, platform.name, platform, None, line)
    return sources
