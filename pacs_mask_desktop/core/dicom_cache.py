"""A size-bounded, least-recently-used disk cache of DICOM instances retrieved from the PACS.

Layout: ``ROOT/<SeriesInstanceUID>/<SOPInstanceUID>.dcm`` plus two small marker files per series:
``.used`` (its modification time is the series' last use) and ``.complete`` (written once every
instance of the series is in, so a second open needs no retrieval). Eviction removes whole series,
least recently used first, until the cache is under its size; the series being opened is never evicted.

Patient data at rest: directories are created 0700 and files 0600 whatever the umask, and UIDs are
checked before they become path components, so a PACS answering odd UIDs cannot write outside the cache.

The default root is ``<user cache dir>/dicom`` (``PACS_MASK_DICOM_CACHE_DIR`` overrides it) and the
default size 2 GiB (``PACS_MASK_DICOM_CACHE_MB``); the desktop Settings pass their own.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import threading
from collections.abc import Callable, Iterable
from pathlib import Path

import platformdirs

from pacs_mask_desktop.core.paths import APP_NAME, private_dir

DEFAULT_MAX_BYTES = 2 * 1024**3
_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")
_USED = ".used"
_COMPLETE = ".complete"


class CacheError(Exception):
    """A UID that cannot name a cache file, or a cache directory that cannot be used."""


def default_cache_root() -> Path:
    """``PACS_MASK_DICOM_CACHE_DIR``, else the platform's per-user cache dir plus ``dicom``."""
    configured = os.environ.get("PACS_MASK_DICOM_CACHE_DIR")
    if configured:
        return Path(configured)
    return Path(platformdirs.user_cache_dir(APP_NAME, appauthor=False)) / "dicom"


def default_max_bytes() -> int:
    """``PACS_MASK_DICOM_CACHE_MB`` in bytes, else :data:`DEFAULT_MAX_BYTES`."""
    configured = os.environ.get("PACS_MASK_DICOM_CACHE_MB")
    if not configured:
        return DEFAULT_MAX_BYTES
    try:
        megabytes = float(configured)
    except ValueError:
        raise CacheError(
            f"PACS_MASK_DICOM_CACHE_MB must be a number of megabytes, not {configured!r}"
        ) from None
    if megabytes <= 0:
        raise CacheError("PACS_MASK_DICOM_CACHE_MB must be positive")
    return int(megabytes * 1024 * 1024)


def _check_uid(uid: str, what: str) -> str:
    if not uid or len(uid) > 64 or not _UID.match(uid):
        raise CacheError(f"{what} {uid!r} is not a DICOM UID; refusing to use it as a cache path")
    return uid


class DicomCache:
    """Retrieved instances on disk, per series, bounded to ``max_bytes`` by LRU eviction of whole series.

    Thread-safe for one process: the desktop retrieves on a worker thread while the viewer reads paths.
    """

    def __init__(self, root: Path | str | None = None, max_bytes: int | None = None) -> None:
        self.root = Path(root) if root is not None else default_cache_root()
        self.max_bytes = max_bytes if max_bytes is not None else default_max_bytes()
        if self.max_bytes <= 0:
            raise CacheError("the DICOM cache size must be positive")
        self._lock = threading.Lock()
        private_dir(self.root)

    # --- one series ---------------------------------------------------------------------------------

    def series_dir(self, series_uid: str) -> Path:
        """The folder holding a series' instances (not created)."""
        return self.root / _check_uid(series_uid, "SeriesInstanceUID")

    def instance_path(self, series_uid: str, sop_uid: str) -> Path:
        """Where an instance is (or would be) cached."""
        return self.series_dir(series_uid) / f"{_check_uid(sop_uid, 'SOPInstanceUID')}.dcm"

    def cached(self, series_uid: str) -> dict[str, Path]:
        """``{SOPInstanceUID: path}`` of the instances of a series already in the cache."""
        folder = self.series_dir(series_uid)
        if not folder.is_dir():
            return {}
        return {p.stem: p for p in folder.glob("*.dcm")}

    def put(self, series_uid: str, sop_uid: str, write: Callable[[Path], None] | bytes) -> Path:
        """Store one instance atomically (0600) and return its path.

        ``write`` is the bytes, or a function that writes the file at the path it is given (for example
        ``dataset.save_as``); the file appears under its final name only once complete.
        """
        target = self.instance_path(series_uid, sop_uid)
        private_dir(target.parent)
        partial = target.with_name(f".{target.name}.{threading.get_ident()}.part")
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            if isinstance(write, bytes | bytearray):
                with os.fdopen(fd, "wb") as handle:
                    handle.write(write)
            else:
                os.close(fd)
                write(partial)
                partial.chmod(0o600)
            partial.replace(target)
        except BaseException:
            with contextlib.suppress(OSError):
                partial.unlink()
            raise
        return target

    def mark_used(self, series_uid: str) -> None:
        """Record that a series was used now (it becomes the last to be evicted)."""
        folder = self.series_dir(series_uid)
        private_dir(folder)
        marker = folder / _USED
        fd = os.open(marker, os.O_WRONLY | os.O_CREAT, 0o600)
        os.close(fd)
        os.utime(marker)

    def mark_complete(self, series_uid: str, sop_uids: Iterable[str]) -> None:
        """Record the full instance list of a series once every instance is cached."""
        folder = self.series_dir(series_uid)
        private_dir(folder)
        marker = folder / _COMPLETE
        fd = os.open(marker, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(sorted(sop_uids), handle)

    def complete_instances(self, series_uid: str) -> list[Path] | None:
        """The paths of a series marked complete whose files are all still there, else ``None``."""
        marker = self.series_dir(series_uid) / _COMPLETE
        try:
            expected = json.loads(marker.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        have = self.cached(series_uid)
        if not isinstance(expected, list) or any(uid not in have for uid in expected):
            return None
        return [have[uid] for uid in expected]

    def remove(self, series_uid: str) -> None:
        """Drop a series from the cache."""
        shutil.rmtree(self.series_dir(series_uid), ignore_errors=True)

    # --- the whole cache ----------------------------------------------------------------------------

    def size_bytes(self) -> int:
        """Bytes held by cached instances."""
        return sum(size for _uid, size, _used in self._series())

    def evict(self, keep: Iterable[str] = ()) -> list[str]:
        """Remove least recently used series until the cache fits ``max_bytes``; returns the removed UIDs.

        Series in ``keep`` (the one being opened) stay even if they alone exceed the bound.
        """
        keep_set = set(keep)
        removed: list[str] = []
        with self._lock:
            series = sorted(self._series(), key=lambda item: item[2])
            total = sum(size for _uid, size, _used in series)
            for uid, size, _used in series:
                if total <= self.max_bytes:
                    break
                if uid in keep_set:
                    continue
                shutil.rmtree(self.root / uid, ignore_errors=True)
                total -= size
                removed.append(uid)
        return removed

    def clear(self) -> None:
        """Remove every cached series."""
        for uid, _size, _used in self._series():
            shutil.rmtree(self.root / uid, ignore_errors=True)

    def _series(self) -> list[tuple[str, int, float]]:
        """``(series uid, bytes, last use)`` of every cached series."""
        found = []
        for folder in self.root.iterdir():
            if not folder.is_dir() or not _UID.match(folder.name):
                continue
            size = 0
            for path in folder.glob("*.dcm"):
                with contextlib.suppress(OSError):
                    size += path.stat().st_size
            try:
                used = (folder / _USED).stat().st_mtime
            except OSError:
                used = folder.stat().st_mtime
            found.append((folder.name, size, used))
        return found
