"""The desktop session model's rules without Qt: masks matched to real slices, what may be uploaded and
why not, which journal entries are ours, the review queue's next item, "Next disagreement" (F9) and what
opening another series clears. Nothing here imports PySide6 or ``pacs_mask_desktop.ui``."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import pytest
from PIL import Image

from pacs_mask_desktop.core.api_client import ApiClient
from pacs_mask_desktop.core.demo import write_masks_for_series, write_synthetic_ct
from pacs_mask_desktop.core.dicom_series import Series, load_series
from pacs_mask_desktop.core.events import UploadResult
from pacs_mask_desktop.core.journal import Journal, JournalEntry
from pacs_mask_desktop.core.pacs import PacsClient, PacsError
from pacs_mask_desktop.core.pacs_open import PacsSettings
from pacs_mask_desktop.core.plan import PreparedUpload, prepare
from pacs_mask_desktop.core.session import (
    DEFAULT_DICE_THRESHOLD,
    Event,
    ReviewQueueState,
    ServerLink,
    Session,
    compare_summary,
    disagreements,
    drawable_masks,
    is_loopback,
    item_title,
    next_disagreement,
    person_name,
    prepared_summary,
    resume_inputs,
    richest_slice,
    series_route,
    upload_failure,
)
from pacs_mask_desktop.core.workspace import Cleared, SeriesSource
from server.contract.messages import AnnotationOut, ClientConfig, Comparison, GroupOut, QueueItem

SLICES = 8
SIZE = 64
FIELDS = {"model_name": "liver-seg", "version": "1.0", "source": "manual"}


# --- real DICOM series and mask PNGs ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def ct(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Series]:
    folder = tmp_path_factory.mktemp("ct")
    write_synthetic_ct(folder, slices=SLICES, size=SIZE, seed=5)
    return folder, load_series(folder)


@pytest.fixture(scope="module")
def other_ct(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Series]:
    folder = tmp_path_factory.mktemp("other-ct")
    write_synthetic_ct(folder, slices=4, size=32, seed=6)
    return folder, load_series(folder)


@pytest.fixture(scope="module")
def masks(tmp_path_factory: pytest.TempPathFactory, ct: tuple[Path, Series]) -> Path:
    folder = tmp_path_factory.mktemp("masks")
    write_masks_for_series(ct[1], folder)
    return folder


@pytest.fixture(scope="module")
def bad_masks(tmp_path_factory: pytest.TempPathFactory, masks: Path) -> Path:
    """The good masks plus an unreadable one, a wrong size and one beyond the series (as tests/ui has)."""
    folder = tmp_path_factory.mktemp("bad-masks")
    shutil.copytree(masks, folder, dirs_exist_ok=True)
    (folder / "mask_0002.png").write_text("not an image\n", encoding="utf-8")
    Image.fromarray(np.zeros((SIZE - 8, SIZE), dtype=np.uint8), mode="L").save(folder / "mask_0003.png")
    shutil.copy(masks / "mask_0001.png", folder / "mask_0099.png")
    return folder


def folder_source(folder: Path, series: Series) -> SeriesSource:
    return SeriesSource("folder", series.series_instance_uid, series.study_instance_uid, folder)


def annotation_of(series: Series, annotation_id: int = 7) -> AnnotationOut:
    """The server's annotation record for ``series``."""
    return AnnotationOut(
        id=annotation_id,
        study_instance_uid=series.study_instance_uid,
        series_instance_uid=series.series_instance_uid,
        patient_id=series.patient_id,
        description="session test",
        created_by="test",
        created_at=datetime.now(UTC),
    )


@pytest.fixture
def api() -> Iterator[ApiClient]:
    """A real client (nothing is sent: the rules only need to know a server is connected)."""
    with ApiClient("http://127.0.0.1:9", "token") as client:
        yield client


def check(session: Session, paths: list[Path]) -> PreparedUpload:
    """What the window's worker does: ``prepare()`` the dropped masks against the open series."""
    return prepare(paths, series=session.series, **session.matching_fields(FIELDS))


# --- events ---------------------------------------------------------------------------------------------


def test_event_calls_each_callback_and_refuses_unknown_disconnects() -> None:
    event: Event[int] = Event("changed")
    seen: list[tuple[str, int]] = []
    first = event.connect(lambda value: seen.append(("first", value)))
    event.connect(lambda value: seen.append(("second", value)))
    event.emit(1)
    event.disconnect(first)
    event.emit(2)
    assert seen == [("first", 1), ("second", 1), ("second", 2)]
    with pytest.raises(ValueError, match="not connected to the changed event"):
        event.disconnect(first)


def test_session_imports_neither_qt_nor_dicom() -> None:
    """The model is Qt-free, and loads pydicom only when a PACS is used."""
    code = (
        "import sys, pacs_mask_desktop.core.session as s; "
        "print(sorted(m for m in ('PySide6', 'pydicom', 'pacs_mask_desktop.ui') if m in sys.modules))"
    )
    answer = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert answer.stdout.strip() == "[]"


# --- masks matched to slices -----------------------------------------------------------------------------


def test_masks_are_matched_to_the_open_series_and_drawn_when_uploadable(
    ct: tuple[Path, Series], bad_masks: Path
) -> None:
    folder, series = ct
    session = Session()
    shown: list[PreparedUpload | None] = []
    session.prepared_changed.connect(shown.append)
    session.open_series(series, folder_source(folder, series))
    session.set_masks([bad_masks])
    assert session.matching_fields(FIELDS)["annotation_id"] == 1  # a stand-in until one is chosen
    prepared = check(session, session.mask_paths)
    session.set_prepared(prepared)
    assert shown == [prepared]
    status = {row.filename: row.status for row in prepared.rows}
    assert status["mask_0002.png"] == "unreadable"
    assert status["mask_0003.png"] == "size_mismatch"
    assert status["mask_0099.png"] == "no_matching_slice"
    drawn = drawable_masks(prepared)
    assert sorted(drawn) == [0, 1, 4, 5, 6, 7]  # slices 2 and 3 have broken masks; 99 has no slice
    assert drawn[4] == bad_masks / "mask_0004.png"
    assert prepared_summary(prepared) == f"{SLICES + 1} mask file(s) checked: 3 with problems"
    start = richest_slice(prepared)
    assert start is not None
    assert start in drawn


def test_good_masks_are_all_uploadable(ct: tuple[Path, Series], masks: Path) -> None:
    folder, series = ct
    session = Session()
    session.open_series(series, folder_source(folder, series))
    session.set_annotation(annotation_of(series))
    assert session.matching_fields({"model_name": "", "version": "", "source": "ai"}) == {
        "annotation_id": 7,
        "model_name": "check",
        "version": "0",
        "source": "ai",
    }
    prepared = check(session, [masks])
    assert prepared.ok
    assert prepared_summary(prepared) == f"{SLICES} mask file(s) checked: all can be uploaded"
    assert sorted(drawable_masks(prepared)) == list(range(SLICES))


def test_masks_dropped_first_are_matched_when_a_folder_opens(ct: tuple[Path, Series], masks: Path) -> None:
    folder, series = ct
    session = Session()
    session.set_masks([masks])
    assert session.should_match_on_open(folder_source(folder, series))
    pacs = SeriesSource("pacs", series.series_instance_uid, series.study_instance_uid)
    assert not session.should_match_on_open(pacs)  # a PACS series is matched once complete
    session.clear_masks()
    assert not session.should_match_on_open(folder_source(folder, series))


# --- opening another series, changing the annotation --------------------------------------------------------


def test_another_series_clears_the_checked_masks_and_a_foreign_annotation(
    ct: tuple[Path, Series], other_ct: tuple[Path, Series], masks: Path
) -> None:
    (folder, series), (other_folder, other) = ct, other_ct
    session = Session()
    annotations: list[AnnotationOut | None] = []
    prepared: list[PreparedUpload | None] = []
    opened: list[Cleared] = []
    session.annotation_changed.connect(annotations.append)
    session.prepared_changed.connect(prepared.append)
    session.series_opened.connect(opened.append)

    session.open_series(series, folder_source(folder, series))
    chosen = annotation_of(series)
    session.set_annotation(chosen)
    session.set_masks([masks])
    session.set_prepared(check(session, [masks]))
    assert session.annotation_mismatch() is None
    assert session.open_series(series, folder_source(folder, series)) == Cleared()  # same one: all kept
    assert session.prepared is not None

    cleared = session.open_series(other, folder_source(other_folder, other))
    assert cleared == Cleared(series=True, masks=True, annotation=True)
    assert session.annotation is None
    assert session.mask_paths == []
    assert session.prepared is None
    assert session.series is other
    assert session.series_dir == other_folder
    assert annotations == [chosen, None]
    assert prepared[-1] is None
    assert opened == [Cleared(), Cleared(), cleared]


def test_annotation_of_another_series_is_noted(
    ct: tuple[Path, Series], other_ct: tuple[Path, Series]
) -> None:
    (folder, series), (_, other) = ct, other_ct
    session = Session()
    session.set_annotation(annotation_of(other, 9))
    assert session.annotation_mismatch() is None  # nothing open: nothing to compare with
    session.open_series(series, folder_source(folder, series))
    note = session.annotation_mismatch()
    assert note is not None
    assert note.startswith("Note: annotation 9 belongs to another series")
    assert session.needs_series_for(annotation_of(other))
    assert not session.needs_series_for(annotation_of(series))


# --- upload: allowed or refused, with the reason ------------------------------------------------------------


def test_upload_is_refused_with_the_reason_until_everything_is_there(
    ct: tuple[Path, Series], other_ct: tuple[Path, Series], masks: Path, api: ApiClient
) -> None:
    (folder, series), (_, other) = ct, other_ct
    arriving = False
    session = Session(streaming=lambda: arriving)
    session.open_series(series, folder_source(folder, series))

    def reason(fields: dict[str, Any] = FIELDS) -> str:
        problem = session.upload_blocker(fields)
        assert problem is not None
        return problem

    assert reason().startswith("Not connected to a server")
    session.connected(api, "http://127.0.0.1:9", embedded=False)
    assert reason().startswith("Pick an annotation first")
    session.set_annotation(annotation_of(series))
    assert reason().startswith("Drop mask files")
    session.set_masks([masks])
    assert reason({**FIELDS, "version": ""}).startswith("Enter a model name and a version")
    arriving = True
    assert reason().startswith("The series is still arriving from the PACS")
    arriving = False
    session.set_annotation(annotation_of(other, 12))
    assert reason().startswith("Annotation 12 belongs to another series than the one open")
    session.set_annotation(annotation_of(series))
    assert session.upload_blocker(FIELDS) is None
    assert session.upload_fields(FIELDS) == {**FIELDS, "annotation_id": 7}
    session.disconnected()
    assert reason().startswith("Not connected")


def test_upload_source_and_resume_record(ct: tuple[Path, Series], masks: Path) -> None:
    folder, series = ct
    session = Session()
    with pytest.raises(ValueError, match="No masks are dropped"):
        session.source_path()
    with pytest.raises(ValueError, match="No annotation is chosen"):
        session.upload_fields(FIELDS)
    session.open_series(series, folder_source(folder, series))
    session.set_annotation(annotation_of(series))
    session.set_masks([masks])
    assert session.source_path() == str(masks)
    files = sorted(masks.glob("*.png"))[:2]
    session.set_masks(files)
    assert session.source_path() == str(masks)  # several inputs: their folder
    record = session.upload_source_record()
    assert record == {"masks": [str(p) for p in files], "series": str(folder), "annotation_id": 7}
    assert session.series_is_open_at(folder)
    assert not session.series_is_open_at(masks)


def test_resume_inputs_prefer_what_the_app_remembered(tmp_path: Path) -> None:
    with Journal(tmp_path / "journal.db") as journal:
        journal.start(
            "g1",
            server="http://127.0.0.1:8765",
            annotation_id=3,
            model_name="m",
            version="1",
            source_path=str(tmp_path / "masks"),
            total=4,
        )
        (entry,) = journal.unfinished()
    assert resume_inputs(entry, None) == ([tmp_path / "masks"], None)
    remembered = {"masks": [str(tmp_path / "a.png")], "series": str(tmp_path / "ct")}
    assert resume_inputs(entry, remembered) == ([tmp_path / "a.png"], tmp_path / "ct")


def test_upload_failure_names_the_failed_slices() -> None:
    assert upload_failure(UploadResult("cancelled", "g", "Cancelled.")) is None
    assert upload_failure(UploadResult("incomplete", None, "Refused.")) == ("Upload failed", "Refused.")
    failed = {f"mask_{i:04d}.png": "timeout" for i in range(17)}
    title, text = upload_failure(UploadResult("incomplete", "g", "17 slices failed.", failed=failed)) or (
        "",
        "",
    )
    assert title == "Some slices failed"
    assert "mask_0014.png: timeout" in text
    assert "mask_0015.png" not in text
    assert "… and 2 more" in text
    assert text.endswith("Use Retry failed (Ctrl+Shift+R) to send only these again.")


# --- journal ownership and connection ----------------------------------------------------------------------


def entry(server: str) -> JournalEntry:
    return JournalEntry("g", server, 1, "m", "1", "pending", None, 3, 1, "2026-01-01T00:00:00+00:00")


def test_journal_entries_are_ours_only_on_their_server(api: ApiClient) -> None:
    session = Session()
    assert not session.entry_is_ours(entry("http://pacs-mask.example:8765"))  # not connected yet
    link = session.connected(api, "http://pacs-mask.example:8765/", embedded=False)
    assert link == ServerLink("http://pacs-mask.example:8765/", embedded=False)
    assert link.kind == "server"
    assert session.entry_is_ours(entry("http://pacs-mask.example:8765"))
    assert not session.entry_is_ours(entry("http://127.0.0.1:8765"))
    session.connected(api, "http://127.0.0.1:50123", embedded=True)
    assert session.entry_is_ours(entry("http://localhost:8765"))  # the bundled server moved ports
    assert not session.entry_is_ours(entry("http://pacs-mask.example:8765"))
    session.connecting()
    assert not session.entry_is_ours(entry("http://127.0.0.1:50123"))


def test_is_loopback() -> None:
    assert is_loopback("http://127.0.0.1:8765")
    assert is_loopback("http://[::1]:1/")
    assert not is_loopback("https://pacs-mask.example")


def test_connection_events_and_server_config(api: ApiClient, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PACS_MASK_DICOMWEB_URL", raising=False)
    session = Session()
    seen: list[ServerLink | None] = []
    session.connection_changed.connect(seen.append)
    link = session.connected(api, "http://127.0.0.1:9", embedded=True)
    assert link.kind == "bundled server"
    assert not session.has_pacs
    session.set_server_config(ClientConfig(dicomweb_url="http://orthanc/dicom-web", version="1"))
    assert session.pacs_url() == "http://orthanc/dicom-web"
    session.disconnected()
    assert session.api is None
    assert seen == [link, None]


# --- PACS client --------------------------------------------------------------------------------------------


class RecordingPacsClient(PacsClient):
    """A real client that notes when it is closed."""

    closed = 0

    def close(self) -> None:
        RecordingPacsClient.closed += 1
        super().close()


def test_pacs_client_is_built_once_and_dropped_when_settings_change(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PACS_MASK_DATA_DIR", str(tmp_path))
    monkeypatch.delenv("PACS_MASK_DICOMWEB_URL", raising=False)
    streaming = False
    session = Session(streaming=lambda: streaming)
    asked: list[str | None] = []

    def password(_settings: PacsSettings, url: str | None) -> str:
        asked.append(url)
        return "secret"

    with pytest.raises(PacsError, match="No PACS is configured"):
        session.pacs_client(password)
    settings = PacsSettings(url="http://orthanc:8042/dicom-web", user="radiologist")
    assert session.set_pacs_settings(settings)
    assert not session.set_pacs_settings(settings)  # unchanged, no new password
    client = session.pacs_client(password)
    assert session.pacs_client(password) is client
    assert asked == [None, "http://orthanc:8042/dicom-web"]  # asked before it was known there is none

    own = RecordingPacsClient("http://orthanc:8042/dicom-web", None, True)
    session.use_pacs_client(own)
    assert session.pacs_client(password) is own
    RecordingPacsClient.closed = 0
    streaming = True  # a series still streams from it: it must stay open
    assert session.set_pacs_settings(settings, new_password=True)
    assert RecordingPacsClient.closed == 0
    streaming = False
    session.use_pacs_client(own)
    session.set_server_config(ClientConfig(dicomweb_url=None, version="1"))
    assert RecordingPacsClient.closed == 1
    assert session.pacs_client(password) is not own


# --- review queue -----------------------------------------------------------------------------------------


def queue_item(group_id: str, patient_name: str | None = "Doe^Jane") -> QueueItem:
    return msgspec.convert(
        {
            "id": group_id,
            "annotation_id": 1,
            "model_name": "liver-seg",
            "version": "2",
            "source": "ai",
            "status": "complete",
            "expected_slices": None,
            "confidence": None,
            "params": None,
            "created_by": "radiologist",
            "created_at": "2026-01-01T00:00:00Z",
            "completed_at": "2026-01-01T00:01:00Z",
            "slice_count": 3,
            "review_status": None,
            "review_comment": None,
            "reviewed_by": None,
            "reviewed_at": None,
            "patient_id": "P7",
            "patient_name": patient_name,
        },
        QueueItem,
    )


def decided(item: QueueItem, status: str = "approved") -> GroupOut:
    return msgspec.convert({**msgspec.to_builtins(item), "review_status": status}, GroupOut)


def test_queue_item_titles() -> None:
    assert person_name("Doe^Jane^Q") == "Doe, Jane Q"
    assert person_name("^Jane") == "Jane"
    assert item_title(queue_item("g1")) == "Doe, Jane · liver-seg 2"
    assert item_title(queue_item("g1", None)) == "P7 · liver-seg 2"


def test_series_route_open_then_folder_then_pacs_then_ask(tmp_path: Path) -> None:
    gone = str(tmp_path / "moved-away")
    assert series_route("1.2", open_uid="1.2", folder=None, has_pacs=True) == "open"
    assert series_route("1.2", open_uid="9.9", folder=str(tmp_path), has_pacs=True) == "folder"
    assert series_route("1.2", open_uid=None, folder=gone, has_pacs=True) == "pacs"
    assert series_route("1.2", open_uid=None, folder=gone, has_pacs=False) == "ask"


def test_queue_route_uses_the_open_series_and_the_pacs(
    ct: tuple[Path, Series], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PACS_MASK_DICOMWEB_URL", raising=False)
    folder, series = ct
    session = Session()
    uid = series.series_instance_uid
    assert session.queue_route(uid, None) == "ask"
    assert session.queue_route(uid, str(folder)) == "folder"
    session.set_pacs_settings(PacsSettings(url="http://orthanc/dicom-web"))
    assert session.queue_route(uid, None) == "pacs"
    session.open_series(series, folder_source(folder, series))
    assert session.queue_route(uid, None) == "open"
    assert session.queue_route("1.2.3.4", str(tmp_path / "gone")) == "pacs"


def test_after_a_decision_the_next_item_is_offered() -> None:
    state = ReviewQueueState()
    first, second = queue_item("g1"), queue_item("g2", "Roe^Rick")
    state.opened(first)
    assert state.is_current("g1")
    assert not state.is_current("g2")
    step = state.decided(decided(first), second, more_on_server=True)
    assert step.offer == "Roe, Rick · liver-seg 2"
    assert step.status == "liver-seg 2 approved. Next in queue: Roe, Rick · liver-seg 2"
    assert state.current is None
    assert state.upcoming is second

    state.opened(second)
    assert state.upcoming is None
    step = state.decided(decided(second, "rejected"), None, more_on_server=True)
    assert step.offer == "(load the next page)"
    assert step.status == "liver-seg 2 rejected. More groups wait on the server."

    state.opened(first)
    step = state.decided(decided(first), None, more_on_server=False)
    assert step.offer is None
    assert step.status == "liver-seg 2 approved. The review queue is empty."


# --- compare: "Next disagreement" (F9) ----------------------------------------------------------------------


def comparison(dice_by_slice: dict[int, float | None]) -> Comparison:
    def label(dice: float | None) -> dict[str, Any]:
        return {
            "dice": dice,
            "voxels_a": 10,
            "voxels_b": 12,
            "volume_a_ml": 1.0,
            "volume_b_ml": 1.2,
            "volume_diff_ml": 0.2,
        }

    return msgspec.convert(
        {
            "a": "ga",
            "b": "gb",
            "labels": {"1": label(0.75)},
            "totals": label(0.75),
            "slices": [
                {"slice_index": i, "dice": d, "labels": {"1": {"dice": d, "voxels_a": 1, "voxels_b": 1}}}
                for i, d in dice_by_slice.items()
            ],
        },
        Comparison,
    )


def test_next_disagreement_steps_through_slices_below_the_threshold_and_wraps() -> None:
    answer = comparison({2: 0.95, 4: 0.5, 6: None, 9: 0.79, 12: 0.8})
    assert DEFAULT_DICE_THRESHOLD == 0.8
    assert disagreements(answer, DEFAULT_DICE_THRESHOLD) == [4, 9]  # 0.8 is not below; empty is skipped
    step = next_disagreement(answer, DEFAULT_DICE_THRESHOLD, -1)
    assert (step.slice_index, step.message) == (4, "Slice 4: Dice 0.500 (1 of 2 below 0.80)")
    assert next_disagreement(answer, DEFAULT_DICE_THRESHOLD, 4).slice_index == 9
    assert next_disagreement(answer, DEFAULT_DICE_THRESHOLD, 9).slice_index == 4  # wraps
    assert next_disagreement(answer, 0.81, 9).slice_index == 12
    none = next_disagreement(answer, 0.1, 0)
    assert (none.slice_index, none.message) == (None, "No slice has a Dice below 0.10.")
    nothing = next_disagreement(None, DEFAULT_DICE_THRESHOLD, 0)
    assert nothing.slice_index is None
    assert nothing.message.startswith("Nothing compared yet")
    assert compare_summary(answer, DEFAULT_DICE_THRESHOLD) == (
        "Overall Dice 0.750. 5 slice(s) with a mask in either group; 2 with Dice below 0.80."
    )


# --- series on screen ---------------------------------------------------------------------------------------


def test_groups_are_drawn_only_on_a_complete_series(ct: tuple[Path, Series]) -> None:
    folder, series = ct
    arriving = True
    session = Session(streaming=lambda: arriving)
    assert (session.group_view_blocker() or "").startswith("Open the annotation's DICOM series first")
    assert (session.compare_view_blocker() or "").startswith("Open the annotation's DICOM series")
    session.open_series(series, SeriesSource("pacs", series.series_instance_uid, series.study_instance_uid))
    assert session.open_series_uid == series.series_instance_uid
    assert (session.group_view_blocker() or "").startswith("The series is still arriving")
    assert (session.compare_view_blocker() or "").startswith("The series is still arriving")
    assert not session.needs_series_for(annotation_of(load_series(folder)))
    arriving = False
    assert session.group_view_blocker() is None
    assert session.compare_view_blocker() is None
    session.update_series(series)
    session.close()
