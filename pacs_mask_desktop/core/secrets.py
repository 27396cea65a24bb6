"""The desktop app's secrets (API tokens, PACS passwords), kept in the OS keyring, never in a settings file.

The keyring is the ``keyring`` package's view of the OS credential store: Windows Credential Manager,
the macOS Keychain, or a Secret Service (GNOME Keyring, KWallet) on Linux. Each token is stored under
the service :data:`SERVICE` with the server URL as the user name, so switching servers keeps each one's
token.

Where no keyring exists (a Linux machine without a Secret Service, e.g. a minimal or remote session), the
token is **kept only for this session**: in this process's memory, used until the app closes, never
written to disk. The user enters it again at the next start, or the clinic's IT sets ``PACS_MASK_TOKEN``
(which the app reads first) in the session environment. :data:`NO_KEYRING_NOTICE` says so to the user.

PACS passwords are kept the same way under their own service :data:`PACS_SERVICE` (see
:func:`pacs_password_store`), so a PACS and a mask server at the same URL never overwrite each other's
secret. Tokens saved in plain text by earlier versions (``server/token`` in the settings file) are moved into the
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
"""The keyring service name every API token is stored under (the user name is the server URL)."""
PACS_SERVICE = "pacs-mask-upload-pacs"
"""The keyring service name of PACS passwords (the user name is the PACS URL). Earlier versions kept them
under :data:`SERVICE`; :func:`pacs_password_store` still finds those."""

NO_KEYRING_NOTICE = (
    "No system keyring is available on this computer, so the API token is kept only for this session: "
    "it is not saved, and you will be asked for it again at the next start. To keep it, install a "
    "keyring service (e.g. GNOME Keyring or KWallet), or have IT set PACS_MASK_TOKEN for your session."
)
PACS_NO_KEYRING_NOTICE = (
    "No system keyring is available on this computer, so the PACS password is kept only for this session: "
    "it is not saved, and you will be asked for it again at the next start. To keep it, install a keyring "
    "service (e.g. GNOME Keyring or KWallet), or have IT set PACS_MASK_DICOMWEB_PASSWORD for your session."
)

# (service, url) -> secret of this process when no keyring exists (never written anywhere)
_session: dict[tuple[str, str], str] = {}
_session_lock = threading.Lock()


def _usable(backend: KeyringBackend) -> bool:
    """False for keyring's stand-ins that store nothing (the fail backend, an empty chain)."""
    if isinstance(backend, fail.Keyring):
        return False
    if isinstance(backend, chainer.ChainerBackend):
        return bool(backend.backends)
    return True


class TokenStore:
    """Read, save and forget secrets per URL under one keyring service (the module docstring says where they
    go when no keyring exists). ``legacy_service`` is read when nothing is stored under ``service``; a secret
    found there is copied to ``service`` (and left where it was: it may equally be another secret's entry)."""

    def __init__(
        self,
        backend: KeyringBackend | None = None,
        *,
        service: str = SERVICE,
        legacy_service: str | None = None,
        no_keyring_notice: str = NO_KEYRING_NOTICE,
    ) -> None:
        self._backend = backend
        self.service = service
        self._legacy_service = legacy_service
        self._no_keyring_notice = no_keyring_notice

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
            return (
                f"Tokens and passwords are kept in the system keyring ({self.backend.name}), not in a file."
            )
        return self._no_keyring_notice

    def get(self, url: str) -> str | None:
        """The token saved for ``url``, or ``None``."""
        with _session_lock:
            if (self.service, url) in _session:
                return _session[(self.service, url)]
        if not self.available():
            return None
        try:
            secret = self.backend.get_password(self.service, url)
            if secret is None and self._legacy_service is not None:
                secret = self.backend.get_password(self._legacy_service, url)
                if secret is not None:
                    self.backend.set_password(self.service, url, secret)
                    log.info("moved a saved secret to the keyring service %s", self.service)
            return secret
        except KeyringError as exc:
            log.warning("cannot read a secret from the keyring (%s): %s", self.service, exc)
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
                self.backend.set_password(self.service, url, token)
            except KeyringError as exc:
                log.warning("cannot store a secret in the keyring (%s): %s", self.service, exc)
                notice = f"The system keyring refused to store it ({exc}); it is kept only for this session."
            else:
                with _session_lock:
                    _session.pop((self.service, url), None)
                return None
        else:
            notice = self._no_keyring_notice
        with _session_lock:
            _session[(self.service, url)] = token
        return notice

    def forget(self, url: str) -> None:
        """Remove the secret of ``url`` from the keyring and from this session."""
        with _session_lock:
            _session.pop((self.service, url), None)
        if not self.available():
            return
        try:
            self.backend.delete_password(self.service, url)
        except PasswordDeleteError:
            pass  # nothing was stored
        except KeyringError as exc:
            log.warning("cannot remove a secret from the keyring (%s): %s", self.service, exc)


def pacs_password_store(backend: KeyringBackend | None = None) -> TokenStore:
    """The store of PACS passwords (service :data:`PACS_SERVICE`, user name the PACS URL without a trailing
    slash), shared by the desktop's Settings and ``pacs-mask``. It still finds a password an earlier version
    kept under the API-token service, so nobody has to type it again after an upgrade."""
    return TokenStore(
        backend, service=PACS_SERVICE, legacy_service=SERVICE, no_keyring_notice=PACS_NO_KEYRING_NOTICE
    )
