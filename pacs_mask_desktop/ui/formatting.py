"""Small text helpers shared by the panels (sizes, rates, timestamps, error messages)."""

from __future__ import annotations

from datetime import datetime

from pacs_mask_desktop.core.api_client import ApiError
from pacs_mask_desktop.core.pacs import PacsError
from pacs_mask_desktop.core.progress import human_bytes
from pacs_mask_desktop.ui.workers import WorkFailure

__all__ = ["failure_text", "human_bytes", "short_time", "slice_text"]


def slice_text(index: int, count: int) -> str:
    """How a person reads a slice number: the 0-based slice index, with the series' range.

    One convention everywhere (viewer, tables, messages, CLI, server errors, mask file names such as
    ``mask_0007.png``): slice numbers are the 0-based ``slice_index``, so a file name and the number
    next to it in a table never disagree by one.
    """
    return f"Slice {index} of 0–{max(count - 1, 0)}"


def short_time(value: datetime | str | None) -> str:
    """A moment from the server (a decoded ``datetime``, or an ISO timestamp) as local ``YYYY-MM-DD HH:MM``."""
    if not value:
        return ""
    if isinstance(value, datetime):
        moment = value
    else:
        try:
            moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return value
    return moment.astimezone().strftime("%Y-%m-%d %H:%M")


def failure_text(failure: WorkFailure | BaseException) -> str:
    """A sentence for the user: the server's message for API errors, the exception text otherwise."""
    error = failure.error if isinstance(failure, WorkFailure) else failure
    if isinstance(error, ApiError):
        if error.status == 403:
            return f"Not allowed: {error.message} (your token's role cannot do this)."
        return error.message
    if isinstance(error, PacsError):
        return error.message
    text = str(error) or error.__class__.__name__
    return text if isinstance(error, OSError | ValueError) else f"{error.__class__.__name__}: {text}"
