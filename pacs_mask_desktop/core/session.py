"""The desktop app's state and rules without Qt: what is open, what may be uploaded, what comes next.

napari keeps its viewer's state in a Qt-free ``ViewerModel`` that the ``_qt`` layer observes; Anki keeps
its collection logic in ``pylib``. :class:`Session` is that model for the main window: the open series
(through :class:`~pacs_mask_desktop.core.workspace.Workspace`, which holds the rules of what a new series
clears), the chosen annotation, the dropped masks and their matching to slices, the server connection,
the PACS settings and client, and whether a series is still streaming in. Widgets call its methods and
subscribe to its :class:`Event` lists; they keep only what is Qt (drawing, dialogs, workers).

The rules live here as methods or plain functions so they are tested without widgets
(``tests/core/test_session.py``): which masks may be uploaded and why not, which journal entries belong
to the connected server, how a review-queue item's series gets opened and what "Next in queue" offers
after a decision, and which slice "Next disagreement" (F9) of a comparison goes to.

Heavy modules (pydicom through the PACS helpers) are imported where used: the ``pacs-mask`` CLI never
imports this module, and the window imports it before any series is open.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, Literal, TypeVar
from urllib.parse import urlparse

from pacs_mask_desktop.core.plan import UPLOADABLE_STATUSES
from pacs_mask_desktop.core.workspace import Cleared, SeriesSource, Workspace

if TYPE_CHECKING:
    from pacs_mask_desktop.core.api_client import ApiClient
    from pacs_mask_desktop.core.dicom_series import Series
    from pacs_mask_desktop.core.events import UploadResult
    from pacs_mask_desktop.core.journal import JournalEntry
    from pacs_mask_desktop.core.pacs import PacsClient
    from pacs_mask_desktop.core.pacs_open import PacsSettings
    from pacs_mask_desktop.core.plan import PreparedUpload
    from server.contract.messages import AnnotationOut, ClientConfig, Comparison, GroupOut, QueueItem

T = TypeVar("T")

DEFAULT_DICE_THRESHOLD = 0.8
"""A compared slice whose Dice is below this is a disagreement ("Next disagreement", F9)."""
FAILED_SLICES_LISTED = 15
"""How many failed slices the "Some slices failed" message names before "… and N more"."""
SeriesRoute = Literal["open", "folder", "pacs", "ask"]


class Event(Generic[T]):
    """Callbacks called, in the order they connected, with one value each time the event fires.

    The Qt-free counterpart of a signal: widgets ``connect`` to the session's events; an exception in a
    callback propagates to whoever changed the state (nothing is swallowed).
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self._callbacks: list[Callable[[T], object]] = []

    def connect(self, callback: Callable[[T], object]) -> Callable[[T], object]:
        """Call ``callback`` on every emit; returns it (usable as a decorator)."""
        self._callbacks.append(callback)
        return callback

    def disconnect(self, callback: Callable[[T], object]) -> None:
        """Stop calling ``callback``; ``ValueError`` when it was not connected."""
        try:
            self._callbacks.remove(callback)
        except ValueError:
            raise ValueError(f"{callback!r} is not connected to the {self.name} event") from None

    def emit(self, value: T) -> None:
        """Call every connected callback with ``value``."""
        for callback in list(self._callbacks):
            callback(value)


# --- connection ------------------------------------------------------------------------------------------


def is_loopback(url: str) -> bool:
    """True for URLs on this computer (how the bundled server's old URLs are recognised)."""
    host = urlparse(url).hostname or ""
    return host in ("127.0.0.1", "localhost", "::1")


@dataclass(frozen=True, slots=True)
class ServerLink:
    """The server the app is connected to: its URL and whether it is the bundled one."""

    url: str
    embedded: bool

    @property
    def kind(self) -> str:
        """How the status bar names it."""
        return "bundled server" if self.embedded else "server"

    def owns(self, entry: JournalEntry) -> bool:
        """True when the journal entry ``entry`` is an upload to this server (the one to offer resuming).

        The same URL (trailing slash ignored) is ours; so is any loopback URL while the bundled server
        runs, since it may have started on another free port than last time.
        """
        if not self.url:
            return False
        if entry.server.rstrip("/") == self.url.rstrip("/"):
            return True
        return self.embedded and is_loopback(entry.server)


# --- masks -----------------------------------------------------------------------------------------------


def uploadable_count(prepared: PreparedUpload) -> int:
    """How many checked mask files do not block the upload."""
    return sum(1 for row in prepared.rows if row.status in UPLOADABLE_STATUSES)


def drawable_masks(prepared: PreparedUpload) -> dict[int, Path]:
    """Slice index → mask file of the checked masks that can be drawn on the series (uploadable rows)."""
    return {
        row.slice_index: row.path
        for row in prepared.rows
        if row.status in UPLOADABLE_STATUSES and row.slice_index is not None and row.path is not None
    }


def prepared_summary(prepared: PreparedUpload) -> str:
    """The status-bar sentence after the masks were checked."""
    total = len(prepared.rows)
    bad = total - uploadable_count(prepared)
    return (
        f"{total} mask file(s) checked: {bad} with problems"
        if bad
        else f"{total} mask file(s) checked: all can be uploaded"
    )


def richest_slice(prepared: PreparedUpload) -> int | None:
    """The middle one of the slices whose masks have the most labels (where the demo starts), if any."""
    richest = max((len(row.labels) for row in prepared.rows), default=0)
    indexes = [row.slice_index for row in prepared.rows if richest and len(row.labels) == richest]
    return indexes[len(indexes) // 2] if indexes else None


def upload_failure(result: UploadResult) -> tuple[str, str] | None:
    """The title and text telling why an upload that did not complete a group failed; ``None`` when the
    person cancelled it."""
    if result.status == "cancelled":
        return None
    if result.problems:  # masks whose pixels failed to decode while uploading: nothing was completed
        listed = "\n".join(
            f"{p['filename'] or '—'}: {p['message']}" for p in result.problems[:FAILED_SLICES_LISTED]
        )
        extra = len(result.problems) - FAILED_SLICES_LISTED
        more = f"\n… and {extra} more" if extra > 0 else ""
        return (
            "Masks need attention",
            f"{result.message}\n\n{listed}{more}\n\nFix these files, then use Check and retry "
            "(Ctrl+Shift+R): the masks are checked again and only what is missing is sent.",
        )
    if not result.failed:
        return "Upload failed", result.message
    failed = sorted(result.failed.items())
    reasons = "\n".join(f"{name}: {why}" for name, why in failed[:FAILED_SLICES_LISTED])
    more = f"\n… and {len(failed) - FAILED_SLICES_LISTED} more" if len(failed) > FAILED_SLICES_LISTED else ""
    return (
        "Some slices failed",
        f"{result.message}\n\n{reasons}{more}\n\nUse Retry failed (Ctrl+Shift+R) to send only these again.",
    )


def resume_inputs(
    entry: JournalEntry, remembered: Mapping[str, Any] | None
) -> tuple[list[Path], Path | None]:
    """The masks and series folder an interrupted upload used: what the app remembered when the group
    opened, else the journal's source path (masks only)."""
    info = remembered or {}
    masks = [Path(p) for p in info.get("masks") or ([entry.source_path] if entry.source_path else [])]
    series_dir = Path(info["series"]) if info.get("series") else None
    return masks, series_dir


# --- review queue ----------------------------------------------------------------------------------------


def person_name(value: str | None) -> str:
    """A DICOM person name (``Family^Given^Middle``) as people write it: ``Family, Given Middle``."""
    parts = [p.strip() for p in (value or "").split("^")]
    family, rest = parts[0], " ".join(p for p in parts[1:] if p)
    return f"{family}, {rest}" if family and rest else family or rest


def item_title(item: QueueItem) -> str:
    """A short phrase for a review-queue item: patient, model and version."""
    patient = person_name(item.patient_name) or item.patient_id or "unknown patient"
    return f"{patient} · {item.model_name} {item.version}"


def series_route(series_uid: str, *, open_uid: str | None, folder: str | None, has_pacs: bool) -> SeriesRoute:
    """How the series ``series_uid`` of a queue item gets on screen: it is the ``open`` one, or is reopened
    from the local ``folder`` it was last opened from (when that still exists), or streamed from the
    ``pacs``, or the reviewer is asked (``ask``) where it is."""
    if open_uid == series_uid:
        return "open"
    if folder and Path(folder).is_dir():
        return "folder"
    return "pacs" if has_pacs else "ask"


@dataclass(frozen=True, slots=True)
class QueueStep:
    """What the review panel offers after a decision: ``offer`` is the "Next in queue" button's text
    (``None`` hides it) and ``status`` the status-bar sentence."""

    offer: str | None
    status: str


class ReviewQueueState:
    """The queue item open in the review panel and the one "Next in queue" opens."""

    def __init__(self) -> None:
        self.current: QueueItem | None = None
        self.upcoming: QueueItem | None = None

    def opened(self, item: QueueItem) -> None:
        """``item``'s group is open in the review panel."""
        self.current = item
        self.upcoming = None

    def is_current(self, group_id: str) -> bool:
        """True when ``group_id`` is the group opened from the queue."""
        return self.current is not None and self.current.id == group_id

    def decided(self, group: GroupOut, following: QueueItem | None, *, more_on_server: bool) -> QueueStep:
        """The opened group was decided: ``following`` is the item listed after it (it becomes
        ``upcoming``), ``more_on_server`` whether the server has another page."""
        self.current = None
        self.upcoming = following
        decided = f"{group.model_name} {group.version} {group.review_status}"
        if following is not None:
            return QueueStep(item_title(following), f"{decided}. Next in queue: {item_title(following)}")
        if more_on_server:
            return QueueStep("(load the next page)", f"{decided}. More groups wait on the server.")
        return QueueStep(None, f"{decided}. The review queue is empty.")


# --- compare ---------------------------------------------------------------------------------------------


def disagreements(answer: Comparison, threshold: float) -> list[int]:
    """Slice indexes whose Dice is below ``threshold`` (slices where both are empty are not counted)."""
    return [s.slice_index for s in answer.slices if s.dice is not None and s.dice < threshold]


def format_number(value: float | None, digits: int = 3) -> str:
    """A Dice or volume for people: ``digits`` decimals, an en dash when there is none."""
    return "–" if value is None else f"{value:.{digits}f}"


@dataclass(frozen=True, slots=True)
class Disagreement:
    """Where "Next disagreement" goes: ``slice_index`` (``None`` when nowhere) and the status sentence."""

    slice_index: int | None
    message: str


def next_disagreement(answer: Comparison | None, threshold: float, current: int) -> Disagreement:
    """The next slice after ``current`` whose Dice is below ``threshold``, wrapping to the first one."""
    if answer is None:
        return Disagreement(None, 'Nothing compared yet: use "Compare with…" in the Groups tab.')
    below = disagreements(answer, threshold)
    if not below:
        return Disagreement(None, f"No slice has a Dice below {threshold:.2f}.")
    target = next((i for i in below if i > current), below[0])
    dice = next(s.dice for s in answer.slices if s.slice_index == target)
    return Disagreement(
        target,
        f"Slice {target}: Dice {format_number(dice)} ({below.index(target) + 1} of {len(below)} below {threshold:.2f})",
    )


def compare_summary(answer: Comparison, threshold: float) -> str:
    """The sentence under the compare tables: overall Dice and how many slices disagree."""
    below = disagreements(answer, threshold)
    return (
        f"Overall Dice {format_number(answer.totals.dice)}. {len(answer.slices)} slice(s) with a mask in "
        f"either group; {len(below)} with Dice below {threshold:.2f}."
    )


# --- the session -----------------------------------------------------------------------------------------


class Session:
    """The main window's state and its rules; the window and its panels observe it and call it.

    ``streaming`` answers whether a PACS series is still arriving (the window's PACS loader knows).

    Events (each an :class:`Event`): ``annotation_changed`` (the chosen annotation or ``None``),
    ``prepared_changed`` (the checked masks or ``None``), ``series_opened`` (what opening a series
    cleared, a :class:`~pacs_mask_desktop.core.workspace.Cleared`), ``connection_changed`` (the
    :class:`ServerLink` or ``None`` when the connection failed).
    """

    def __init__(
        self,
        pacs_settings: PacsSettings | None = None,
        *,
        streaming: Callable[[], bool] = lambda: False,
    ) -> None:
        self.workspace = Workspace()
        self.series: Series | None = None
        self.series_dir: Path | None = None
        self.prepared: PreparedUpload | None = None
        self.api: ApiClient | None = None
        self.link: ServerLink | None = None
        self.server_config: ClientConfig | None = None  # GET /api/config once connected
        self._pacs_settings = pacs_settings
        self._pacs_client: PacsClient | None = None
        self._streaming = streaming
        self.review_queue = ReviewQueueState()
        self.annotation_changed: Event[AnnotationOut | None] = Event("annotation_changed")
        self.prepared_changed: Event[PreparedUpload | None] = Event("prepared_changed")
        self.series_opened: Event[Cleared] = Event("series_opened")
        self.connection_changed: Event[ServerLink | None] = Event("connection_changed")

    @property
    def series_arriving(self) -> bool:
        """True while a PACS series streams in (slice indexes are final only once it is complete);
        asked of the ``streaming`` probe the session was made with (the window's PACS loader)."""
        return self._streaming()

    # --- connection -------------------------------------------------------------------------------------

    def connected(self, api: ApiClient, url: str, *, embedded: bool) -> ServerLink:
        """Connected to the server at ``url``: its configuration is to be read again, the PACS client
        (which may be the server's PACS) is rebuilt on next use."""
        self.api = api
        self.link = ServerLink(url, embedded)
        self.server_config = None
        self.forget_pacs_client()
        self.connection_changed.emit(self.link)
        return self.link

    def connecting(self) -> None:
        """A (re)connection started: the previous server's client is closed, its journal entries are no
        longer "ours" until the new server answers."""
        self.link = None

    def disconnected(self) -> None:
        """The connection failed: nothing goes to a server until it is back."""
        self.api = None
        self.link = None
        self.connection_changed.emit(None)

    def entry_is_ours(self, entry: JournalEntry) -> bool:
        """True when the journal entry ``entry`` is an upload to the connected server."""
        return self.link is not None and self.link.owns(entry)

    def set_server_config(self, config: ClientConfig) -> None:
        """The server's ``GET /api/config`` answer arrived (it may name the PACS)."""
        self.server_config = config
        self.forget_pacs_client()

    # --- PACS -------------------------------------------------------------------------------------------

    @property
    def pacs_settings(self) -> PacsSettings:
        """This workstation's PACS settings (defaults when none were given)."""
        if self._pacs_settings is None:
            from pacs_mask_desktop.core.pacs_open import PacsSettings

            self._pacs_settings = PacsSettings()
        return self._pacs_settings

    def set_pacs_settings(self, settings: PacsSettings, *, new_password: bool = False) -> bool:
        """Use ``settings``; True (and the PACS client is rebuilt on next use) when they or the password
        changed."""
        if settings == self.pacs_settings and not new_password:
            return False
        self._pacs_settings = settings
        self.forget_pacs_client()
        return True

    def pacs_url(self) -> str | None:
        """Where the PACS is (the workstation's setting, else the environment, else the server's)."""
        from pacs_mask_desktop.core.pacs_open import pacs_url

        return pacs_url(self.pacs_settings, self.server_config)

    @property
    def has_pacs(self) -> bool:
        """True when a PACS is known."""
        return self.pacs_url() is not None

    def pacs_client(self, password: Callable[[PacsSettings, str | None], str]) -> PacsClient:
        """The PACS client, built on first use (``password(settings, url)`` supplies the password);
        ``PacsError`` when no PACS is known."""
        if self._pacs_client is None:
            from pacs_mask_desktop.core.pacs_open import desktop_pacs_client

            self._pacs_client = desktop_pacs_client(
                self.pacs_settings, self.server_config, password(self.pacs_settings, self.pacs_url())
            )
        return self._pacs_client

    def use_pacs_client(self, client: PacsClient) -> None:
        """Use ``client`` for the PACS (scripts and tests with their own cache and credentials)."""
        self.forget_pacs_client()
        self._pacs_client = client

    def forget_pacs_client(self) -> None:
        """Drop the PACS client (settings or server changed); it is closed unless a series still streams
        from it (the stream then owns it until it ends)."""
        if self._pacs_client is not None and not self.series_arriving:
            self._pacs_client.close()
        self._pacs_client = None

    def close(self) -> None:
        """The app quits: close the PACS client and drop the open series' frame cache."""
        if self._pacs_client is not None:
            self._pacs_client.close()
            self._pacs_client = None
        if self.series is not None:
            self.series.clear_cache()

    # --- series -----------------------------------------------------------------------------------------

    def open_series(self, series: Series, source: SeriesSource) -> Cleared:
        """``series`` (from ``source``) is now the open one. Another series than the open one drops the
        checked masks (and, by the workspace's rules, the dropped masks and a foreign annotation);
        returns what was dropped, also emitted as ``series_opened``."""
        cleared = self.workspace.open_series(source)
        self.series = series
        self.series_dir = source.folder
        if cleared.series:
            self._set_prepared(None)
        if cleared.annotation:
            self.annotation_changed.emit(None)
        self.series_opened.emit(cleared)
        return cleared

    def update_series(self, series: Series) -> None:
        """More instances of the streaming PACS series arrived (same series, reordered)."""
        self.series = series

    @property
    def source(self) -> SeriesSource | None:
        """Where the open series came from."""
        return self.workspace.source

    @property
    def open_series_uid(self) -> str | None:
        """SeriesInstanceUID of the series on screen, ``None`` when none is."""
        return self.workspace.series_uid if self.series is not None else None

    def needs_series_for(self, annotation: AnnotationOut) -> bool:
        """True when ``annotation``'s series should be opened (from the PACS): it is not the open one
        and no series is still arriving."""
        return self.workspace.needs_series_for(annotation) and not self.series_arriving

    # --- annotation -------------------------------------------------------------------------------------

    @property
    def annotation(self) -> AnnotationOut | None:
        """The chosen annotation (uploads go to it), ``None`` when none is chosen."""
        return self.workspace.annotation

    def set_annotation(self, annotation: AnnotationOut | None) -> None:
        """Choose ``annotation`` (``None``: none); emitted as ``annotation_changed``."""
        self.workspace.annotation = annotation
        self.annotation_changed.emit(annotation)

    def annotation_mismatch(self) -> str | None:
        """A note when the chosen annotation is not of the open series, else ``None``."""
        if self.annotation is None or self.series is None:
            return None
        if self.annotation.series_instance_uid == self.series.series_instance_uid:
            return None
        return (
            f"Note: annotation {self.annotation.id} belongs to another series than the one open; "
            "pick its annotation or create one from the open series."
        )

    # --- masks ------------------------------------------------------------------------------------------

    @property
    def mask_paths(self) -> list[Path]:
        """The dropped mask files and folders."""
        return self.workspace.mask_paths

    def set_masks(self, paths: Sequence[Path]) -> None:
        """Use ``paths`` (files and/or folders) as the masks to check, show and upload."""
        self.workspace.mask_paths = [Path(p) for p in paths]

    def clear_masks(self) -> None:
        """Forget the dropped masks and their check."""
        self.workspace.mask_paths = []
        self._set_prepared(None)

    def set_prepared(self, prepared: PreparedUpload) -> None:
        """The masks were checked against the series (``drawable_masks`` says which to draw)."""
        self._set_prepared(prepared)

    def _set_prepared(self, prepared: PreparedUpload | None) -> None:
        self.prepared = prepared
        self.prepared_changed.emit(prepared)

    def matching_fields(self, fields: Mapping[str, Any]) -> dict[str, Any]:
        """The group fields to check the masks with before the person typed them (placeholders for the
        ones still empty; annotation 1 stands in when none is chosen)."""
        return {
            "annotation_id": self.annotation.id if self.annotation else 1,
            "model_name": fields["model_name"] or "check",
            "version": fields["version"] or "0",
            "source": fields["source"],
        }

    def should_match_on_open(self, source: SeriesSource) -> bool:
        """True when dropped masks are to be matched as soon as ``source`` opens (a PACS series is matched
        once complete)."""
        return bool(self.mask_paths) and source.kind == "folder"

    # --- upload -----------------------------------------------------------------------------------------

    def upload_blocker(self, fields: Mapping[str, Any]) -> str | None:
        """Why the masks cannot be uploaded with the typed group ``fields`` yet, or ``None`` when they can
        be checked and sent."""
        if self.api is None:
            return "Not connected to a server (see the status bar and File ▸ Settings)."
        if self.annotation is None:
            return "Pick an annotation first (left panel), or create one from the open series."
        if not self.mask_paths:
            return "Drop mask files or a folder of masks on the window first."
        if not fields["model_name"] or not fields["version"]:
            return "Enter a model name and a version for the new mask group."
        if self.series_arriving:
            return "The series is still arriving from the PACS; upload once every slice is in."
        if self.series is not None and self.annotation.series_instance_uid != self.series.series_instance_uid:
            return (
                f"Annotation {self.annotation.id} belongs to another series than the one open. "
                "Pick the annotation of this series or create one from it."
            )
        return None

    def upload_fields(self, fields: Mapping[str, Any]) -> dict[str, Any]:
        """The group fields of an upload: the typed ones and the chosen annotation."""
        if self.annotation is None:
            raise ValueError("No annotation is chosen: check upload_blocker() first.")
        return {**fields, "annotation_id": self.annotation.id}

    def source_path(self) -> str:
        """What the journal records as the upload's source: the one input, or the first one's folder."""
        if not self.mask_paths:
            raise ValueError("No masks are dropped: there is no upload source.")
        if len(self.mask_paths) == 1:
            return str(self.mask_paths[0])
        return str(self.mask_paths[0].parent)

    def upload_source_record(self) -> dict[str, Any]:
        """What to remember for resuming a group's upload: masks, series folder and annotation."""
        return {
            "masks": [str(p) for p in self.mask_paths],
            "series": str(self.series_dir) if self.series_dir is not None else None,
            "annotation_id": self.annotation.id if self.annotation else None,
        }

    def series_is_open_at(self, folder: Path) -> bool:
        """True when the series opened from ``folder`` is the one on screen (resume keeps it)."""
        return self.series_dir == folder and self.series is not None

    # --- review -----------------------------------------------------------------------------------------

    def queue_route(self, series_uid: str, folder: str | None) -> SeriesRoute:
        """How a queue item's series ``series_uid`` gets on screen (see :func:`series_route`)."""
        return series_route(series_uid, open_uid=self.open_series_uid, folder=folder, has_pacs=self.has_pacs)

    def group_view_blocker(self) -> str | None:
        """Why a stored group cannot be drawn on the series now, or ``None``."""
        if self.series is None:
            return "Open the annotation's DICOM series first to see the group on it."
        if self.series_arriving:  # slice indexes are final only once every instance is in
            return "The series is still arriving from the PACS; show the group once it is complete."
        return None

    def compare_view_blocker(self) -> str | None:
        """Why a comparison of two groups cannot be drawn on the series now, or ``None``."""
        if self.series is None:
            return "Open the annotation's DICOM series to see both groups on it."
        if self.series_arriving:
            return "The series is still arriving from the PACS; compare again once it is complete."
        return None
