"""The rules of what the app keeps open when another series opens (no Qt)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from pacs_mask_desktop.core.workspace import Cleared, SeriesSource, Workspace
from server.contract.messages import AnnotationOut

CT = SeriesSource("folder", "1.2.3.1", "1.2.3", Path("ct"))
MR = SeriesSource("pacs", "1.2.9.1", "1.2.9")


def annotation(annotation_id: int, series: SeriesSource) -> AnnotationOut:
    """An annotation of ``series`` as the server returns it."""
    return AnnotationOut(
        id=annotation_id,
        study_instance_uid=series.study_instance_uid or "1.2",
        series_instance_uid=series.series_instance_uid,
        patient_id=None,
        description=None,
        created_by="test",
        created_at=datetime.now(UTC),
    )


def test_first_series_keeps_masks_dropped_before_it() -> None:
    ws = Workspace(mask_paths=[Path("masks")], annotation=annotation(1, CT))
    assert ws.open_series(CT) == Cleared()
    assert ws.mask_paths == [Path("masks")]
    assert ws.annotation_matches()


def test_another_series_clears_masks_and_a_foreign_annotation() -> None:
    ws = Workspace()
    ws.open_series(CT)
    ws.mask_paths = [Path("masks")]
    ws.annotation = annotation(1, CT)
    cleared = ws.open_series(MR)
    assert cleared == Cleared(series=True, masks=True, annotation=True)
    assert ws.mask_paths == []
    assert ws.annotation is None
    assert ws.opened_from_pacs
    assert "masks" in cleared.sentence()
    assert "annotation" in cleared.sentence()


def test_annotation_of_the_new_series_is_kept() -> None:
    """The demo and resume choose the annotation first, then open its series."""
    ws = Workspace()
    ws.open_series(CT)
    ws.annotation = annotation(2, MR)
    assert ws.open_series(MR) == Cleared(series=True)
    assert ws.annotation_matches()


def test_reopening_the_same_series_keeps_everything() -> None:
    ws = Workspace()
    ws.open_series(CT)
    ws.mask_paths = [Path("masks")]
    assert ws.open_series(CT) == Cleared()
    assert ws.mask_paths == [Path("masks")]


def test_needs_series_for() -> None:
    ws = Workspace()
    chosen = annotation(3, MR)
    assert ws.needs_series_for(chosen)
    ws.open_series(MR)
    assert not ws.needs_series_for(chosen)
