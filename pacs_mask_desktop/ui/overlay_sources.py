"""Where an overlay's label images come from: dropped mask files, or a stored group on the server.

Both sources answer ``load(slice_index) -> array | None`` and are called from the frame loader's
worker thread (reading a PNG or fetching bytes through ``ApiClient.view`` must not run on the GUI
thread). A few decoded slices are kept in a bounded LRU so stepping back and forth is instant.
Plain Python, no Qt.
"""

from __future__ import annotations

import io
import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from pacs_mask_desktop.core.api_client import ApiClient
from pacs_mask_desktop.core.masks import load_mask_array
from server.contract.messages import GroupOut, MaskOut

CACHE_SLICES = 48


class OverlaySource:
    """Label images by slice index, loaded lazily and cached (thread-safe)."""

    kind = "overlay"
    colour_table: list[int] | None = None
    """256 ARGB values replacing the label palette when drawn (``None``: the label colours)."""
    opaque_value: int | None = None
    """A label value drawn at full opacity above the rest (a compare's outline), ``None``: none."""

    def __init__(self, title: str, cache_slices: int = CACHE_SLICES) -> None:
        self.title = title
        self._cache: OrderedDict[int, np.ndarray | None] = OrderedDict()
        self._cache_slices = cache_slices
        self._lock = threading.Lock()

    def indexes(self) -> list[int]:
        """Slice indexes this source has a mask for, ascending."""
        raise NotImplementedError

    def has(self, index: int) -> bool:
        """True when the source holds a mask for ``index`` (without loading it)."""
        raise NotImplementedError

    def _read(self, index: int) -> np.ndarray | None:
        raise NotImplementedError

    def note(self, index: int) -> str | None:  # noqa: ARG002 - only a combined source leaves parts out
        """Why part of slice ``index``'s overlay is not drawn, once loaded (``None``: nothing left out)."""
        return None

    def cached(self, index: int) -> tuple[bool, np.ndarray | None]:
        """``(True, array)`` when ``index`` is loaded (or known to have no mask), else ``(False, None)``."""
        if not self.has(index):
            return True, None
        with self._lock:
            if index in self._cache:
                self._cache.move_to_end(index)
                return True, self._cache[index]
        return False, None

    def load(self, index: int) -> np.ndarray | None:
        """The label image of slice ``index`` (``None`` when there is no mask there). Blocking."""
        known, array = self.cached(index)
        if known:
            return array
        array = self._read(index)
        with self._lock:
            self._cache[index] = array
            self._cache.move_to_end(index)
            while len(self._cache) > self._cache_slices:
                self._cache.popitem(last=False)
        return array


class MaskFileSource(OverlaySource):
    """Dropped mask files, as matched to slices by ``prepare`` (only rows that would upload)."""

    kind = "files"

    def __init__(self, paths_by_index: Mapping[int, Path], title: str = "dropped masks") -> None:
        super().__init__(title)
        self._paths = dict(paths_by_index)

    def indexes(self) -> list[int]:
        return sorted(self._paths)

    def has(self, index: int) -> bool:
        return index in self._paths

    def path(self, index: int) -> Path | None:
        """The file drawn on slice ``index``."""
        return self._paths.get(index)

    def _read(self, index: int) -> np.ndarray | None:
        return load_mask_array(self._paths[index])


class GroupViewSource(OverlaySource):
    """A stored group's slices, fetched through the view route (``GET /api/mask-group/{id}/view``)."""

    kind = "group"

    def __init__(self, api: ApiClient, group: GroupOut, slices: Sequence[MaskOut]) -> None:
        super().__init__(f"group {group.model_name} {group.version}")
        self.api = api
        self.group = group
        self.group_id = group.id
        self._names = {s.slice_index: s.filename for s in slices}
        self.slices = sorted(slices, key=lambda s: s.slice_index)

    def indexes(self) -> list[int]:
        return sorted(self._names)

    def has(self, index: int) -> bool:
        return index in self._names

    def _read(self, index: int) -> np.ndarray | None:
        data = self.api.view(self.group_id, filename=self._names[index])
        return decode_png_labels(data)


def decode_png_labels(data: bytes) -> np.ndarray:
    """Label values of a mask PNG held in memory (palette index, grey value or bit)."""
    with Image.open(io.BytesIO(data), formats=["PNG"]) as image:
        image.load()
        array = np.asarray(image)
    if array.ndim != 2:
        array = array[..., 0]
    if array.dtype == np.bool_:
        array = array.astype(np.uint8)
    elif array.dtype.kind == "i" or array.dtype.itemsize > 2:
        array = array.astype(np.uint16)
    return np.ascontiguousarray(array)
