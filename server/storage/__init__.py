"""Storage backends behind one seam; :func:`create_storage` picks one by the settings' name."""

from __future__ import annotations

from typing import TYPE_CHECKING

from server.storage.base import ObjectInfo, PresignedRequest, Storage, StorageError, Usage

if TYPE_CHECKING:
    from server.settings import Settings

__all__ = ["ObjectInfo", "PresignedRequest", "Storage", "StorageError", "Usage", "create_storage"]


def create_storage(settings: Settings, *, public_url: str, signing_key: bytes) -> Storage:
    """The backend named by ``PACS_MASK_STORAGE``: ``local`` (default) or ``s3``."""
    if settings.storage == "s3":
        from server.storage.s3 import S3Storage

        return S3Storage.from_settings(settings)
    from server.storage.local import LocalStorage

    return LocalStorage(settings.storage_root, public_url=public_url, signing_key=signing_key)
