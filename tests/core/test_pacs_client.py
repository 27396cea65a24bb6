"""The client's PACS access (``core/pacs.py``) and DICOM cache (``core/dicom_cache.py``) on a real Orthanc.

Search by patient id, name, accession, date range and modality; a series' instances stream into the
size-bounded cache (0700/0600) with progress, can be cancelled, and a second open is served from disk.
A PACS that is down, silent, refuses the credentials or answers garbage raises one ``PacsError`` whose
kind and message say which.
"""

from __future__ import annotations

import datetime as dt
import os
import stat
import threading
from pathlib import Path

import pytest

from pacs_mask_desktop.core.dicom_cache import CacheError, DicomCache
from pacs_mask_desktop.core.dicom_series import load_series
from pacs_mask_desktop.core.pacs import PacsCancelled, PacsClient, PacsError
from server.contract.messages import ClientConfig
from tests.orthanc import Orthanc, StoredSeries


def client(orthanc: Orthanc, cache: DicomCache | None = None, **kwargs: object) -> PacsClient:
    return PacsClient(orthanc.dicomweb_url, (orthanc.user, orthanc.password), cache=cache, **kwargs)  # type: ignore[arg-type]


@pytest.fixture
def cache(tmp_path: Path) -> DicomCache:
    return DicomCache(tmp_path / "cache", max_bytes=50 * 1024 * 1024)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# --- search -------------------------------------------------------------------------------------------


def test_studies_are_found_by_patient_id_name_accession_date_and_modality(
    orthanc: Orthanc, pacs_ct: StoredSeries, pacs_mr: StoredSeries
) -> None:
    today = dt.date.today().strftime("%Y%m%d")
    with client(orthanc) as pacs:
        for filters in (
            {"patient_id": pacs_ct.patient_id},
            {"patient_name": "phantom29"},
            {"patient_name": "demo phantom"},
            {"accession_number": pacs_ct.accession_number},
            {"date_from": today, "date_to": today, "modality": "CT"},
        ):
            found = pacs.search_studies(**filters)
            assert [s.study_instance_uid for s in found] == [pacs_ct.study_instance_uid], filters
        study = pacs.search_studies(patient_id=pacs_ct.patient_id)[0]
        assert (study.modalities, study.instance_count, study.accession_number) == (
            ("CT",),
            200,
            pacs_ct.accession_number,
        )
        assert pacs.search_studies(patient_id="NOBODY") == []
        mr = pacs.search_studies(modality="MR")
        assert [s.study_instance_uid for s in mr] == [pacs_mr.study_instance_uid]


def test_series_of_a_study_with_description_modality_and_instance_count(
    orthanc: Orthanc, pacs_ct: StoredSeries
) -> None:
    with client(orthanc) as pacs:
        (series,) = pacs.search_series(pacs_ct.study_instance_uid)
        assert pacs.series_study_uid(pacs_ct.series_instance_uid) == pacs_ct.study_instance_uid
    assert series.series_instance_uid == pacs_ct.series_instance_uid
    assert (series.modality, series.instance_count, series.series_number) == ("CT", 200, 1)
    assert series.description == "Synthetic phantom 2.5 mm"


# --- retrieve into the cache ------------------------------------------------------------------------


def test_a_series_streams_into_the_private_cache_and_opens_in_geometric_order(
    orthanc: Orthanc, pacs_ct: StoredSeries, cache: DicomCache
) -> None:
    progress: list[tuple[int, int]] = []
    old_umask = os.umask(0o022)
    try:
        with client(orthanc, cache) as pacs:
            paths = pacs.retrieve_series(
                pacs_ct.study_instance_uid,
                pacs_ct.series_instance_uid,
                on_instance=lambda _path, done, total: progress.append((done, total)),
            )
    finally:
        os.umask(old_umask)
    assert progress == [(i, 200) for i in range(1, 201)]
    assert len(paths) == 200
    assert len(set(paths)) == 200
    folder = cache.series_dir(pacs_ct.series_instance_uid)
    assert {p.parent for p in paths} == {folder}
    assert mode(cache.root) == mode(folder) == 0o700
    assert {mode(p) for p in folder.iterdir()} == {0o600}
    series = load_series(folder)
    assert tuple(s.sop_instance_uid for s in series) == pacs_ct.sop_uids_in_order

    # The second open is served from disk: it works with the PACS gone.
    dead = PacsClient("http://127.0.0.1:9/dicom-web", cache=cache)
    again = dead.retrieve_series(pacs_ct.study_instance_uid, pacs_ct.series_instance_uid)
    assert sorted(again) == sorted(paths)


def test_a_cancelled_retrieval_stops_and_a_later_one_completes(
    orthanc: Orthanc, pacs_ct: StoredSeries, cache: DicomCache
) -> None:
    cancel = threading.Event()
    seen: list[int] = []

    def on_instance(_path: Path, done: int, _total: int) -> None:
        seen.append(done)
        if done == 5:
            cancel.set()

    with client(orthanc, cache) as pacs:
        with pytest.raises(PacsCancelled):
            pacs.retrieve_series(
                pacs_ct.study_instance_uid,
                pacs_ct.series_instance_uid,
                on_instance=on_instance,
                cancel=cancel,
            )
        assert seen == [1, 2, 3, 4, 5]
        assert cache.complete_instances(pacs_ct.series_instance_uid) is None
        paths = pacs.retrieve_series(pacs_ct.study_instance_uid, pacs_ct.series_instance_uid)
    assert len(paths) == 200


def test_the_multiframe_mr_arrives_as_one_file_of_ten_frames(
    orthanc: Orthanc, pacs_mr: StoredSeries, cache: DicomCache
) -> None:
    with client(orthanc, cache) as pacs:
        paths = pacs.retrieve_series(pacs_mr.study_instance_uid, pacs_mr.series_instance_uid)
    assert len(paths) == 1
    series = load_series(paths[0].parent)
    assert len(series) == 10
    assert series.is_multiframe
    assert series.pixel_array(9).shape == (64, 64)


def test_the_cache_evicts_least_recently_used_series_never_the_open_one(tmp_path: Path) -> None:
    cache = DicomCache(tmp_path / "c", max_bytes=2500)
    for uid in ("1.1", "1.2", "1.3"):
        cache.put(uid, f"{uid}.1", b"x" * 1000)
        cache.mark_used(uid)
    os.utime(cache.series_dir("1.1") / ".used", (1, 1))  # 1.1 oldest, then 1.2, 1.3
    os.utime(cache.series_dir("1.2") / ".used", (2, 2))
    assert cache.evict(keep=["1.1"]) == ["1.2"]
    assert sorted(p.name for p in cache.root.iterdir()) == ["1.1", "1.3"]
    assert cache.size_bytes() == 2000
    with pytest.raises(CacheError):
        cache.put("../etc", "1.2.3", b"")
    with pytest.raises(CacheError):
        cache.put("1.2", "1.2/../../x", b"")


# --- failures ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fault", "kind", "words"),
    [
        ("down", "unreachable", "Cannot reach the PACS"),
        ("silent", "timeout", "did not answer in time"),
        ("wrong_password", "unauthorized", "refused the credentials"),
        ("garbage", "malformed", "not valid DICOMweb"),
    ],
)
def test_a_failing_pacs_raises_one_clear_error(
    request: pytest.FixtureRequest, cache: DicomCache, fault: str, kind: str, words: str
) -> None:
    orthanc: Orthanc = request.getfixturevalue("orthanc")
    url, auth = orthanc.dicomweb_url, (orthanc.user, orthanc.password)
    if fault == "down":
        url = request.getfixturevalue("dead_pacs_url")
    elif fault == "silent":
        url = request.getfixturevalue("silent_pacs")
    elif fault == "wrong_password":
        auth = (orthanc.user, "not-the-password")
    elif fault == "garbage":
        url = request.getfixturevalue("garbage_pacs")
    with PacsClient(url, auth, timeout=1.0, cache=cache) as pacs:
        for call in (
            lambda: pacs.search_studies(patient_id="X"),
            lambda: pacs.search_series("1.2.3"),
            lambda: pacs.retrieve_series("1.2.3", "1.2.3.4"),
        ):
            with pytest.raises(PacsError) as caught:
                call()
            assert caught.value.kind == kind
            assert words in caught.value.message
            assert "not-the-password" not in caught.value.message


def test_from_env_needs_a_url_and_reads_the_credentials(
    monkeypatch: pytest.MonkeyPatch, orthanc: Orthanc, pacs_ct: StoredSeries
) -> None:
    for name in list(os.environ):
        if name.startswith("PACS_MASK_DICOMWEB_"):
            monkeypatch.delenv(name)
    with pytest.raises(PacsError) as caught:
        PacsClient.from_env()
    assert caught.value.kind == "not_configured"
    for name, value in orthanc.env().items():
        monkeypatch.setenv(name, value)
    with PacsClient.from_env() as pacs:
        assert pacs.search_studies(patient_id=pacs_ct.patient_id)
    monkeypatch.delenv("PACS_MASK_DICOMWEB_URL")
    config = ClientConfig(dicomweb_url=orthanc.dicomweb_url, version="test")
    with PacsClient.from_env(config) as pacs:  # the server's config
        assert pacs.search_studies(patient_id=pacs_ct.patient_id)


# --- a truncated retrieval is never cached as complete ---------------------------------------------------


def _stow_small_ct(orthanc: Orthanc, folder: Path, seed: int) -> tuple[str, str, list[str]]:
    """A fresh 5-slice CT in the PACS (its own UIDs): study, series and SOP Instance UIDs."""
    import pydicom

    from pacs_mask_desktop.core.demo import write_synthetic_ct

    datasets = [pydicom.dcmread(p) for p in write_synthetic_ct(folder, slices=5, size=16, seed=seed)]
    orthanc.stow(datasets)
    first = datasets[0]
    return first.StudyInstanceUID, first.SeriesInstanceUID, [ds.SOPInstanceUID for ds in datasets]


def _delete_from_orthanc(orthanc: Orthanc, sop_uid: str) -> None:
    """Remove one instance from the PACS through Orthanc's REST API."""
    import httpx

    auth = (orthanc.user, orthanc.password)
    found = httpx.post(f"{orthanc.url}/tools/lookup", content=sop_uid, auth=auth, timeout=30).json()
    (instance,) = [item["ID"] for item in found if item["Type"] == "Instance"]
    httpx.delete(f"{orthanc.url}/instances/{instance}", auth=auth, timeout=30).raise_for_status()


def test_a_retrieval_lacking_instances_the_series_lists_is_refused_and_not_cached_complete(
    orthanc: Orthanc, cache: DicomCache, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An instance vanishes between the QIDO-RS listing and the WADO-RS stream (a real Orthanc)."""
    study, series, sops = _stow_small_ct(orthanc, tmp_path / "ct", seed=4401)
    with client(orthanc, cache) as pacs:
        listed = pacs.series_instances

        def list_then_lose_one(study_uid: str, series_uid: str) -> list[str]:
            answer = listed(study_uid, series_uid)
            _delete_from_orthanc(orthanc, sops[2])
            monkeypatch.setattr(pacs, "series_instances", listed)  # once
            return answer

        monkeypatch.setattr(pacs, "series_instances", list_then_lose_one)
        with pytest.raises(PacsError) as caught:
            pacs.retrieve_series(study, series)
        assert caught.value.kind == "incomplete"
        assert "sent 4 instances" in caught.value.message
        assert "lists 5" in caught.value.message
        assert sops[2] in caught.value.message
        assert cache.complete_instances(series) is None  # the next open asks the PACS again
        assert len(cache.cached(series)) == 4

        # The browser's stale count of 5: four arrive, and the listing asked after the stream says the
        # PACS now holds four, so the series is complete and later opens come from disk.
        assert len(pacs.retrieve_series(study, series, total=5)) == 4
        assert cache.complete_instances(series) is not None


def test_a_truncated_stream_with_an_unknown_count_is_checked_after_the_stream(
    orthanc: Orthanc, cache: DicomCache, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``total=0`` (count not asked for): the stream stops one instance short, the listing catches it."""
    study, series, sops = _stow_small_ct(orthanc, tmp_path / "ct", seed=4402)
    with client(orthanc, cache) as pacs:
        streamed = pacs._client.iter_series

        def short_stream(*args: object, **kwargs: object) -> object:
            return iter(list(streamed(*args, **kwargs))[:-1])

        monkeypatch.setattr(pacs._client, "iter_series", short_stream)
        with pytest.raises(PacsError) as caught:
            pacs.retrieve_series(study, series, total=0)
        assert caught.value.kind == "incomplete"
        assert "sent 4 instances" in caught.value.message
        assert "lists 5" in caught.value.message
        assert cache.complete_instances(series) is None
        monkeypatch.setattr(pacs._client, "iter_series", streamed)
        assert sorted(p.name for p in pacs.retrieve_series(study, series, total=0)) == sorted(
            p.name for p in cache.cached(series).values()
        )
        assert cache.complete_instances(series) is not None
    assert len(sops) == 5


# --- no password in a message ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "ftp://reader:s3cr3t-pw@pacs.example/dicom-web",  # not http(s)
        "http://reader:s3cr3t-pw@[::1/dicom-web",  # not parseable
        "http://reader:s3cr3t-pw@127.0.0.1:9/dicom-web",  # nobody listening
    ],
)
def test_no_password_of_the_pacs_url_reaches_an_error_message(cache: DicomCache, url: str) -> None:
    with pytest.raises(PacsError) as caught, PacsClient(url, timeout=1.0, cache=cache) as pacs:
        pacs.search_studies(patient_id="X")
    text = f"{caught.value} {caught.value.message} {caught.value!r}"
    assert "s3cr3t-pw" not in text
    assert "reader" not in text
    assert caught.value.kind in ("not_configured", "unreachable")
