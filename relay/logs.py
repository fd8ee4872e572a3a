"""How ``relay serve`` logs: readable lines or one JSON object a line, secrets hidden.

Every handler carries a ``SecretFilter``: any secret value relay holds (the
sources', the recipes' ``${NAME}`` values and the stored secrets) is replaced by
``[secret]`` in the message, its arguments, ``extra`` fields and tracebacks, so
that no log line can leak one, whoever logged it.
"""

from __future__ import annotations

import datetime
import json
import logging
import sys
from collections.abc import Iterable
from typing import Any, TextIO

from .recipes import redact

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

# What every LogRecord has; anything else on a record came from ``extra=``
# (except uvicorn's copy of each message with terminal colour codes).
_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName", "color_message"}


def extra_fields(record: logging.LogRecord) -> dict[str, Any]:
    fields = vars(record)
    # A set difference first: most records have no extra field at all (one per webhook).
    return {k: fields[k] for k in fields.keys() - _STANDARD if not k.startswith("_")}


class SecretFilter(logging.Filter):
    """Replaces every known secret value by ``[secret]`` in a record."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        self.secrets: frozenset[str] = frozenset(secrets)

    def update(self, secrets: Iterable[str]) -> None:
        """Replace the known values (called at start and after every reload)."""
        self.secrets = frozenset(s for s in secrets if s)

    def hide(self, value: Any) -> Any:
        if isinstance(value, str):
            return redact(value, self.secrets)
        if isinstance(value, dict):
            return {k: self.hide(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [self.hide(v) for v in value]
        return value

    def filter(self, record: logging.LogRecord) -> bool:
        if not self.secrets:
            return True
        record.msg = redact(record.getMessage(), self.secrets)
        record.args = None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text, self.secrets)
        if record.stack_info:
            record.stack_info = redact(record.stack_info, self.secrets)
        for key, value in extra_fields(record).items():
            setattr(record, key, self.hide(value))
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object a line: time (ISO 8601, UTC), level, logger, message, extras."""

    def format(self, record: logging.LogRecord) -> str:
        when = datetime.datetime.fromtimestamp(record.created, datetime.UTC)
        line: dict[str, Any] = {
            "time": when.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in extra_fields(record).items():
            line.setdefault(key, value)
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            line["exception"] = record.exc_text
        if record.stack_info:
            line["stack"] = record.stack_info
        return json.dumps(line, ensure_ascii=False, default=str)


def setup_logging(log_format: str, stream: TextIO | None = None) -> SecretFilter:
    """Route every logger (relay's, uvicorn's) to one handler in ``log_format``.

    Returns the handler's ``SecretFilter``, to be told the secret values.
    """
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT))
    secrets = SecretFilter()
    handler.addFilter(secrets)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    # Neither format shows where a line was logged from, nor the thread or process:
    # not working them out saves most of the cost of a line (a line per webhook).
    # (The logging docs' "Optimization" section names these switches.)
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access", "uvicorn.asgi"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
    # httpx logs every request URL at INFO; some URLs are secrets (a Slack webhook).
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.captureWarnings(True)
    return secrets
