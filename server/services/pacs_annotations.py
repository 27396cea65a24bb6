"""Annotations created from the PACS: the server reads the series' headers over DICOMweb itself."""

from __future__ import annotations

from server import __version__
from server.context import Call
from server.contract import messages
from server.contract.errors import ErrorCode
from server.errors import PacsFailed
from server.geometry import MalformedHeader, geometry_from_datasets
from server.pacs import read_series, shown_url
from server.services.annotations import create_annotation_with_geometry


def create_from_pacs(call: Call, data: messages.AnnotationFromPacs) -> messages.AnnotationOut:
    """Read the series' instance metadata (WADO-RS), build and check its geometry, store both; audited.

    The PACS is read before any database work, so a PACS that fails leaves nothing behind.
    """
    datasets = read_series(call.settings, data.series_instance_uid, data.study_instance_uid)
    try:
        geometry = geometry_from_datasets(datasets, source="pacs")
    except MalformedHeader as exc:  # the PACS sent headers that cannot be read: its answer is at fault
        raise PacsFailed(
            f"The PACS at {shown_url(call.settings.dicomweb_url or '')} sent a malformed answer: {exc.message}",
            code=ErrorCode.PACS_MALFORMED_ANSWER,
            details=exc.details,
        ) from None
    if geometry.series_instance_uid != data.series_instance_uid or (
        data.study_instance_uid is not None and geometry.study_instance_uid != data.study_instance_uid
    ):
        raise PacsFailed(
            "The PACS answered with the instances of another series or study.",
            code=ErrorCode.PACS_MALFORMED_ANSWER,
            details={
                "requested": data.series_instance_uid,
                "answered": geometry.series_instance_uid,
            },
        )
    return create_annotation_with_geometry(call, geometry, data.description)


def client_config(call: Call) -> messages.ClientConfig:
    """Where this server's PACS is (URL without credentials), the server's version and who is asking."""
    url = call.settings.dicomweb_url
    return messages.ClientConfig(
        dicomweb_url=shown_url(url) if url else None,
        version=__version__,
        send_unreviewed=call.settings.send_unreviewed,
        user=call.actor.name,
        role=call.actor.role,
    )
