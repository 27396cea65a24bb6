"""The upload engine: create (or continue) a group, send its slices, complete it.

Both the desktop app and the headless CLI/worker run uploads through :class:`UploadEngine`, started by
:func:`~pacs_mask_desktop.core.upload_run.upload_with_journal`. The engine orchestrates; the parts live
beside it:

- :mod:`~pacs_mask_desktop.core.slice_sender`: the PUTs, in parallel, with retries, waiting out an
  outage and giving up after the policy's ``give_up_after`` seconds without an answer (the result's
  ``error_code`` is then ``unreachable`` and says how to resume);
- :mod:`~pacs_mask_desktop.core.signed_urls`: signing URLs in batches ahead of the PUTs, re-issuing
  expired ones;
- :mod:`~pacs_mask_desktop.core.storage_answers`: what storage's answers mean (412: already stored,
  counted as sent; ``complete`` verifies the stored bytes).

The journal records the group and every slice that landed, so a second run after a crash, kill or power
loss continues the pending group and sends only what is missing. ``complete`` is idempotent on the
server, so a completed group is never created twice; slices it finds missing or different are sent
again, once.

A plan whose pixels are still to be decoded (``prepare(defer_decode=True)``, the CLI) carries a
:class:`~pacs_mask_desktop.core.plan.PixelCheck`: it decodes ahead of the PUTs, in its own threads;
a slice is signed and sent only once it has passed, and ``complete`` waits for all of it. A file
that fails is never signed or sent; the run ends ``incomplete`` with ``error_code`` ``invalid_masks``
and every such problem in ``problems``; nothing is completed and the group stays pending, so the
same command, once the files are fixed, resumes it and sends only what is missing.
"""

from __future__ import annotations

import threading
import time

import msgspec

from pacs_mask_desktop.core.api_client import ApiClient, ApiError
from pacs_mask_desktop.core.events import EventSink, GroupEvent, SliceEvent, SliceState, UploadResult
from pacs_mask_desktop.core.journal import Journal
from pacs_mask_desktop.core.plan import PlannedSlice, UploadPlan
from pacs_mask_desktop.core.slice_sender import SliceSender, UploadCancelled
from server.contract import messages
from server.contract.errors import ErrorCode


def group_request(plan: UploadPlan) -> messages.GroupCreate:
    """The ``POST /api/mask-group`` body for ``plan`` (empty params and label tables are left out).

    The label table is checked against the contract here; one that does not fit raises
    :class:`ApiError` (``invalid_value``) as the server would.
    """
    try:
        labels = msgspec.convert(plan.labels, dict[str, messages.LabelInfo]) if plan.labels else None
    except msgspec.ValidationError as exc:
        raise ApiError(422, ErrorCode.INVALID_VALUE, f"The label table is not valid: {exc}.") from None
    return messages.GroupCreate(
        annotation_id=plan.annotation_id,
        model_name=plan.model_name,
        version=plan.version,
        source=plan.source,
        expected_slices=plan.expected_slices,
        confidence=plan.confidence,
        params=plan.params or None,
        labels=labels,
    )


def complete_request(s: PlannedSlice) -> messages.SliceToComplete:
    """What ``complete`` registers for ``s``: name, index, size, checksum, labels and SOP Instance UID."""
    return messages.SliceToComplete(
        filename=s.filename,
        slice_index=s.slice_index,
        width=s.width,
        height=s.height,
        checksum=s.md5_hex,
        size=s.size,
        label=",".join(str(label) for label in s.labels) if s.labels else None,
        sop_instance_uid=s.sop_instance_uid or None,
    )


PUT_WORKERS = 8
"""Parallel PUTs when the caller does not say."""


class UploadEngine:
    """Runs one plan to a complete group. ``on_event`` is called from worker threads."""

    def __init__(
        self,
        api: ApiClient,
        journal: Journal | None = None,
        *,
        workers: int = PUT_WORKERS,
        max_attempts: int = 6,
        sign_batch: int = 500,
        put_timeout: float = 120.0,
        on_event: EventSink | None = None,
        cancel: threading.Event | None = None,
    ) -> None:
        self.api = api
        self.journal = journal
        self.workers = max(1, workers)
        self.max_attempts = max(1, max_attempts)
        self.sign_batch = max(1, min(sign_batch, 5000))
        self.cancel = cancel or threading.Event()
        self.put_timeout = put_timeout
        self._emit = on_event or (lambda _event: None)
        self._group_id: str | None = None  # the run's group once open: a cancelled run still names it
        self._sender = SliceSender(
            api,
            journal,
            workers=self.workers,
            max_attempts=self.max_attempts,
            sign_batch=self.sign_batch,
            put_timeout=put_timeout,
            emit=self._emit,
            cancel=self.cancel,
        )

    def close(self) -> None:
        """Close pooled storage connections."""
        self._sender.close()

    # --- the whole upload ----------------------------------------------------------------------------

    def run(self, plan: UploadPlan, *, source_path: str | None = None) -> UploadResult:
        """Upload ``plan``; never raises for upload failures, returns how it ended."""
        started = time.monotonic()
        self._group_id = None
        self._sender.reset()
        self.api.outage.reset()
        if plan.pixel_check is not None:
            plan.pixel_check.start()  # in slice order, as the PUTs go; it needs nothing from the server
        try:
            result = self._run(plan, source_path)
        except UploadCancelled:
            result = UploadResult(
                "cancelled", self._group_id, "The upload was cancelled; run it again to resume."
            )
        except ApiError as exc:
            result = UploadResult("incomplete", None, f"{exc.message}", error_code=exc.code)
        finally:
            if plan.pixel_check is not None:
                plan.pixel_check.cancel()  # a run that ended early does not need the rest decoded
        result.seconds = time.monotonic() - started
        self._emit(
            GroupEvent(
                result.status if result.status != "incomplete" else "failed", result.group_id, result.message
            )
        )
        return result

    def _run(self, plan: UploadPlan, source_path: str | None) -> UploadResult:
        slices = sorted(plan.slices, key=lambda s: s.slice_index)
        group_id, status, known = self._open_group(plan)
        self._group_id = group_id
        if status == "complete":
            for s in slices:
                self._emit(SliceEvent(s.filename, s.slice_index, SliceState.SKIPPED, s.size))
            return UploadResult(
                "complete",
                group_id,
                "This group was already complete on the server; nothing was sent.",
                skipped=len(slices),
                group=known,
            )
        if self.journal is not None:
            self.journal.start(
                group_id,
                server=self.api.base_url,
                annotation_id=plan.annotation_id,
                model_name=plan.model_name,
                version=plan.version,
                source_path=source_path,
                total=len(slices),
            )
        landed = self.journal.landed(group_id) if self.journal is not None else {}
        todo = [s for s in slices if landed.get(s.filename) != s.md5_hex]
        skipped = len(slices) - len(todo)
        todo_names = {s.filename for s in todo}  # a set: `s in todo` is quadratic over 1000s of slices
        check = plan.pixel_check
        for s in slices:
            state = SliceState.QUEUED if s.filename in todo_names else SliceState.SKIPPED
            self._emit(SliceEvent(s.filename, s.slice_index, state, s.size))

        failed, uploaded, sent_bytes = self._sender.send(group_id, todo, check)
        if self.cancel.is_set():  # what landed is counted: the summary says how far it got
            return UploadResult(
                "cancelled",
                group_id,
                f"The upload was cancelled; {uploaded + skipped} of {len(slices)} slice(s) have landed and "
                f"are kept. Run it again to resume: group {group_id} stays pending.",
                uploaded=uploaded,
                skipped=skipped,
                failed=failed,
                bytes_sent=sent_bytes,
            )
        if self._sender.gave_up:
            return self._gave_up_result(
                group_id, len(slices), uploaded=uploaded, skipped=skipped, failed=failed, sent=sent_bytes
            )
        if check is not None:
            problems = check.wait(self.cancel)
            if problems is None:
                raise UploadCancelled
            if problems:
                return UploadResult(
                    "incomplete",
                    group_id,
                    f"{len(problems)} mask(s) failed the pixel check while uploading; nothing was completed "
                    f"and group {group_id} stays pending. Fix the files and run the upload again: it sends "
                    "only what is missing or changed.",
                    uploaded=uploaded,
                    skipped=skipped,
                    failed=failed,
                    bytes_sent=sent_bytes,
                    error_code="invalid_masks",
                    problems=[
                        {"filename": p.filename, "code": p.code, "message": p.message} for p in problems
                    ],
                )
            slices = check.apply(slices)
        if failed:
            return UploadResult(
                "incomplete",
                group_id,
                f"{len(failed)} of {len(slices)} slice(s) failed; the group stays pending. Run the upload again "
                "to send only what is missing.",
                uploaded=uploaded,
                skipped=skipped,
                failed=failed,
                bytes_sent=sent_bytes,
            )
        self._emit(GroupEvent("completing", group_id, f"Registering {len(slices)} slices"))
        try:
            group = self._complete(group_id, slices)
        except ApiError as exc:
            # The slices landed (and are journaled) even though the group could not be registered: say so.
            return UploadResult(
                "incomplete",
                group_id,
                f"{exc.message} {uploaded + skipped} of {len(slices)} slice(s) have landed and are kept; group "
                f"{group_id} stays pending. Run the upload again to register it without sending them again.",
                uploaded=uploaded,
                skipped=skipped,
                bytes_sent=sent_bytes,
                error_code=exc.code,
            )
        if isinstance(group, UploadResult):
            group.uploaded += uploaded
            group.skipped = skipped
            group.bytes_sent += sent_bytes
            return group
        if self.journal is not None:
            self.journal.mark_complete(group_id)
        return UploadResult(
            "complete",
            group_id,
            f"{len(slices)} slices registered in group {group_id}.",
            uploaded=uploaded,
            skipped=skipped,
            bytes_sent=sent_bytes,
            group=group,
        )

    def _gave_up_result(
        self, group_id: str, total: int, *, uploaded: int, skipped: int, failed: dict[str, str], sent: int
    ) -> UploadResult:
        """The run stopped because nothing got through for the whole retry budget."""
        landed = uploaded + skipped
        return UploadResult(
            "incomplete",
            group_id,
            f"Gave up: the server or storage did not answer for {self._sender.outage.policy.give_up_after:g} s. "
            f"{landed} of {total} slice(s) have landed and are kept in the journal; group {group_id} stays "
            "pending. Run the same upload again when the server is back: it sends only what is missing.",
            uploaded=uploaded,
            skipped=skipped,
            failed=failed,
            bytes_sent=sent,
            not_sent=total - landed - len(failed),
            error_code=ErrorCode.UNREACHABLE,
        )

    def _open_group(self, plan: UploadPlan) -> tuple[str, str, messages.GroupOut | None]:
        """Continue the journal's pending group, or create one, or adopt the server's on a 409."""
        if self.journal is not None:
            entry = self.journal.find(self.api.base_url, plan.annotation_id, plan.model_name, plan.version)
            if entry is not None:
                try:
                    found = self.api.group_with_slices(entry.group_id)
                except ApiError as exc:
                    if exc.status != 404:
                        raise
                    self.journal.forget(entry.group_id)
                else:
                    group = found.group
                    if group.status == "complete" and not _same_slices(found, plan):
                        raise ApiError(
                            409,
                            ErrorCode.DUPLICATE_GROUP,
                            f"Annotation {plan.annotation_id} already has a complete mask group for "
                            f"{plan.model_name} version {plan.version} ({group.id}). Its slices differ from "
                            "these; use a new version to upload them.",
                            {"group_id": group.id, "status": "complete"},
                        )
                    if group.status in ("pending", "complete"):
                        kind = "resumed" if group.status == "pending" else "opened"
                        self._emit(GroupEvent(kind, group.id, f"Continuing group {group.id}"))
                        return group.id, group.status, group
        try:
            group = self.api.create_group(group_request(plan))
        except ApiError as exc:
            if exc.code != ErrorCode.DUPLICATE_GROUP:
                raise
            return self._adopt_existing(plan, exc)
        self._emit(GroupEvent("opened", group.id, f"Created group {group.id}"))
        return group.id, "pending", group

    def _adopt_existing(self, plan: UploadPlan, exc: ApiError) -> tuple[str, str, messages.GroupOut | None]:
        group_id, status = exc.details["group_id"], exc.details["status"]
        if status == "pending":
            self._emit(GroupEvent("resumed", group_id, f"Continuing pending group {group_id}"))
            return group_id, "pending", None
        if status == "complete":
            found = self.api.group_with_slices(group_id)
            if _same_slices(found, plan):
                return group_id, "complete", found.group
        raise ApiError(
            409,
            ErrorCode.DUPLICATE_GROUP,
            f"{exc.message} Its slices differ from these; use a new version to upload them.",
            exc.details,
        )

    def _complete_waiting_out(
        self, group_id: str, payload: list[messages.SliceToComplete]
    ) -> messages.GroupOut:
        """``complete``, repeated while the server answers nothing at all, until the budget is spent."""
        while True:
            try:
                return self.api.complete(group_id, payload)
            except ApiError as exc:
                if exc.status != 0 or self._sender.exhausted() or self.cancel.is_set():
                    raise
            self._sender.sleep(min(2.0, max(0.0, self.api.outage.remaining())))

    # --- complete ------------------------------------------------------------------------------------

    def _complete(self, group_id: str, slices: list[PlannedSlice]) -> messages.GroupOut | UploadResult:
        """Register the group; slices the server finds missing or different are sent again, once."""
        payload = [complete_request(s) for s in slices]
        try:
            return self._complete_waiting_out(group_id, payload)
        except ApiError as exc:
            if exc.code not in (ErrorCode.OBJECTS_MISSING, ErrorCode.CHECKSUM_MISMATCH):
                raise
            mismatched = {str(item.get("filename")) for item in exc.details.get("mismatched", [])}
            missing = set(exc.details.get("missing", [])) | mismatched
        # The journal said these landed, but storage lacks them or holds other bytes (a server that lost
        # power before complete made them durable, a damaged disk): send our bytes again, once. Their
        # MD5 is bound in the new URLs, so a file changed since planning is refused, not stored.
        if self.journal is not None:
            self.journal.forget_landed(group_id, sorted(missing))
        again = [s for s in slices if s.filename in missing]
        failed, uploaded, sent = self._sender.send(group_id, again)
        if failed or self._sender.gave_up:
            return UploadResult(
                "incomplete",
                group_id,
                f"{len(again) - uploaded} slice(s) could not be re-sent.",
                uploaded=uploaded,
                failed=failed,
                bytes_sent=sent,
                error_code=ErrorCode.UNREACHABLE if self._sender.gave_up else None,
            )
        try:
            group = self._complete_waiting_out(group_id, payload)
        except ApiError as exc:
            return UploadResult(
                "incomplete",
                group_id,
                f"{exc.message} The re-sent slices landed; run the upload again to register the group.",
                uploaded=uploaded,
                bytes_sent=sent,
                error_code=exc.code,
            )
        if self.journal is not None:
            self.journal.mark_complete(group_id)
        return UploadResult(
            "complete",
            group_id,
            f"{len(slices)} slices registered in group {group_id}.",
            uploaded=uploaded,
            bytes_sent=sent,
            group=group,
        )


def _same_slices(found: messages.MaskList, plan: UploadPlan) -> bool:
    """True when a stored group (``GET /api/mask/{id}``) holds exactly the plan's files and checksums."""
    stored = {(m.filename, m.checksum) for m in found.items}
    return stored == {(s.filename, s.md5_hex) for s in plan.slices}
