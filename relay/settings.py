"""relay's settings: one record per setting, read from flags or the environment.

Each ``Setting`` has its environment name, default, parser and help text. The README
documents every one of them (a test checks), and ``Settings.from_env`` validates
them all at start-up so a typo names the variable instead of failing later.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from .errors import ConfigError
from .outbound import parse_networks


def _size(text: str) -> int:
    """Parse ``1048576``, ``512KiB``, ``1MiB``, ``2MB`` into bytes."""
    t = text.strip().lower().replace(" ", "")
    units = {"kib": 1024, "kb": 1000, "mib": 1024**2, "mb": 1000**2, "gib": 1024**3, "gb": 1000**3}
    for unit, factor in units.items():
        if t.endswith(unit):
            return int(float(t[: -len(unit)]) * factor)
    if t.endswith("k"):
        return int(float(t[:-1]) * 1024)
    if t.endswith("m"):
        return int(float(t[:-1]) * 1024**2)
    return int(t)


def _duration(text: str) -> float:
    """Parse ``30``, ``30s``, ``5m``, ``24h``, ``7d`` into seconds."""
    t = text.strip().lower()
    factors = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}
    for unit in ("ms", "s", "m", "h", "d"):
        if t.endswith(unit):
            return float(t[: -len(unit)]) * factors[unit]
    return float(t)


def _log_format(text: str) -> str:
    value = text.strip().lower()
    if value not in ("text", "json"):
        raise ValueError(text)
    return value


@dataclasses.dataclass(frozen=True)
class Setting:
    name: str  # attribute on Settings
    env: str
    default: Any
    parse: Callable[[str], Any]
    help: str


SETTINGS: tuple[Setting, ...] = (
    Setting("recipes", "RELAY_RECIPES", "./recipes", Path,
            "Folder of recipe files and sources.yaml."),
    Setting("db", "RELAY_DB", "./relay.db", Path,
            "The SQLite database file (events, deliveries, secrets)."),
    Setting("data", "RELAY_DATA", "./data", Path,
            "Folder for files relay writes: CSV outputs and the generated secret key."),
    Setting("host", "RELAY_HOST", "127.0.0.1", str,
            "Address to listen on. Use 0.0.0.0 to accept connections from other machines."),
    Setting("port", "RELAY_PORT", 8000, int, "Port to listen on."),
    Setting("max_body", "RELAY_MAX_BODY", 1024 * 1024, _size,
            "Largest webhook body accepted, in bytes (suffixes KiB, MiB allowed)."),
    Setting("secret_key", "RELAY_SECRET_KEY", None, str,
            "Key that encrypts stored secrets. If unset, one is generated once into "
            "the data folder (secret.key)."),
    Setting("delivery_timeout", "RELAY_DELIVERY_TIMEOUT", 30.0, _duration,
            "How long one delivery attempt may take before it counts as failed and is retried."),
    Setting("retry_base", "RELAY_RETRY_BASE", 5.0, _duration,
            "First retry delay; each later retry waits about twice as long (with jitter)."),
    Setting("retry_max_delay", "RELAY_RETRY_MAX_DELAY", 3600.0, _duration,
            "Longest wait between two attempts of one delivery."),
    Setting("max_age", "RELAY_MAX_AGE", 86400.0, _duration,
            "A delivery still failing this long after it was queued is given up as dead."),
    Setting("concurrency", "RELAY_CONCURRENCY", 16, int,
            "How many deliveries may be in flight at once."),
    Setting("timestamp_tolerance", "RELAY_TIMESTAMP_TOLERANCE", 300.0, _duration,
            "How far a signed timestamp may be from now before the request is refused."),
    Setting("retention", "RELAY_RETENTION", 30 * 86400.0, _duration,
            "How long events, their deliveries and rejections are kept (e.g. 30d). Events "
            "with a delivery still pending, or dead and not reviewed, are kept until it is."),
    Setting("max_db_size", "RELAY_MAX_DB_SIZE", 2 * 1024**3, _size,
            "When the database grows bigger than this (e.g. 2GiB), the oldest events that "
            "nothing needs any more are removed early, even within RELAY_RETENTION."),
    # Vendors' API addresses: settings so that tests and private deployments can
    # point elsewhere.
    Setting("google_sheets_url", "RELAY_GOOGLE_SHEETS_URL", "https://sheets.googleapis.com", str,
            "Google Sheets API base URL."),
    Setting("google_token_url", "RELAY_GOOGLE_TOKEN_URL", "", str,
            "Google OAuth token URL; empty means the token_uri in the service-account key."),
    Setting("hubspot_url", "RELAY_HUBSPOT_URL", "https://api.hubapi.com", str,
            "HubSpot API base URL."),
    Setting("mailchimp_url", "RELAY_MAILCHIMP_URL", "https://{dc}.api.mailchimp.com/3.0", str,
            "Mailchimp API base URL; {dc} is the data centre from the API key's suffix."),
    Setting("airtable_url", "RELAY_AIRTABLE_URL", "https://api.airtable.com/v0", str,
            "Airtable API base URL."),
    Setting("pipedrive_url", "RELAY_PIPEDRIVE_URL", "https://api.pipedrive.com/api/v2", str,
            "Pipedrive API base URL (or https://<company>.pipedrive.com/api/v2)."),
    Setting("metrics_token", "RELAY_METRICS_TOKEN", None, str,
            "When set, GET /metrics needs the header `Authorization: Bearer <token>`; "
            "when unset, /metrics is public like /healthz."),
    Setting("log_format", "RELAY_LOG_FORMAT", "text", _log_format,
            "How `relay serve` logs: text (readable lines) or json (one JSON object a line)."),
    Setting("forwarded_allow_ips", "RELAY_FORWARDED_ALLOW_IPS", "", str,
            "Addresses of reverse proxies whose X-Forwarded-For/-Proto headers are trusted "
            "(comma-separated, or * for any). Empty: forwarded headers are ignored."),
    Setting("allow_networks", "RELAY_ALLOW_NETWORKS", "", str,
            "Non-public addresses deliveries may go to: `loopback` (this machine), `private` "
            "(10.x, 172.16-31.x, 192.168.x, 100.64/10, fc00::/7) and/or networks such as "
            "192.168.1.0/24, comma-separated. Empty: only public internet addresses. Cloud "
            "metadata and link-local addresses (169.254.0.0/16, fd00:ec2::254) stay refused "
            "unless named as a network."),
    Setting("admin_password", "RELAY_ADMIN_PASSWORD", None, str,
            "Password for the web UI's first account, `admin`, created at the first start "
            "when there is no account yet. Unset: relay makes one up and prints it once."),
    Setting("public_url", "RELAY_PUBLIC_URL", "", str,
            "The address webhook senders use, e.g. https://relay.example.com (behind a proxy). "
            "Empty means http://<host>:<port>."),
)


@dataclasses.dataclass
class Settings:
    recipes: Path = Path("./recipes")
    db: Path = Path("./relay.db")
    data: Path = Path("./data")
    host: str = "127.0.0.1"
    port: int = 8000
    max_body: int = 1024 * 1024
    secret_key: str | None = None
    delivery_timeout: float = 30.0
    retry_base: float = 5.0
    retry_max_delay: float = 3600.0
    max_age: float = 86400.0
    concurrency: int = 16
    timestamp_tolerance: float = 300.0
    retention: float = 30 * 86400.0
    max_db_size: int = 2 * 1024**3
    google_sheets_url: str = "https://sheets.googleapis.com"
    google_token_url: str = ""
    hubspot_url: str = "https://api.hubapi.com"
    mailchimp_url: str = "https://{dc}.api.mailchimp.com/3.0"
    airtable_url: str = "https://api.airtable.com/v0"
    pipedrive_url: str = "https://api.pipedrive.com/api/v2"
    metrics_token: str | None = None
    log_format: str = "text"
    forwarded_allow_ips: str = ""
    allow_networks: str = ""
    admin_password: str | None = None
    #: where senders reach relay; ``validate`` fills it from host and port when empty
    public_url: str = ""

    @classmethod
    def from_env(
        cls, environ: Mapping[str, str] | None = None, **overrides: Any
    ) -> Settings:
        """Build settings from ``environ`` (default ``os.environ``); overrides win.

        Overrides whose value is ``None`` are ignored, so click options that were
        not given fall back to the environment.

        :raises ConfigError: naming the variable, when a value does not parse.
        """
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for setting in SETTINGS:
            raw = env.get(setting.env)
            if raw is None or raw == "":
                values[setting.name] = setting.default
                if isinstance(setting.default, str) and setting.parse is Path:
                    values[setting.name] = Path(setting.default)
                continue
            try:
                values[setting.name] = setting.parse(raw)
            except (ValueError, TypeError):
                raise ConfigError(
                    f"{setting.env}={raw!r} is not valid: {setting.help}"
                ) from None
        for key, value in overrides.items():
            if value is not None:
                values[key] = value
        settings = cls(**values)
        settings.validate()
        return settings

    def validate(self) -> None:
        """:raises ConfigError: when a value is out of range."""
        if self.max_body < 1:
            raise ConfigError("RELAY_MAX_BODY must be at least 1 byte.")
        if not 0 < self.port < 65536:
            raise ConfigError(f"RELAY_PORT must be between 1 and 65535, not {self.port}.")
        if self.concurrency < 1:
            raise ConfigError("RELAY_CONCURRENCY must be at least 1.")
        for name in ("delivery_timeout", "retry_base", "retry_max_delay", "max_age",
                     "retention", "max_db_size"):
            if getattr(self, name) <= 0:
                env = next(s.env for s in SETTINGS if s.name == name)
                raise ConfigError(f"{env} must be greater than zero.")
        self.public_url = _public_url(self.public_url, self.host, self.port)
        parse_networks(self.allow_networks)  # raises ConfigError naming the bad part


def _public_url(url: str, host: str, port: int) -> str:
    """The base address without a trailing slash; ``http://host:port`` when unset.

    :raises ConfigError: unless it is an http(s) address without a path or query.
    """
    if not url.strip():
        return f"http://{host}:{port}"
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.path not in ("", "/") \
            or parts.query or parts.fragment:
        raise ConfigError(
            f"RELAY_PUBLIC_URL={url!r} is not valid: use the address senders reach relay at, "
            "http:// or https:// and a host name only, e.g. https://relay.example.com")
    return f"{parts.scheme}://{parts.netloc}"
