"""Running one upload with its resume journal: the single way every caller starts an upload.

The CLI, the desktop app's upload worker, the Python API (:mod:`~pacs_mask_desktop.core.inference`),
the watch worker and the self-test all upload through :func:`upload_with_journal`: it opens the
journal, runs :class:`~pacs_mask_desktop.core.upload.UploadEngine` on the plan and closes the engine's
storage connections and the journal however the run ended (an exception from an event callback
included). Resume comes from the journal: a second call for the same server, annotation, model name
and version continues the pending group and sends only what has not landed.

A plan from ``prepare(defer_decode=True)`` (the CLI, the desktop app's upload) decodes its pixels while
the PUTs run. Each call decodes them afresh, so the same plan can be run again after a cancel or a
failure (the desktop app's Resume and Retry failed): a pixel check stopped by the earlier run cannot
be restarted.
"""

from __future__ import annotations

import threading
from dataclasses import replace
from pathlib import Path

from pacs_mask_desktop.core.api_client import ApiClient
from pacs_mask_desktop.core.events import EventSink, UploadResult
from pacs_mask_desktop.core.journal import Journal
from pacs_mask_desktop.core.paths import journal_path as default_journal_path
from pacs_mask_desktop.core.plan import PixelCheck, UploadPlan
from pacs_mask_desktop.core.upload import PUT_WORKERS, UploadEngine


def upload_with_journal(
    api: ApiClient,
    plan: UploadPlan,
    *,
    journal_path: Path | None = None,
    source_path: str | None = None,
    workers: int = PUT_WORKERS,
    check_workers: int | None = None,
    on_event: EventSink | None = None,
    cancel: threading.Event | None = None,
) -> UploadResult:
    """Upload ``plan`` through ``api``, recording the group and every landed slice in the journal.

    ``journal_path`` defaults to the journal shared by the CLI, the watch worker, the Python API and
    the desktop app (:func:`~pacs_mask_desktop.core.paths.journal_path`). ``source_path`` is recorded
    so the desktop app can offer to resume from the same files. ``check_workers`` is how many threads
    decode the pixels beside the PUTs (default: the plan's). ``on_event`` is called from the
    engine's worker threads; setting ``cancel`` stops the run (it ends ``cancelled``, resumable).
    Like :meth:`UploadEngine.run` this never raises for upload failures; an exception raised by
    ``on_event`` propagates, with the journal and connections closed.
    """
    if plan.pixel_check is not None:  # each run its own check (see the module docstring)
        used = plan.pixel_check
        plan = replace(plan, pixel_check=PixelCheck(used.slices, check_workers or used.workers))
    with Journal(journal_path if journal_path is not None else default_journal_path()) as journal:
        engine = UploadEngine(api, journal, workers=workers, on_event=on_event, cancel=cancel)
        try:
            return engine.run(plan, source_path=source_path)
        finally:
            engine.close()
