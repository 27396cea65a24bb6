"""The error codes of the API: the ``error`` field of every error answer.

Every error answer is ``{"error": code, "message": sentence, "details": {...}}``
(:class:`~server.contract.messages.ErrorBody`). The code is what a client acts on (the message is for
people), so the server raises these and the client compares against these: one list, and a test holds
every code the server's source raises to it. :class:`ErrorCode` is a ``StrEnum``: a member equals its
string, so ``exc.code == ErrorCode.GROUP_NOT_FOUND`` works on a code read off the wire.
"""

from __future__ import annotations

from enum import StrEnum


class ErrorCode(StrEnum):
    """Every ``error`` code the server answers, and the ones the client makes up for itself."""

    # Request shape and bounds (server.errors, server.app).
    BAD_REQUEST = "bad_request"
    INVALID_REQUEST = "invalid_request"
    INVALID_VALUE = "invalid_value"
    INVALID_QUERY = "invalid_query"
    INVALID_CURSOR = "invalid_cursor"
    MALFORMED_JSON = "malformed_json"
    JSON_TOO_DEEP = "json_too_deep"
    UNPROCESSABLE = "unprocessable"
    ENTITY_TOO_LARGE = "entity_too_large"
    UNSUPPORTED_MEDIA_TYPE = "unsupported_media_type"
    METHOD_NOT_ALLOWED = "method_not_allowed"
    NOT_FOUND = "not_found"
    CONFLICT = "conflict"
    HTTP_ERROR = "http_error"
    """An HTTP error without a code of its own (server), or an answer that was not an error body (client)."""
    INTERNAL_ERROR = "internal_error"

    # Who is calling (server.security, server.services.tokens).
    UNAUTHORIZED = "unauthorized"
    FORBIDDEN = "forbidden"
    MISSING_TOKEN = "missing_token"  # noqa: S105 - an error code, not a secret
    INVALID_TOKEN = "invalid_token"  # noqa: S105 - an error code, not a secret
    DUPLICATE_TOKEN = "duplicate_token"  # noqa: S105 - an error code, not a secret
    TOKEN_NOT_FOUND = "token_not_found"  # noqa: S105 - an error code, not a secret

    # Annotations and their series geometry.
    ANNOTATION_NOT_FOUND = "annotation_not_found"
    SERIES_GEOMETRY_UNKNOWN = "series_geometry_unknown"
    """The annotation was recorded without its series' geometry (older annotations)."""
    SERIES_GEOMETRY_INVALID = "series_geometry_invalid"
    SERIES_MISMATCH = "series_mismatch"
    SERIES_WITHOUT_IMAGES = "series_without_images"
    SERIES_MIXED = "series_mixed"
    SERIES_MIXED_ORIENTATIONS = "series_mixed_orientations"
    SERIES_INCONSISTENT_SIZE = "series_inconsistent_size"
    SERIES_DUPLICATE_INSTANCES = "series_duplicate_instances"
    SERIES_DUPLICATE_POSITIONS = "series_duplicate_positions"
    SERIES_MISSING_POSITIONS = "series_missing_positions"
    GEOMETRY_MISMATCH = "geometry_mismatch"

    # Mask groups and their slices.
    GROUP_NOT_FOUND = "group_not_found"
    DUPLICATE_GROUP = "duplicate_group"
    """The (annotation, model, version) already has a group; details name it."""
    GROUP_NOT_PENDING = "group_not_pending"
    GROUP_NOT_COMPLETE = "group_not_complete"
    GROUP_NOT_APPROVED = "group_not_approved"
    GROUP_IMMUTABLE = "group_immutable"
    NOT_GROUP_OWNER = "not_group_owner"
    INVALID_SLICES = "invalid_slices"
    SLICE_NOT_FOUND = "slice_not_found"
    SLICE_COUNT_MISMATCH = "slice_count_mismatch"
    SLICE_SIGNED_DIFFERENTLY = "slice_signed_differently"
    OBJECT_MISSING = "object_missing"
    OBJECTS_MISSING = "objects_missing"
    CHECKSUM_MISMATCH = "checksum_mismatch"
    NOT_COMPARABLE = "not_comparable"

    # Review.
    FOUR_EYES = "four_eyes"
    """The uploader may not approve their own group (an admin may, saying so)."""
    COMMENT_REQUIRED = "comment_required"
    INVALID_FINDINGS = "invalid_findings"

    # DICOM SEG and sending it to the PACS.
    SEG_NOT_BUILT = "seg_not_built"
    SEG_EMPTY = "seg_empty"
    SEG_BUILD_FAILED = "seg_build_failed"
    SEG_GEOMETRY_INCOMPLETE = "seg_geometry_incomplete"
    SEG_LABEL_OUT_OF_RANGE = "seg_label_out_of_range"
    SEG_MASK_UNREADABLE = "seg_mask_unreadable"

    # The PACS the server reads from and sends to (server.pacs).
    PACS_ERROR = "pacs_error"
    PACS_NOT_CONFIGURED = "pacs_not_configured"
    PACS_SERIES_NOT_FOUND = "pacs_series_not_found"
    PACS_MALFORMED_ANSWER = "pacs_malformed_answer"
    PACS_TLS_FAILED = "pacs_tls_failed"
    PACS_TIMEOUT = "pacs_timeout"
    PACS_UNREACHABLE = "pacs_unreachable"
    PACS_CREDENTIALS_REFUSED = "pacs_credentials_refused"

    # Storage and the built-in storage routes (signed PUT/GET).
    STORAGE_UNAVAILABLE = "storage_unavailable"
    NO_LOCAL_STORAGE = "no_local_storage"
    OBJECT_EXISTS = "object_exists"
    NO_SUCH_KEY = "no_such_key"
    BAD_DIGEST = "bad_digest"
    EXPIRED_URL = "expired_url"
    SIGNATURE_MISSING = "signature_missing"
    SIGNATURE_MISMATCH = "signature_mismatch"
    INCOMPLETE_BODY = "incomplete_body"

    # Made up by the client, never sent by the server.
    UNREACHABLE = "unreachable"
    """The client got no answer at all (status 0)."""
    MALFORMED_ANSWER = "malformed_answer"
    """The server answered 2xx, but not with the body the contract promises (``server.contract.messages``)."""


PACS_PREFIX = "pacs_"
"""Every PACS failure's code starts with it (the client tells the user to check the server's PACS)."""
