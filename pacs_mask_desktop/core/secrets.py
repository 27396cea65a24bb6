"""The desktop app's API token, kept in the operating system's keyring, never in a settings file.

The keyring is the ``keyring`` package's view of the OS credential store: Windows Credential Manager,
the macOS Keychain, or a Secret Service (GNOME Keyring, KWallet) on Linux. Each token is stored under
the service :data:`SERVICE` with the server URL as the user name, so switching servers keeps each one's
token.

Where no keyring exists (a Linux machine without a Secret Service, e.g. a minimal or remote session), the
token is **kept only for this session**: in this process's memory, used until the app closes, never
written to disk. The user enters it again at the next start, or the clinic's IT sets ``PACS_MASK_TOKEN``
(which the app reads first) in the session environment. :data:`NO_KEYRING_NOTICE` says so to the user.

Tokens saved in plain text by earlier versions (``server/token`` in the settings file) are moved into the
keyring once by the settings layer (``ui/settings.py``) with :meth:`TokenStore.save`, then removed from
the file.
"""

from __future__ import annotations

import logging
import threading

import keyring
from keyring.backend import KeyringBackend
from keyring.backends import chainer, fail
from keyring.errors import KeyringError, PasswordDeleteError

log = logging.getLogger(__name__)

SERVICE = "pacs-mask-upload"
"""The keyring service name every token is stored under (the user name is the server URL)."""

NO_KEYRING_NOTICE = (
    "No system keyring is available on this computer, so the API token is kept only for this session: "
    "it is not saved, and you will be asked for it again at the next start. To keep it, install a "
    "keyring service (e.g. GNOME Keyring or KWallet), or have IT set PACS_MASK_TOKEN for your session."
)

_session: dict[str, str] = {}  # tokens of this process when no keyring exists (never written anywhere)
_session_lock = threading.Lock()


def _usable(backend: KeyringBackend) -> bool:
    """False for keyring's stand-ins that store nothing (the fail backend, an empty chain)."""
    if isinstance(backend, fail.Keyring):
        return False
    if isinstance(backend, chainer.ChainerBackend):
        return bool(backend.backends)
    return True


class TokenStore:
    """Read, save and forget API tokens per server URL (see the module docstring for the fallback)."""

    def __init__(self, backend: KeyringBackend | None = None) -> None:
        self._backend = backend

    @property
    def backend(self) -> KeyringBackend:
        """The keyring in use (``keyring``'s choice for this system unless one was given)."""
        return self._backend if self._backend is not None else keyring.get_keyring()

    def available(self) -> bool:
        """True when tokens are kept in a real keyring (and so survive a restart)."""
        return _usable(self.backend)

    def where(self) -> str:
        """One sentence for the Settings dialog: where a saved token goes."""
        if self.available():
            return f"The API token is kept in the system keyring ({self.backend.name}), not in a file."
        return NO_KEYRING_NOTICE

    def get(self, url: str) -> str | None:
        """The token saved for ``url``, or ``None``."""
        with _session_lock:
            if url in _session:
                return _session[url]
        if not self.available():
            return None
        try:
            return self.backend.get_password(SERVICE, url)
        except KeyringError as exc:
            log.warning("cannot read the API token from the keyring: %s", exc)
            return None

    def save(self, url: str, token: str) -> str | None:
        """Keep ``token`` for ``url`` (an empty token forgets it).

        Returns ``None`` when it is in the keyring, or the notice to show when it could only be kept for
        this session (no keyring, or the keyring refused).
        """
        if not token:
            self.forget(url)
            return None
        if self.available():
            try:
                self.backend.set_password(SERVICE, url, token)
            except KeyringError as exc:
                log.warning("cannot store the API token in the keyring: %s", exc)
                notice = (
                    f"The system keyring refused the API token ({exc}); it is kept only for this session."
                )
            else:
                with _session_lock:
                    _session.pop(url, None)
                return None
        else:
            notice = NO_KEYRING_NOTICE
        with _session_lock:
            _session[url] = token
        return notice

    def forget(self, url: str) -> None:
        """Remove the token of ``url`` from the keyring and from this session."""
        with _session_lock:
            _session.pop(url, None)
        if not self.available():
            return
        try:
            self.backend.delete_password(SERVICE, url)
        except PasswordDeleteError:
            pass  # nothing was stored
        except KeyringError as exc:
            log.warning("cannot remove the API token from the keyring: %s", exc)
