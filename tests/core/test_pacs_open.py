"""The Qt-free rules behind the PACS browser and streaming open (real DICOM files, no network)."""

from __future__ import annotations

import random
from datetime import date
from pathlib import Path

import pydicom
import pytest

from pacs_mask_desktop.core.demo import write_synthetic_ct
from pacs_mask_desktop.core.dicom_cache import DicomCache
from pacs_mask_desktop.core.dicom_series import load_series
from pacs_mask_desktop.core.pacs import PacsClient, PacsError
from pacs_mask_desktop.core.pacs_open import (
    INDEX_FILE,
    PacsSettings,
    StreamState,
    StudyQuery,
    cached_series,
    desktop_pacs_client,
    pacs_url,
)
from server.contract.messages import ClientConfig


def read_header(path: Path) -> pydicom.Dataset:
    return pydicom.dcmread(path, stop_before_pixels=True)


def test_study_query_filters() -> None:
    query = StudyQuery(patient_id=" P1 ", patient_name="smith", date_from=date(2024, 1, 2), modality="ct")
    assert query.filters() == {
        "patient_id": "P1",
        "patient_name": "smith",
        "date_from": "20240102",
        "modality": "CT",
    }
    with pytest.raises(ValueError, match="ends before it starts"):
        StudyQuery(date_from=date(2024, 1, 2), date_to=date(2024, 1, 1)).filters()


def test_pacs_url_precedence(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PACS_MASK_DICOMWEB_URL", raising=False)
    server = ClientConfig(dicomweb_url="http://server-pacs/dicom-web", version="1")
    assert pacs_url(PacsSettings(), server) == "http://server-pacs/dicom-web"
    monkeypatch.setenv("PACS_MASK_DICOMWEB_URL", "http://env-pacs/dicom-web")
    assert pacs_url(PacsSettings(), server) == "http://env-pacs/dicom-web"
    assert pacs_url(PacsSettings(url="http://mine/dicom-web"), server) == "http://mine/dicom-web"
    monkeypatch.delenv("PACS_MASK_DICOMWEB_URL")
    with pytest.raises(PacsError, match="No PACS is configured") as raised:
        desktop_pacs_client(PacsSettings(), ClientConfig(dicomweb_url=None, version="1"))
    assert raised.value.kind == "not_configured"


def _stored(tmp_path: Path, slices: int) -> tuple[DicomCache, list[Path], str]:
    paths = write_synthetic_ct(tmp_path / "ct", slices=slices, size=32, seed=2)
    cache = DicomCache(tmp_path / "cache")
    uid = str(read_header(paths[0]).SeriesInstanceUID)
    return cache, paths, uid


def test_stream_state_orders_what_has_arrived(tmp_path: Path) -> None:
    _cache, paths, _uid = _stored(tmp_path, 9)
    shuffled = list(paths)
    random.Random(4).shuffle(shuffled)
    state = StreamState(expected=9)
    published = []
    for path in shuffled:
        state.add(path, read_header(path))
        if state.due():
            published.append(len(state.build()))
    assert published[0] == 1  # the first instance is shown at once
    assert state.done == 9
    if state.built_with != 9:
        published.append(len(state.build()))
    assert published[-1] == 9
    reference = load_series(tmp_path / "ct")
    assert [r.sop_instance_uid for r in state.build().slices] == [
        r.sop_instance_uid for r in reference.slices
    ]


def test_cached_series_is_read_from_the_header_index(tmp_path: Path) -> None:
    cache, paths, uid = _stored(tmp_path, 6)
    client = PacsClient("http://127.0.0.1:9/dicom-web", cache=cache)
    assert cached_series(client, uid) is None  # nothing cached yet
    sops = []
    for path in paths:
        sop = str(read_header(path).SOPInstanceUID)
        cache.put(uid, sop, path.read_bytes())
        sops.append(sop)
    cache.mark_complete(uid, sops)
    first = cached_series(client, uid)  # from the files; writes the index
    index = cache.series_dir(uid) / INDEX_FILE
    assert index.is_file()
    assert index.stat().st_mode & 0o777 == 0o600
    second = cached_series(client, uid)  # from the index
    assert first is not None
    assert second is not None
    assert second.slices == first.slices
    for name in ("orientation", "pixel_spacing", "file_window", "rows", "columns", "modality", "patient_id"):
        assert getattr(second, name) == getattr(first, name), name
    assert second.pixel_array(2).shape == (32, 32)
    next(cache.series_dir(uid).glob("*.dcm")).unlink()  # a file gone: not complete any more
    assert cached_series(client, uid) is None
