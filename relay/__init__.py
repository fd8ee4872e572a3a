"""relay: a self-hosted webhook relay for ticketing platforms."""

from .app import create_app
from .settings import Settings

__all__ = ["Settings", "create_app"]
