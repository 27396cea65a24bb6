"""What a storage answer to a signed PUT means: landed, retry later, re-sign, or refused for good.

S3 servers, rclone and this project's local backend answer the same situations differently; this
module is the one place that reads their answers, so the slice sender only asks "which kind is it?".

- 2xx, or 412 (the create-only PUT found the object already stored, :func:`is_already_stored_answer`):
  the slice counts as sent.
- An expired URL (:func:`is_expired_answer`): :class:`UrlExpired`, the sender re-signs and tries again
  at once.
- 5xx, 408 and 429: :class:`TransientFailure`, retried with backoff; no answer at all (refused, reset,
  timed out): :class:`StorageUnreachable`, waited out while the outage lasts.
- Anything else: :class:`StorageRefused` with the storage's own reason (:func:`storage_reason`).
"""

from __future__ import annotations


class TransientFailure(Exception):
    """A failure worth retrying after a pause."""


class StorageUnreachable(TransientFailure):
    """No answer at all (refused, reset, timed out). While storage answers nothing, it uses up no attempts:
    the slice waits out the outage (a storage or server restart) until the retry budget is spent."""


class UrlExpired(Exception):
    """The URL expired: re-sign and try again at once."""


class StorageRefused(Exception):
    """Storage refused this slice for a reason retrying cannot fix."""


def is_expired_answer(status: int, body: bytes) -> bool:
    """True when a storage answer means "this signed URL is too old"."""
    text = body[:2048].decode("utf-8", "replace").lower()
    if status == 403 and ("request has expired" in text or "expired_url" in text or "expired" in text):
        return True
    # rclone serve s3 (and some S3 servers) answer 400 AccessDenied for a request outside the time window.
    return status == 400 and "accessdenied" in text and "time" in text


def is_already_stored_answer(status: int) -> bool:
    """True when storage refused a create-only PUT because an object already exists under the key.

    Signed PUTs are create-only (``If-None-Match: *``; the local backend always): S3, MinIO and the
    local backend answer 412 when the key holds an object. That is our own earlier PUT whose answer was
    lost (a timeout, a dropped connection, a crash before the journal recorded it), or other bytes
    stored before. Either way ``complete`` checks size and MD5 of what is stored and names any slice
    that differs, so the slice counts as sent here.
    """
    return status == 412


def storage_reason(status: int, body: bytes) -> str:
    """A one-line reason from a storage error answer: S3's XML ``<Code>``/``<Message>``, the local
    backend's JSON ``message``, or the start of whatever else it sent."""
    text = body[:2048].decode("utf-8", "replace")
    for tag in ("<Message>", '"message":"', '"message": "'):
        start = text.find(tag)
        if start != -1:
            start += len(tag)
            end = text.find("<" if tag.startswith("<") else '"', start)
            code_start = text.find("<Code>")
            code = text[code_start + 6 : text.find("</Code>")] + ": " if code_start != -1 else ""
            return f"storage answered {status}: {code}{text[start:end]}"
    return f"storage answered {status}: {text[:200].strip() or 'no details'}"


def check_put_answer(status: int, body: bytes) -> None:
    """Return when the PUT counts as sent; otherwise raise the failure kind its answer means."""
    if 200 <= status < 300 or is_already_stored_answer(status):
        return
    if is_expired_answer(status, body):
        raise UrlExpired("the signed URL expired")
    if status >= 500 or status in (408, 429):
        raise TransientFailure(storage_reason(status, body))
    raise StorageRefused(storage_reason(status, body))
