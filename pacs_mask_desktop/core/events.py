"""What the upload engine reports while it works; the CLI and the desktop app both consume these."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import msgspec

from server.contract import messages


class SliceState(StrEnum):
    """The life of one slice in an upload."""

    QUEUED = "queued"
    UPLOADING = "uploading"
    RETRYING = "retrying"
    DONE = "done"
    SKIPPED = "skipped"  # landed in an earlier run; not sent again
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class SliceEvent:
    """One slice changed state. ``attempt`` counts tries so far; ``error`` says why it retried or failed."""

    filename: str
    slice_index: int
    state: SliceState
    size: int
    attempt: int = 0
    error: str | None = None


@dataclass(frozen=True, slots=True)
class GroupEvent:
    """The upload as a whole moved on: ``kind`` is one of opened, resumed, signing, completing, complete,
    failed, cancelled."""

    kind: str
    group_id: str | None
    message: str


EventSink = Callable[[SliceEvent | GroupEvent], None]
"""Receives the engine's events (called from its worker threads)."""


@dataclass(slots=True)
class UploadResult:
    """How an upload ended. ``status`` is complete, incomplete (some slices failed) or cancelled.

    ``error_code`` is the server's error code when the server refused the upload as a whole (e.g.
    ``duplicate_group``, ``annotation_not_found``) or could not be reached (``unreachable``: the run gave
    up after its retry budget). ``uploaded`` counts the slices this run sent that landed, also when the
    run ended on a failed ``complete``; ``not_sent`` the slices it never tried because it gave up.
    ``problems`` (``{filename, code, message}``) are the masks whose pixels failed to decode while
    uploading (``error_code`` ``invalid_masks``): nothing was completed and the group stays pending.
    """

    status: str
    group_id: str | None
    message: str
    uploaded: int = 0
    skipped: int = 0
    failed: dict[str, str] = field(default_factory=dict)
    bytes_sent: int = 0
    seconds: float = 0.0
    group: messages.GroupOut | None = None
    error_code: str | None = None
    not_sent: int = 0
    problems: list[dict[str, Any]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when the group is complete on the server."""
        return self.status == "complete"

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready summary (``pacs-mask upload --json``)."""
        return {
            "status": self.status,
            "group_id": self.group_id,
            "message": self.message,
            "uploaded": self.uploaded,
            "skipped": self.skipped,
            "failed": [{"filename": k, "reason": v} for k, v in sorted(self.failed.items())],
            "not_sent": self.not_sent,
            "bytes_sent": self.bytes_sent,
            "seconds": round(self.seconds, 3),
            "group": None if self.group is None else msgspec.to_builtins(self.group),
            "error": self.error_code,
            "problems": self.problems,
        }
