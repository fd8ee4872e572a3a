"""The one exception tree of relay.

Every error a user can meet is a ``RelayError``: its ``status`` is the HTTP status it
becomes at the HTTP boundary, and its message says, in plain words, what happened and
what to do. Errors turn into responses or CLI output only at those boundaries
(``relay.ingest``, ``relay.cli``); everything below raises.
"""

from __future__ import annotations


class RelayError(Exception):
    """Base of every error relay raises on purpose."""

    status = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)

    @property
    def message(self) -> str:
        return str(self.args[0]) if self.args else ""

    @message.setter
    def message(self, value: str) -> None:
        # Kept in args, so a reworded error (secrets redacted, a vendor's words added)
        # prints the same everywhere.
        self.args = (value, *self.args[1:])


# --- ingest: a request that cannot become an event ------------------------------


class UnknownSource(RelayError):
    status = 404


class SourceNotConfigured(RelayError):
    """The source exists but cannot verify anything (for example a secret is unset).

    503 makes the platform retry later, once the owner has fixed the configuration.
    """

    status = 503


class VerificationError(RelayError):
    """A request is not proven genuine: every subclass answers 401."""

    status = 401


class SignatureMissing(VerificationError):
    pass


class SignatureMismatch(VerificationError):
    pass


class StaleTimestamp(VerificationError):
    pass


class BodyTooLarge(RelayError):
    status = 413


class BadBody(RelayError):
    status = 400


class StorageUnavailable(RelayError):
    """The event could not be committed; the platform should send it again."""

    status = 503


# --- configuration: sources.yaml and recipes ------------------------------------


class ConfigError(RelayError):
    """A problem in a YAML file, located at ``path:line`` where it is known."""

    status = 400

    def __init__(self, message: str, *, path: str | None = None, line: int | None = None):
        super().__init__(message)
        self.path = path
        self.line = line

    def located(self) -> str:
        """``FILE:LINE: message``, the form ``relay check`` prints."""
        if self.path is None:
            return self.message
        return f"{self.path}:{self.line or 1}: {self.message}"

    def __str__(self) -> str:
        return self.located()


class SecretMissing(ConfigError):
    pass


# --- mapping: applying a recipe to an event -------------------------------------


class MappingError(RelayError):
    """A recipe's expression or template failed on a particular event."""

    status = 422


# --- delivery -------------------------------------------------------------------


class DeliveryFailed(RelayError):
    """One delivery attempt failed.

    ``retryable`` says whether trying again later can help (connection errors,
    timeouts, 408/425/429/5xx); ``retry_after`` is the wait the destination asked
    for, in seconds, if it said; ``status_code`` and ``response_body`` keep what the
    destination answered, so the user can see why.
    """

    status = 502

    def __init__(
        self,
        message: str,
        *,
        retryable: bool,
        retry_after: float | None = None,
        status_code: int | None = None,
        response_body: str | None = None,
        response_headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.retry_after = retry_after
        self.status_code = status_code
        self.response_body = response_body
        self.response_headers = response_headers or {}


class NotFound(RelayError):
    status = 404
