"""A real keyring backend that keeps passwords in memory: it stands in for the OS credential store in tests
(installed with ``keyring.set_keyring``, exactly where the OS's backend would be)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import keyring
from keyring.backend import KeyringBackend
from keyring.errors import PasswordDeleteError, PasswordSetError


class MemoryKeyring(KeyringBackend):
    """Passwords in a dict, keyed by (service, user name)."""

    priority = 1  # keyring declares it a class property; a plain number works the same

    def __init__(self) -> None:
        super().__init__()
        self.items: dict[tuple[str, str], str] = {}

    def get_password(self, service: str, username: str) -> str | None:
        """The stored password or ``None``."""
        return self.items.get((service, username))

    def set_password(self, service: str, username: str, password: str) -> None:
        """Store (or replace) a password."""
        self.items[(service, username)] = password

    def delete_password(self, service: str, username: str) -> None:
        """Remove a password; ``PasswordDeleteError`` when there is none, as real backends do."""
        try:
            del self.items[(service, username)]
        except KeyError:
            raise PasswordDeleteError(username) from None


class RefusingKeyring(MemoryKeyring):
    """A keyring that exists but refuses to store (a locked keychain, a denied prompt)."""

    def set_password(self, service: str, username: str, password: str) -> None:
        """Always refuses."""
        raise PasswordSetError("the keyring is locked")


@contextmanager
def installed(backend: KeyringBackend) -> Iterator[KeyringBackend]:
    """Make ``backend`` the process's keyring for a while, then put the previous one back."""
    previous = keyring.get_keyring()
    keyring.set_keyring(backend)
    try:
        yield backend
    finally:
        keyring.set_keyring(previous)
