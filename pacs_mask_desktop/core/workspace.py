"""What the desktop app has open, and the rules for changing it (napari's ``ViewerModel`` idea, no Qt).

The window shows one series, one chosen annotation and one set of dropped masks at a time. Which of
them must go when another series opens, whether the chosen annotation belongs to the open series and
whether an annotation's series has to be fetched from the PACS are rules, kept here so they are tested
without widgets and so ``MainWindow`` only applies their answers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from server.contract.messages import AnnotationOut


@dataclass(frozen=True, slots=True)
class SeriesSource:
    """Where the open series came from: a local folder, or the PACS (study and series UIDs)."""

    kind: Literal["folder", "pacs"]
    series_instance_uid: str
    study_instance_uid: str | None = None
    folder: Path | None = None

    def describe(self) -> str:
        """A short phrase for the status bar and dialogs."""
        if self.kind == "pacs":
            return f"series {self.series_instance_uid} from the PACS"
        return f"folder {self.folder}" if self.folder is not None else f"series {self.series_instance_uid}"


@dataclass(frozen=True, slots=True)
class Cleared:
    """What opening a series dropped, so the window clears the matching widgets and says so."""

    series: bool = False
    """Another series replaced an open one (the overlay and a review in progress go with it)."""
    masks: bool = False
    annotation: bool = False

    def sentence(self) -> str:
        """``""`` when nothing was dropped, else what was cleared and why."""
        parts = [
            name
            for name, flag in (("the dropped masks", self.masks), ("the annotation", self.annotation))
            if flag
        ]
        if not parts:
            return ""
        return f"Cleared {' and '.join(parts)} of the previous series."


@dataclass(slots=True)
class Workspace:
    """The open series (its UID and source), the chosen annotation and the dropped mask paths."""

    source: SeriesSource | None = None
    annotation: AnnotationOut | None = None
    mask_paths: list[Path] = field(default_factory=list)

    @property
    def series_uid(self) -> str | None:
        """SeriesInstanceUID of the open series, ``None`` when nothing is open."""
        return self.source.series_instance_uid if self.source is not None else None

    def open_series(self, source: SeriesSource) -> Cleared:
        """Make ``source`` the open series; returns what no longer applies and was dropped.

        Reopening the same series keeps everything. Another series drops the masks (they were checked
        against the old slices, and an overlay of them would sit on the wrong images) and the chosen
        annotation unless it names the new series. Masks dropped before any series was open are kept:
        they are matched against the first series that opens.
        """
        previous = self.series_uid
        self.source = source
        if previous is None or previous == source.series_instance_uid:
            return Cleared()
        cleared_masks = bool(self.mask_paths)
        self.mask_paths = []
        cleared_annotation = self.annotation is not None and not self.annotation_matches()
        if cleared_annotation:
            self.annotation = None
        return Cleared(series=True, masks=cleared_masks, annotation=cleared_annotation)

    def close_series(self) -> None:
        """Nothing open any more (masks and annotation stay)."""
        self.source = None

    def annotation_matches(self) -> bool:
        """True when an annotation is chosen and a series is open and they are the same series."""
        return (
            self.annotation is not None
            and self.source is not None
            and self.annotation.series_instance_uid == self.source.series_instance_uid
        )

    def needs_series_for(self, annotation: AnnotationOut) -> bool:
        """True when ``annotation``'s series is not the one open (the app then offers the PACS)."""
        return annotation.series_instance_uid != self.series_uid

    @property
    def opened_from_pacs(self) -> bool:
        """True when the open series was retrieved from the PACS."""
        return self.source is not None and self.source.kind == "pacs"
