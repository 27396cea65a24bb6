"""Connecting to a server: the bundled one as a child process, or a configured URL.

The child is launched on the GUI thread (a fork/exec, milliseconds; doing it there lets Linux tie its
life to the app's main thread) and waited for in a worker. A configured server is checked with
``/health`` in a worker too. The API client is handed out through :attr:`Connection.connected`.
"""

from __future__ import annotations

import logging
from urllib.parse import urlparse

from PySide6.QtCore import QObject, Signal

from pacs_mask_desktop.core.api_client import ApiClient, ApiError
from pacs_mask_desktop.core.embedded import EmbeddedServer, EmbeddedServerError
from pacs_mask_desktop.core.paths import DEFAULT_SERVER, NoToken, ServerTarget, resolve_server
from pacs_mask_desktop.core.retry import RetryPolicy
from pacs_mask_desktop.ui.formatting import failure_text
from pacs_mask_desktop.ui.settings import ServerConfig
from pacs_mask_desktop.ui.workers import TaskRunner, WorkContext, WorkFailure

log = logging.getLogger(__name__)


def preferred_port() -> int:
    """The bundled server's usual port (the CLI's default URL), used when it is free."""
    return urlparse(DEFAULT_SERVER).port or 8765


def _check_remote(_context: WorkContext, config: ServerConfig) -> tuple[ApiClient, ServerTarget]:
    try:
        target = resolve_server(config.url, config.token or None)
    except NoToken as exc:
        raise ValueError(str(exc)) from None
    api = ApiClient(target.url, target.token, attempts=2, policy=config.policy)
    try:
        api.health()
        api.list_annotations("__connection_check__")  # proves the token works
    except Exception:
        api.close()
        raise
    return api, target


def _wait_embedded(
    context: WorkContext, server: EmbeddedServer, policy: RetryPolicy
) -> tuple[ApiClient, ServerTarget]:
    target = server.wait_ready(cancel=context.cancel)
    return ApiClient(target.url, target.token, policy=policy), target


class Connection(QObject):
    """Owns the API client and, in the embedded mode, the bundled server process."""

    connected = Signal(object)  # ApiClient
    failed = Signal(str)
    starting = Signal(str)

    def __init__(self, runner: TaskRunner, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._runner = runner
        self.api: ApiClient | None = None
        self.target: ServerTarget | None = None
        self.config = ServerConfig()
        self.embedded: EmbeddedServer | None = None
        self._serial = 0

    @property
    def url(self) -> str:
        """The connected server's URL ('' before connecting)."""
        return self.target.url if self.target is not None else ""

    @property
    def is_embedded(self) -> bool:
        """True when talking to the bundled server."""
        return self.config.embedded

    def connect_to(self, config: ServerConfig) -> None:
        """(Re)connect: stop what was there, then start the bundled server or check the URL."""
        self._disconnect()
        self.config = config
        self._serial += 1
        serial = self._serial
        if config.embedded:
            self.embedded = EmbeddedServer(preferred_port=preferred_port())
            try:
                self.embedded.launch()
            except EmbeddedServerError as exc:
                self.failed.emit(str(exc))
                return
            self.starting.emit(f"Starting the bundled server at {self.embedded.url}…")
            self._runner.start(
                _wait_embedded,
                self.embedded,
                config.policy,
                on_result=lambda answer: self._on_ready(serial, answer),
                on_error=lambda failure: self._on_failed(serial, failure),
                name="bundled server",
            )
        else:
            self.starting.emit(f"Connecting to {config.url}…")
            self._runner.start(
                _check_remote,
                config,
                on_result=lambda answer: self._on_ready(serial, answer),
                on_error=lambda failure: self._on_failed(serial, failure),
                name="connect",
            )

    def _on_ready(self, serial: int, answer: tuple[ApiClient, ServerTarget]) -> None:
        api, target = answer
        if serial != self._serial:
            api.close()
            return
        self.api, self.target = api, target
        log.info("connected to %s (%s)", target.url, "bundled" if self.is_embedded else "configured")
        self.connected.emit(api)

    def _on_failed(self, serial: int, failure: WorkFailure) -> None:
        if serial != self._serial:
            return
        if isinstance(failure.error, ApiError | EmbeddedServerError | ValueError | OSError):
            log.warning("connection failed: %s", failure_text(failure))
            log.debug("details:\n%s", failure.traceback)
        else:
            log.error("connection failed:\n%s", failure.traceback)
        self.failed.emit(failure_text(failure))

    def _disconnect(self) -> None:
        if self.api is not None:
            self.api.close()
        self.api = self.target = None
        if self.embedded is not None:
            self.embedded.stop()
            self.embedded = None

    def shutdown(self) -> None:
        """App closing: close the client and stop the bundled server (terminate, then kill)."""
        self._serial += 1
        self._disconnect()
