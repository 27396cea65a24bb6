"""Send a group's DICOM SEG to the PACS over STOW-RS (:class:`server.pacs.Pacs`), once.

Only approved groups are sent unless ``PACS_MASK_SEND_UNREVIEWED=true`` (409 ``group_not_approved``).
The SEG is built first when it was not (:func:`server.services.seg.build_seg`). A group already sent
answers what was recorded without sending again (the SOP Instance UID never changes, so a re-send would
be harmless anyway). Success records ``sent_at``/``sent_to`` on the group and clears ``send_error``; a
failure records ``send_error``, is audited and logged, and answers the PACS's error (``pacs_*`` codes).

``PACS_MASK_SEND_APPROVED_SEG=true`` makes :func:`send_after_approval` send right after a reviewer
approves; a failure there is recorded and logged and does not undo the approval.
"""

from __future__ import annotations

import io
import logging
import uuid

import pydicom
from pydicom.errors import InvalidDicomError
from sqlalchemy import update

from server import audit
from server.context import Call
from server.contract import messages
from server.contract.errors import ErrorCode
from server.db.models import MaskGroup, utcnow
from server.errors import ApiError, Conflict, PacsFailed
from server.pacs import Pacs
from server.services.mask_groups import load_group, parse_group_id
from server.services.seg import build_seg, seg_build_failed, seg_bytes
from server.services.serialize import retraction_notice, utc

log = logging.getLogger("pacs_mask.server.seg")


def send_seg(call: Call, group_ref: str) -> messages.SendOut:
    """STOW the group's SEG to the configured PACS (building it first if needed); idempotent."""
    group_id = parse_group_id(group_ref)
    with call.db.session() as session:
        group = load_group(session, group_id)
        if group.sent_at is not None and group.seg_sop_instance_uid is not None:
            return messages.SendOut(
                sop_instance_uid=group.seg_sop_instance_uid,
                sent_at=utc(group.sent_at),
                pacs_url=group.sent_to or "",
                retract_from_pacs=retraction_notice(group),
            )
        _require_sendable(call, group)
        annotation_id = group.annotation_id
    try:
        pacs = _pacs(call)
        try:
            seg = build_seg(call, str(group_id))
            with call.db.session() as session:
                key = load_group(session, group_id).seg_storage_key
            dataset = _read_seg(group_id, seg_bytes(call, key or ""))
            # Building took seconds: a reviewer may have rejected the group meanwhile. Check again under
            # the row lock, just before the STOW (a rejection during the STOW is caught after it).
            with call.db.session() as session:
                _require_sendable(call, load_group(session, group_id, for_update=True))
            pacs.store(dataset)
        finally:
            pacs.close()
    except ApiError as exc:
        _record_failure(call, group_id, annotation_id, exc)
        raise
    now = utcnow()
    with call.db.session() as session:
        group = load_group(session, group_id, for_update=True)
        group.sent_at, group.sent_to, group.send_error = now, pacs.url, None
        # Rejected while the STOW ran: the SEG is in the PACS all the same; say so (never silently).
        retract = retraction_notice(group)
        detail = {"sop_instance_uid": seg.sop_instance_uid, "pacs_url": pacs.url}
        audit.record(
            session,
            call,
            "group.send",
            annotation_id=annotation_id,
            group_id=group_id,
            detail=detail | ({"retract_from_pacs": retract} if retract else {}),
        )
    log.info("sent SEG %s of group %s to %s", seg.sop_instance_uid, group_id, pacs.url)
    if retract:
        log.warning("group %s was rejected while its SEG was sent: %s", group_id, retract)
    return messages.SendOut(
        sop_instance_uid=seg.sop_instance_uid, sent_at=now, pacs_url=pacs.url, retract_from_pacs=retract
    )


def _read_seg(group_id: object, data: bytes) -> pydicom.Dataset:
    """The stored SEG as a Dataset for the STOW; 422 ``seg_build_failed`` when it does not parse."""
    try:
        return pydicom.dcmread(io.BytesIO(data))
    except (InvalidDicomError, ValueError, TypeError, KeyError, IndexError, EOFError, OSError) as exc:
        raise seg_build_failed(group_id, exc) from None


def _require_sendable(call: Call, group: MaskGroup) -> None:
    """409 unless the group is complete and approved (or ``PACS_MASK_SEND_UNREVIEWED`` is on)."""
    if group.status != "complete":
        raise Conflict(
            f"Mask group {group.id} is {group.status}; only a complete group can be sent to the PACS.",
            code=ErrorCode.GROUP_NOT_COMPLETE,
            details={"status": group.status},
        )
    if group.review_status != "approved" and not call.settings.send_unreviewed:
        state = group.review_status or "not reviewed"
        raise Conflict(
            f"Mask group {group.id} is {state}; only approved groups are sent to the PACS "
            "(PACS_MASK_SEND_UNREVIEWED=true on the server allows sending before review).",
            code=ErrorCode.GROUP_NOT_APPROVED,
            details={"review_status": group.review_status},
        )


def _pacs(call: Call) -> Pacs:
    """The configured PACS; checked before anything is built, so a server without one refuses at once."""
    try:
        return Pacs(call.settings)
    except PacsFailed as exc:
        if exc.code != "pacs_not_configured":
            raise
        raise PacsFailed(
            "This server has no PACS configured (PACS_MASK_DICOMWEB_URL), so the SEG cannot be sent; "
            "download it with GET /api/mask-group/{group_id}/seg instead.",
            code=ErrorCode.PACS_NOT_CONFIGURED,
            status_code=503,
        ) from None


def _record_failure(call: Call, group_id: uuid.UUID, annotation_id: int, exc: ApiError) -> None:
    message = f"{exc.code}: {exc}"[:1024]
    log.warning("sending the SEG of group %s failed: %s", group_id, message)
    with call.db.session() as session:
        session.execute(update(MaskGroup).where(MaskGroup.id == group_id).values(send_error=message))
        audit.record(
            session,
            call,
            "group.send_failed",
            annotation_id=annotation_id,
            group_id=group_id,
            detail={"error": exc.code, "message": str(exc)},
        )


def send_after_approval(call: Call, group_id: str) -> None:
    """With ``PACS_MASK_SEND_APPROVED_SEG=true``: send an approved group's SEG now; never raises.

    A failure is recorded on the group (``send_error``), audited and logged; the approval stands.
    """
    if not call.settings.send_approved_seg:
        return
    try:
        send_seg(call, group_id)
    except ApiError:
        pass  # recorded by send_seg
    except Exception:  # the approval must stand whatever happens here
        log.exception("sending the SEG of approved group %s failed unexpectedly", group_id)
