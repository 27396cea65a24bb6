"""Opening a PACS series in the viewer while it streams in (no Qt: the app's workers call these).

How a series opens (measured for a 500-slice 512x512 CT on Orthanc in ``benchmarks/pacs_open.py``):

1. :func:`cached_series`: a series the DICOM cache holds completely opens from disk, nothing is fetched.
   A small index of the ordered slices (:func:`save_index`) makes that open take milliseconds.
2. Otherwise the whole series streams into the cache in one WADO-RS request
   (:meth:`PacsClient.retrieve_series`, written as received); the worker hands each instance's parsed
   header (``on_header``, no pixels) to the GUI thread. :class:`StreamState` orders what has arrived into a :class:`Series` (rebuilt as more
   arrive), so the first image shows as soon as the first instance is in, and the viewer keeps showing
   the same instance while the order around it fills in.

A first design fetched the series metadata (WADO-RS) first to order the slices before any pixel: on
this machine Orthanc took 0.6 s for it idle and 5 s under load (it reads every file in its "Full"
metadata mode), delaying the first image past the target and slowing the stream it ran beside.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING, TypedDict, cast

from pydicom.dataset import Dataset

from pacs_mask_desktop.core.dicom_cache import DicomCache
from pacs_mask_desktop.core.dicom_series import (
    Series,
    SeriesError,
    SliceRef,
    Window,
    load_series,
    series_from_headers,
)
from pacs_mask_desktop.core.pacs import PacsClient, PacsError, verify_from_env

if TYPE_CHECKING:
    from server.contract.messages import ClientConfig

MIB = 1024 * 1024
INDEX_FILE = ".series.json"
"""The ordered slices of a complete cached series, next to its instances (0600 like them)."""
DEFAULT_CACHE_MB = 2048


@dataclass(frozen=True, slots=True)
class PacsSettings:
    """The workstation's PACS settings: a URL overriding the server's, a user name, the cache size.

    No password here: it is typed once per session (or comes from ``PACS_MASK_DICOMWEB_PASSWORD`` /
    ``_TOKEN``) and never written to the settings file.
    """

    url: str = ""
    user: str = ""
    cache_mb: int = DEFAULT_CACHE_MB


def pacs_url(settings: PacsSettings, server_config: ClientConfig | None) -> str | None:
    """Where the PACS is: the workstation's override, else ``PACS_MASK_DICOMWEB_URL``, else the server's
    (``GET /api/config`` ``dicomweb_url``)."""
    return (
        settings.url.strip()
        or os.environ.get("PACS_MASK_DICOMWEB_URL", "").strip()
        or (server_config.dicomweb_url if server_config is not None else None)
        or ""
    ).strip() or None


def desktop_pacs_client(
    settings: PacsSettings,
    server_config: ClientConfig | None,
    password: str = "",
    *,
    cache_root: Path | None = None,
) -> PacsClient:
    """A :class:`PacsClient` for the desktop, or ``PacsError("not_configured")`` saying how to name a PACS.

    Credentials: a bearer token from ``PACS_MASK_DICOMWEB_TOKEN``, else the Settings' user with the
    session's password (or ``PACS_MASK_DICOMWEB_USER``/``_PASSWORD``), else none.
    """
    url = pacs_url(settings, server_config)
    if not url:
        raise PacsError(
            "not_configured",
            "No PACS is configured: the server does not name one (PACS_MASK_DICOMWEB_URL on the server) and "
            "File ▸ Settings has no PACS URL for this workstation. Local DICOM folders still open (Ctrl+O).",
        )
    auth: tuple[str, str] | str | None = os.environ.get("PACS_MASK_DICOMWEB_TOKEN") or None
    user = settings.user.strip() or os.environ.get("PACS_MASK_DICOMWEB_USER", "")
    if auth is None and user:
        auth = (user, password or os.environ.get("PACS_MASK_DICOMWEB_PASSWORD", ""))
    cache = DicomCache(cache_root, max_bytes=max(settings.cache_mb, 1) * MIB)
    return PacsClient(url, auth, verify_from_env(), cache=cache)


class StudyFilters(TypedDict, total=False):
    """The filled-in filters of a :class:`StudyQuery`: keyword arguments of ``search_studies``."""

    patient_id: str
    patient_name: str
    accession_number: str
    date_from: str
    date_to: str
    modality: str


@dataclass(frozen=True, slots=True)
class StudyQuery:
    """The PACS browser's search form; :meth:`filters` checks it and gives ``search_studies`` keywords."""

    patient_id: str = ""
    patient_name: str = ""
    accession_number: str = ""
    date_from: date | None = None
    date_to: date | None = None
    modality: str = ""

    def filters(self) -> StudyFilters:
        """Keyword arguments for :meth:`PacsClient.search_studies`; ``ValueError`` for a reversed range."""
        if self.date_from and self.date_to and self.date_from > self.date_to:
            raise ValueError("The study date range ends before it starts.")
        found = StudyFilters(
            patient_id=self.patient_id.strip(),
            patient_name=self.patient_name.strip(),
            accession_number=self.accession_number.strip(),
            date_from=self.date_from.strftime("%Y%m%d") if self.date_from else "",
            date_to=self.date_to.strftime("%Y%m%d") if self.date_to else "",
            modality=self.modality.strip().upper(),
        )
        return cast(StudyFilters, {key: value for key, value in found.items() if value})


@dataclass(frozen=True, slots=True)
class PacsSeriesRef:
    """Which PACS series to open (what the browser's series table hands to the window)."""

    study_instance_uid: str
    series_instance_uid: str
    description: str = ""
    modality: str = ""
    instance_count: int | None = None


def cached_series(client: PacsClient, series_uid: str) -> Series | None:
    """The series from the DICOM cache when every instance of it is there, else ``None``.

    Ordered from the index saved next to the instances (:func:`save_index`: the ordered slices in one
    small JSON file, read in milliseconds), else by reading every file's header (seconds for 500 files
    on a loaded 2-core machine; pydicom's own JSON for 500 headers is no faster, measured here).
    """
    paths = client.cache.complete_instances(series_uid)
    if paths is None:
        return None
    client.cache.mark_used(series_uid)
    folder = client.cache.series_dir(series_uid)
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError, IndexError):
        series = _load_index(folder, {path.name for path in paths})
        if series is not None:
            return series
    try:
        series = load_series(folder, series_instance_uid=series_uid)
    except SeriesError:
        return None  # damaged cache entry: retrieve again
    with contextlib.suppress(OSError):  # only a speed-up for the next open
        save_index(folder, series)
    return series


def save_index(folder: Path, series: Series) -> None:
    """Keep the ordered slices of a complete cached series in one private JSON file (0600)."""
    data = {
        "version": 1,
        "series": {name: getattr(series, name) for name in _SERIES_FIELDS},
        "file_window": list(series.file_window) if series.file_window is not None else None,
        "slices": [
            [Path(ref.path).name, *(getattr(ref, name) for name in _SLICE_FIELDS)] for ref in series.slices
        ],
    }
    partial = folder / f".{INDEX_FILE}.part"
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        json.dump(data, handle)
    partial.replace(folder / INDEX_FILE)


_SERIES_FIELDS = (
    "series_instance_uid", "study_instance_uid", "patient_id", "description", "modality", "rows", "columns",
    "pixel_spacing", "slice_thickness", "orientation", "photometric_interpretation", "ordered_by", "warnings",
)  # fmt: skip
_SLICE_FIELDS = (
    "frame_index", "sop_instance_uid", "instance_number", "position", "image_position", "rows", "columns",
    "rescale_slope", "rescale_intercept",
)  # fmt: skip


def _load_index(folder: Path, files: set[str]) -> Series | None:
    """The series :func:`save_index` wrote, if it names exactly the files that are there."""
    data = json.loads((folder / INDEX_FILE).read_text(encoding="utf-8"))
    if data.get("version") != 1 or {row[0] for row in data["slices"]} != files:
        return None
    fields = data["series"]
    slices = []
    for name, frame, sop, number, position, image_position, rows, columns, slope, intercept in data["slices"]:
        slices.append(
            SliceRef(
                path=folder / name,
                frame_index=frame,
                sop_instance_uid=sop,
                instance_number=number,
                position=position,
                image_position=tuple(image_position) if image_position is not None else None,
                rows=rows,
                columns=columns,
                rescale_slope=slope,
                rescale_intercept=intercept,
            )
        )
    window = data["file_window"]
    return Series(
        **{
            name: fields[name]
            for name in _SERIES_FIELDS
            if name not in ("pixel_spacing", "orientation", "warnings")
        },
        pixel_spacing=tuple(fields["pixel_spacing"]) if fields["pixel_spacing"] else None,
        orientation=tuple(fields["orientation"]) if fields["orientation"] else None,
        warnings=fields["warnings"],
        file_window=Window(*window) if window else None,
        slices=slices,
    )


@dataclass(slots=True)
class StreamState:
    """The instances of a streaming series that are on disk; lives on the GUI thread, fed by the worker.

    The series is ordered from the headers of the instances that have arrived, and re-ordered as more
    arrive (:meth:`due`, :meth:`build`): no metadata request first, whose cost on a PACS that reads every
    file for it (Orthanc's "Full" mode) would delay both the first image and the whole series.
    ``expected`` is the instance count the PACS announced (QIDO-RS), ``None`` when unknown.
    """

    expected: int | None = None
    items: dict[str, tuple[Path, Dataset]] = field(default_factory=dict)
    built_with: int = 0
    finished: bool = False

    def add(self, path: Path, header: Dataset) -> None:
        """One more instance is in the cache."""
        self.items[str(header.get("SOPInstanceUID", path.stem))] = (path, header)

    @property
    def done(self) -> int:
        """Instances in the cache so far."""
        return len(self.items)

    def due(self) -> bool:
        """True when the shown series should be rebuilt: at the first instance, then each time the count
        doubles (about 2n headers ordered in all while n stream in; the GUI thread does it, and a rebuild
        every 64 instances made the whole series 30 % slower to arrive here)."""
        count = len(self.items)
        return count > self.built_with and (self.built_with == 0 or count >= 2 * self.built_with)

    def build(self) -> Series:
        """The series of the instances arrived so far, in geometry order."""
        self.built_with = len(self.items)
        return series_from_headers(list(self.items.values()))
