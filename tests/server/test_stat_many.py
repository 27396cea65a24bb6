"""``stat_many`` answers like ``stat`` for every key, on the local disk and on a real S3 server."""

from __future__ import annotations

import hashlib
from pathlib import Path

from server.storage.local import LocalStorage
from server.storage.s3 import S3Storage
from tests.server.test_s3_storage import put

PREFIX = "mask/7/0f0e0d0c-0b0a-4908-8706-050403020100/"


def _check(storage: S3Storage | LocalStorage, bodies: dict[str, bytes]) -> None:
    keys = [*bodies, PREFIX + "never-uploaded.png"]
    found = storage.stat_many(PREFIX, keys)
    assert found == [storage.stat(key) for key in keys]
    for key, info in zip(bodies, found, strict=False):
        assert info is not None
        assert (info.size, info.md5_hex) == (
            len(bodies[key]),
            hashlib.md5(bodies[key], usedforsecurity=False).hexdigest(),
        )
    assert found[-1] is None


def test_stat_many_on_s3(s3_storage: S3Storage) -> None:
    bodies = {f"{PREFIX}slice_{i:03d}.png": f"slice {i}".encode() * (i + 1) for i in range(25)}
    for key, body in bodies.items():
        put(s3_storage, key, body)
    put(s3_storage, "mask/7/other/unrelated.png", b"elsewhere")
    _check(s3_storage, bodies)


def test_stat_many_on_local_disk(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path, public_url="http://testserver.local", signing_key=b"k" * 32)
    bodies = {f"{PREFIX}slice_{i:03d}.png": f"slice {i}".encode() * (i + 1) for i in range(25)}
    for key, body in bodies.items():
        storage.write(key, [body])
    _check(storage, bodies)


def test_quick_listing_pages_and_decodes_keys_like_botocore(s3_storage: S3Storage) -> None:
    """The ElementTree listing ``complete`` uses: paged (7 keys a page here), keys that need quoting
    decoded, the same answer as the listing through botocore."""
    names = [f"slice_{i:03d}.png" for i in range(17)] + ["a b+c.png", "x%41y.png", "\u00e9t\u00e9.png"]
    for i, name in enumerate(names):
        put(s3_storage, PREFIX + name, f"body {i}".encode())
    put(s3_storage, "mask/7/other/unrelated.png", b"elsewhere")

    quick = s3_storage._quick_listing(PREFIX, page_size=7)

    assert quick is not None  # the quick path answered; it did not fall back
    assert quick == {info.key: info for info in s3_storage.list(PREFIX)}
    assert set(quick) == {PREFIX + name for name in names}


def test_quick_listing_falls_back_when_storage_refuses(s3_storage: S3Storage, monkeypatch) -> None:
    """An error answer (here: credentials the server does not know) leaves the listing to botocore,
    whose error is the one the caller sees."""
    from types import SimpleNamespace

    monkeypatch.setattr(
        s3_storage,
        "_frozen_credentials",
        lambda: SimpleNamespace(access_key="nobody", secret_key="x", token=None),
    )
    assert s3_storage._quick_listing(PREFIX) is None
