"""ASGI entry for uvicorn workers: ``uvicorn --factory server.asgi:app_from_env``.

Each worker process builds its own settings from the environment the ``serve`` command prepared.
"""

from __future__ import annotations

from litestar import Litestar

from server.app import create_app
from server.logs import configure_logging
from server.settings import Settings


def app_from_env() -> Litestar:
    """Settings from ``PACS_MASK_*``, then the app."""
    settings = Settings.from_env()
    configure_logging(settings.log_level)
    return create_app(settings)
