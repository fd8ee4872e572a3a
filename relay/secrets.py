"""Named secrets, encrypted at rest, and the ``${NAME}`` lookup that recipes use.

Values are encrypted with Fernet (AES-128-CBC + HMAC-SHA256, from ``cryptography``)
under a key taken from ``RELAY_SECRET_KEY`` or, when that is unset, generated once
into ``<data>/secret.key``. A ``${NAME}`` reference is looked up in the store first,
then in the environment, so a deployment can use either.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
from collections.abc import Mapping
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken

from .errors import ConfigError
from .settings import Settings
from .store import Store

NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")


def load_key(settings: Settings) -> bytes:
    """The Fernet key: derived from RELAY_SECRET_KEY, else read or made in the data folder."""
    if settings.secret_key:
        digest = hashlib.sha256(settings.secret_key.encode("utf-8")).digest()
        return base64.urlsafe_b64encode(digest)
    path = Path(settings.data) / "secret.key"
    if path.exists():
        return path.read_bytes().strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    key = Fernet.generate_key()
    # Created with 0600 from the start: never readable by others, not even briefly.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key + b"\n")
    return key


class SecretStore:
    """Encrypted named secrets in the database, plus the environment as a fallback."""

    def __init__(self, store: Store | None, settings: Settings,
                 environ: Mapping[str, str] | None = None):
        """``store`` None means "environment only" (no database yet)."""
        self.store = store
        self.settings = settings
        self.environ = os.environ if environ is None else environ
        self._fernet: Fernet | None = None

    @property
    def fernet(self) -> Fernet:
        # Loaded on first use, so reading a database without stored secrets never
        # creates a key file as a side effect.
        if self._fernet is None:
            self._fernet = Fernet(load_key(self.settings))
        return self._fernet

    def _store(self) -> Store:
        if self.store is None:
            raise ConfigError("There is no database yet: start relay once, or pass --db.")
        return self.store

    @staticmethod
    def check_name(name: str) -> None:
        """:raises ConfigError: unless the name is usable as ``${NAME}``."""
        if not NAME.match(name):
            raise ConfigError(
                f"{name!r} cannot be a secret name: use letters, digits and _, "
                "starting with a letter or _ (for example TITO_TOKEN)."
            )

    def set(self, name: str, value: str) -> None:
        self.check_name(name)
        if value == "":
            raise ConfigError("A secret cannot be empty.")
        self._store().put_secret(name, self.fernet.encrypt(value.encode("utf-8")))

    def delete(self, name: str) -> bool:
        return self._store().delete_secret(name)

    def names(self) -> list[dict[str, object]]:
        return self._store().secret_names() if self.store else []

    def stamp(self) -> tuple[int, float]:
        """Changes whenever a secret is set or deleted (for reloading)."""
        if self.store is None:
            return (0, 0.0)
        row = self.store.one("SELECT COUNT(*) AS n, COALESCE(MAX(updated_at), 0) AS t FROM secrets")
        return (int(row["n"]), float(row["t"])) if row else (0, 0.0)

    def lookup(self, name: str) -> str | None:
        """The secret's value from the store, else the environment, else None.

        :raises ConfigError: when the stored value cannot be decrypted (wrong key).
        """
        token = self.store.get_secret(name) if self.store else None
        if token is not None:
            try:
                return self.fernet.decrypt(token).decode("utf-8")
            except InvalidToken:
                raise ConfigError(
                    f"The stored secret {name} cannot be decrypted: RELAY_SECRET_KEY (or "
                    "data/secret.key) is not the key it was saved with. Restore that key, or "
                    f"set the secret again with `relay secret set {name}`."
                ) from None
        value = self.environ.get(name)
        return value if value else None
