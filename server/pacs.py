"""The server's side of the PACS: read a series' instance headers over DICOMweb (WADO-RS metadata).

Configured by ``PACS_MASK_DICOMWEB_URL`` (+ ``_USER``/``_PASSWORD`` or ``_TOKEN``, ``_VERIFY``,
``_TIMEOUT``; see :class:`server.settings.Settings`). The server never fetches pixels: the headers are
all the geometry needs (:func:`server.geometry.geometry_from_datasets`).

Every failure of the PACS becomes a :class:`server.errors.PacsFailed` with a code and a sentence; none is
a 500, and no credential is ever part of a message or a log line:

=========================== ====== =============================================================
code                        status when
=========================== ====== =============================================================
pacs_not_configured         503    ``PACS_MASK_DICOMWEB_URL`` is not set
pacs_unreachable            503    connection refused, DNS failure, connection reset
pacs_timeout                504    no answer within ``PACS_MASK_DICOMWEB_TIMEOUT`` (or 408/504)
pacs_credentials_refused    502    the PACS answered 401 or 403 to the server's credentials
pacs_tls_failed             502    the PACS's certificate did not verify
pacs_malformed_answer       502    the answer is not DICOMweb JSON / DICOM
pacs_error                  502    any other HTTP error from the PACS
pacs_series_not_found       404    the PACS has no such series (or it has no instances)
=========================== ====== =============================================================
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import requests
from pydicom.dataset import Dataset

from server.contract.errors import ErrorCode
from server.errors import NotFound, PacsFailed
from server.settings import Settings

log = logging.getLogger("pacs_mask.server.pacs")

CONNECT_TIMEOUT = 10.0
T = TypeVar("T")

#: Classic single-frame SOP classes whose Image Plane module (position, orientation) is mandatory:
#: CT, MR, PET, and their enhanced multi-frame forms hold it per frame instead.
IMAGE_PLANE_REQUIRED = {
    "1.2.840.10008.5.1.4.1.1.2": "CT Image Storage",
    "1.2.840.10008.5.1.4.1.1.4": "MR Image Storage",
    "1.2.840.10008.5.1.4.1.1.128": "Positron Emission Tomography Image Storage",
}


def shown_url(url: str) -> str:
    """The URL without any ``user:password@`` part, for messages and logs."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


class Pacs:
    """A DICOMweb client built from the server's settings (one per request: cheap, no shared state)."""

    def __init__(self, settings: Settings) -> None:
        from dicomweb_client.api import DICOMwebClient

        if not settings.dicomweb_url:
            raise PacsFailed(
                "This server has no PACS configured (PACS_MASK_DICOMWEB_URL); create the annotation from a "
                "local folder instead.",
                code=ErrorCode.PACS_NOT_CONFIGURED,
                status_code=503,
            )
        self.url = shown_url(settings.dicomweb_url)
        session = requests.Session()
        session.verify = settings.dicomweb_tls_verify
        if settings.dicomweb_token:
            session.headers["Authorization"] = f"Bearer {settings.dicomweb_token}"
        elif settings.dicomweb_user:
            session.auth = (settings.dicomweb_user, settings.dicomweb_password or "")
        try:
            self._client = DICOMwebClient(
                settings.dicomweb_url, session=session, timeout=(CONNECT_TIMEOUT, settings.dicomweb_timeout)
            )
        except ValueError:
            raise PacsFailed(
                f"PACS_MASK_DICOMWEB_URL ({self.url}) is not a usable DICOMweb URL.",
                code=ErrorCode.PACS_NOT_CONFIGURED,
                status_code=503,
            ) from None
        # No retry loop inside a request: the client is waiting; one failure answers at once.
        self._client.set_http_retry_params(retry=False)

    def close(self) -> None:
        """Close pooled connections."""
        self._client._session.close()

    def series_datasets(self, series_uid: str, study_uid: str | None = None) -> list[Dataset]:
        """The header of every instance of a series (bulk data left out), as pydicom Datasets."""
        if study_uid is None:
            study_uid = self._study_of(series_uid)
        found = self._call(lambda: self._client.retrieve_series_metadata(study_uid, series_uid))
        if not isinstance(found, list):
            raise self._malformed("the series metadata is not a JSON list")
        if not found:
            raise self._not_found(series_uid)
        datasets = [self._call(functools.partial(_dataset, item)) for item in found]
        self.require_image_plane(datasets)
        return datasets

    def store(self, dataset: Dataset) -> None:
        """STOW-RS one instance (a built DICOM SEG) into the PACS; failures as in the module doc."""
        self._call(lambda: self._client.store_instances([dataset]))

    def require_image_plane(self, datasets: list[Dataset]) -> None:
        """Refuse metadata that lacks a position or orientation its SOP class must have.

        A PACS set to answer only "main tags" may leave out ImagePositionPatient; the geometry would then
        fall back to InstanceNumber order, which can be upside down. Better a clear 502 than a silent flip.
        """
        for ds in datasets:
            sop_class = str(ds.get("SOPClassUID", ""))
            if sop_class in IMAGE_PLANE_REQUIRED and (
                "ImagePositionPatient" not in ds or "ImageOrientationPatient" not in ds
            ):
                raise self._malformed(
                    f"the metadata of {IMAGE_PLANE_REQUIRED[sop_class]} instance {ds.get('SOPInstanceUID')} "
                    "lacks ImagePositionPatient/ImageOrientationPatient (is the PACS set to return only main "
                    "tags?), so the slice order cannot be known"
                )

    def _study_of(self, series_uid: str) -> str:
        found = self._call(
            lambda: self._client.search_for_series(
                search_filters={"SeriesInstanceUID": series_uid}, fields=["StudyInstanceUID"]
            )
        )
        if not isinstance(found, list):
            raise self._malformed("the series search answer is not a JSON list")
        if not found:
            raise self._not_found(series_uid)
        item = found[0]
        try:
            return str(item["0020000D"]["Value"][0])
        except (KeyError, IndexError, TypeError):
            raise self._malformed("a series search result has no StudyInstanceUID") from None

    def _not_found(self, series_uid: str) -> NotFound:
        return NotFound(
            f"The PACS at {self.url} has no series {series_uid}.",
            code=ErrorCode.PACS_SERIES_NOT_FOUND,
            details={"series_instance_uid": series_uid},
        )

    def _malformed(self, what: str) -> PacsFailed:
        return PacsFailed(
            f"The PACS at {self.url} sent a malformed answer: {what}.", code=ErrorCode.PACS_MALFORMED_ANSWER
        )

    def _call(self, what: Callable[[], T]) -> T:
        try:
            return what()
        except requests.exceptions.HTTPError as exc:
            status = exc.response.status_code if exc.response is not None else 0
            if status == 404:
                raise PacsFailed(
                    f"The PACS at {self.url} has no such study or series (404).",
                    code=ErrorCode.PACS_SERIES_NOT_FOUND,
                    status_code=404,
                ) from None
            raise self._http_failure(status) from None
        except requests.exceptions.SSLError:
            raise PacsFailed(
                f"The TLS certificate of the PACS at {self.url} did not verify (PACS_MASK_DICOMWEB_VERIFY).",
                code=ErrorCode.PACS_TLS_FAILED,
            ) from None
        except (requests.exceptions.InvalidJSONError, requests.exceptions.ContentDecodingError):
            raise self._malformed("not DICOMweb JSON") from None
        except requests.exceptions.Timeout:
            raise PacsFailed(
                f"The PACS at {self.url} did not answer within its timeout.",
                code=ErrorCode.PACS_TIMEOUT,
                status_code=504,
            ) from None
        except requests.exceptions.RequestException:
            raise PacsFailed(
                f"Cannot reach the PACS at {self.url}.", code=ErrorCode.PACS_UNREACHABLE, status_code=503
            ) from None
        except MalformedItem as exc:
            raise self._malformed(str(exc)) from None
        except (ValueError, KeyError, TypeError, AttributeError, OverflowError) as exc:
            raise self._malformed(type(exc).__name__) from None

    def _http_failure(self, status: int) -> PacsFailed:
        if status in (401, 403):
            return PacsFailed(
                f"The PACS at {self.url} refused this server's credentials ({status}); check "
                "PACS_MASK_DICOMWEB_USER/_PASSWORD or _TOKEN on the server.",
                code=ErrorCode.PACS_CREDENTIALS_REFUSED,
                details={"pacs_status": status},
            )
        if status in (408, 504):
            return PacsFailed(
                f"The PACS at {self.url} timed out ({status}).",
                code=ErrorCode.PACS_TIMEOUT,
                status_code=504,
                details={"pacs_status": status},
            )
        if status == 503:
            return PacsFailed(
                f"The PACS at {self.url} is unavailable (503).",
                code=ErrorCode.PACS_UNREACHABLE,
                status_code=503,
                details={"pacs_status": status},
            )
        return PacsFailed(
            f"The PACS at {self.url} answered HTTP {status}.",
            code=ErrorCode.PACS_ERROR,
            details={"pacs_status": status},
        )


#: Attributes the geometry reads (server.geometry): delivered as ``BulkDataURI`` they would be silently
#: missing, so such an answer is refused as malformed instead of being read without them.
GEOMETRY_TAGS = frozenset(
    {
        "00080016",  # SOPClassUID
        "00080018",  # SOPInstanceUID
        "00080060",  # Modality
        "00180050",  # SliceThickness
        "00180088",  # SpacingBetweenSlices
        "0020000D",  # StudyInstanceUID
        "0020000E",  # SeriesInstanceUID
        "00200013",  # InstanceNumber
        "00200032",  # ImagePositionPatient
        "00200037",  # ImageOrientationPatient
        "00200052",  # FrameOfReferenceUID
        "00280008",  # NumberOfFrames
        "00280010",  # Rows
        "00280011",  # Columns
        "00280030",  # PixelSpacing
        "3004000C",  # GridFrameOffsetVector
        "52009229",  # SharedFunctionalGroupsSequence
        "52009230",  # PerFrameFunctionalGroupsSequence
        "00209113",  # PlanePositionSequence
        "00209116",  # PlaneOrientationSequence
        "00289110",  # PixelMeasuresSequence
    }
)


class MalformedItem(ValueError):
    """A metadata item the server cannot read as it must (answered ``502 pacs_malformed_answer``)."""


def _dataset(item: Any) -> Dataset:
    """One DICOM JSON metadata object as a Dataset, without bulk data (the server never needs pixels).

    Bulk data (pixels, large private blobs) is dropped, at every nesting level; a geometry attribute
    sent as ``BulkDataURI`` raises :class:`MalformedItem` rather than vanishing.
    """
    if not isinstance(item, dict):
        raise TypeError("a metadata item is not a JSON object")
    return Dataset.from_json(_without_bulk(item))


def _without_bulk(item: dict[str, Any]) -> dict[str, Any]:
    slim: dict[str, Any] = {}
    for tag, element in item.items():
        if isinstance(element, dict) and "BulkDataURI" in element:
            if str(tag).upper() in GEOMETRY_TAGS:
                raise MalformedItem(
                    f"the geometry attribute ({str(tag)[:4]},{str(tag)[4:8]}) came as BulkDataURI"
                )
            continue
        if isinstance(element, dict) and element.get("vr") == "SQ" and isinstance(element.get("Value"), list):
            element = {
                **element,
                "Value": [_without_bulk(v) if isinstance(v, dict) else v for v in element["Value"]],
            }
        slim[tag] = element
    return slim


def read_series(settings: Settings, series_uid: str, study_uid: str | None = None) -> list[Dataset]:
    """The instance headers of one series from the configured PACS (see the module doc for errors)."""
    pacs = Pacs(settings)
    try:
        return pacs.series_datasets(series_uid, study_uid)
    except PacsFailed as exc:
        log.warning("PACS %s failed: %s (%s)", pacs.url, exc.code, exc.status_code)
        raise
    finally:
        pacs.close()
