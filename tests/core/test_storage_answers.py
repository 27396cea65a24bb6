"""How a storage answer to a signed PUT is classified (no server needed; the captured answers of each
backend style are exercised against real storage in ``test_upload_engine``)."""

from __future__ import annotations

import pytest

from pacs_mask_desktop.core.storage_answers import (
    StorageRefused,
    TransientFailure,
    UrlExpired,
    check_put_answer,
    storage_reason,
)


@pytest.mark.parametrize("status", [200, 201, 204, 412])
def test_stored_and_already_stored_answers_count_as_sent(status: int) -> None:
    check_put_answer(status, b"")  # no exception


def test_an_expired_url_is_re_signed_not_retried_blindly() -> None:
    body = b'{"error":"expired_url","message":"This signed URL has expired; ask the server for a new one."}'
    with pytest.raises(UrlExpired):
        check_put_answer(403, body)


@pytest.mark.parametrize("status", [500, 502, 503, 408, 429])
def test_server_errors_timeouts_and_throttling_are_retried(status: int) -> None:
    with pytest.raises(TransientFailure, match=f"storage answered {status}"):
        check_put_answer(status, b"<Error><Code>SlowDown</Code><Message>Reduce your rate.</Message></Error>")


def test_anything_else_fails_the_slice_with_the_storage_reason() -> None:
    body = (
        b"<Error><Code>SignatureDoesNotMatch</Code><Message>The signature does not match.</Message></Error>"
    )
    with pytest.raises(StorageRefused) as refused:
        check_put_answer(403, body)
    assert str(refused.value) == "storage answered 403: SignatureDoesNotMatch: The signature does not match."


def test_storage_reason_reads_json_and_falls_back_to_the_body_or_no_details() -> None:
    assert storage_reason(400, b'{"error":"bad_digest","message":"The MD5 does not match."}') == (
        "storage answered 400: The MD5 does not match."
    )
    assert storage_reason(418, b"  teapot  ") == "storage answered 418: teapot"
    assert storage_reason(400, b"") == "storage answered 400: no details"
