"""DICOM SEG of a mask group from the desktop: "Export as DICOM SEG…" and "Send to PACS".

The server builds the SEG (once) from the group's stored slices and the annotation's series geometry
and sends it over STOW-RS; the app only asks (``ApiClient.build_seg``/``download_seg``/``send_seg``) in
pool workers and says where it went. The rules for the buttons live here, next to their texts:

- export: the group is complete (the server refuses a group of an annotation without stored geometry
  with a message that says so; that message is shown as is);
- send: the group is complete, the server has a PACS (``GET /api/config`` ``dicomweb_url``) and the
  group is approved, unless the server sends unreviewed groups too (``send_unreviewed`` in the config).
"""

from __future__ import annotations

from pathlib import Path

from pacs_mask_desktop.core.api_client import ApiClient
from pacs_mask_desktop.ui.formatting import human_bytes, short_time
from pacs_mask_desktop.ui.workers import WorkContext
from server.contract.messages import ClientConfig, GroupOut, SegOut, SendOut


def export_seg(_context: WorkContext, api: ApiClient, group_id: str, path: Path) -> SegOut:
    """Pool thread: build the group's SEG (idempotent on the server) and save it to ``path`` (0600)."""
    meta = api.build_seg(group_id)
    api.download_seg(group_id, path)
    return meta


def send_seg(_context: WorkContext, api: ApiClient, group_id: str) -> SendOut:
    """Pool thread: store the group's SEG in the PACS (idempotent): where and when it went."""
    return api.send_seg(group_id)


def default_file_name(group: GroupOut) -> str:
    """A file name for the save dialog: model, version and group id (only safe characters)."""
    raw = f"seg-{group.model_name}-{group.version}-{group.id[:8]}"
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in raw) + ".dcm"


def can_export(group: GroupOut | None) -> tuple[bool, str]:
    """Whether "Export as DICOM SEG…" is enabled for ``group``, and the tooltip that says why (not)."""
    if group is None:
        return False, "Select a mask group."
    if group.status != "complete":
        return False, "Only a complete group can be exported."
    return True, "Save this group as a DICOM Segmentation file (built once on the server)."


def can_send(group: GroupOut | None, config: ClientConfig | None) -> tuple[bool, str]:
    """Whether "Send to PACS" is enabled for ``group`` under the server's ``config``, and why (not)."""
    if group is None:
        return False, "Select a mask group."
    if group.status != "complete":
        return False, "Only a complete group can be sent."
    if config is None:
        return False, "Waiting for the server's settings."
    if not config.dicomweb_url:
        return False, "The server has no PACS configured (PACS_MASK_DICOMWEB_URL)."
    if group.review_status != "approved" and not config.send_unreviewed:
        return False, "Only approved groups are sent to the PACS: review and approve it first."
    return True, f"Store this group's DICOM SEG in the PACS at {config.dicomweb_url}."


def exported_text(group: GroupOut, meta: SegOut, path: Path) -> str:
    """The status line after an export: where the file is and what it holds."""
    return (
        f"DICOM SEG of {group.model_name} {group.version} saved to {path} "
        f"({meta.segments} segment(s), {meta.frames} frame(s), {human_bytes(meta.size)}; "
        f"SOP Instance UID {meta.sop_instance_uid})"
    )


def sent_text(answer: SendOut) -> str:
    """The status line after a send: the PACS, the SOP Instance UID and when."""
    return (
        f"DICOM SEG sent to the PACS at {answer.pacs_url} on {short_time(answer.sent_at)}: "
        f"SOP Instance UID {answer.sop_instance_uid}"
    )


def seg_state_text(group: GroupOut | None, config: ClientConfig | None = None) -> str:
    """The selected group's SEG: not built, built, sent (where and when) or the last send error; and, while
    it cannot be sent, why (the same reason as the disabled button's tooltip)."""
    if group is None or group.status != "complete":
        return ""
    state = _seg_state(group)
    sendable, why = can_send(group, config)
    if not sendable and not group.sent_at and config is not None:
        state += f"\nSend to PACS is off: {why}"
    return state


def _seg_state(group: GroupOut) -> str:
    seg = group.seg
    if group.sent_at:
        uid = f": SOP Instance UID {seg.sop_instance_uid}" if seg else ""
        return f"DICOM SEG sent to {group.sent_to or 'the PACS'} on {short_time(group.sent_at)}{uid}"
    if group.send_error:
        return f"Last send to the PACS failed: {group.send_error}"
    if seg:
        return f"DICOM SEG built {short_time(seg.created_at)} (not sent): SOP Instance UID {seg.sop_instance_uid}"
    return "No DICOM SEG built yet."
