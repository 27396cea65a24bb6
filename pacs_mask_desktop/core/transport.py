"""PUTs of slice bytes to signed storage URLs: libcurl (pycurl), one kept-alive handle per worker thread.

Why libcurl rather than httpx, urllib3 or ``http.client``: on two cores the client and the storage
server share the CPU, so every millisecond of Python per request slows the server too. Measured on the
2-core development machine, 1000 PUTs of 512x512 label PNGs (~0.7 KB) with URLs signed beforehand, 8
worker threads, median of 4:

=========================  ========================  ========================
client                     to ``rclone serve s3``    to the embedded server
=========================  ========================  ========================
``http.client`` per thread 0.61 s wall, 0.38 s CPU   0.73 s wall, 0.27 s CPU
pycurl easy per thread     0.38 s wall, 0.12 s CPU   0.69 s wall, 0.13 s CPU
=========================  ========================  ========================

Earlier on the same machine: urllib3 PoolManager 0.85-1.05 s (0.30 s CPU), httpx.Client 2.1-2.5 s,
httpx.AsyncClient 2.7 s. libcurl parses the answer in C and releases the GIL for the whole exchange;
``http.client`` spends most of its CPU in the ``email`` header parser. httpx stays the API client (a
few calls per upload).

Behaviour kept from the ``http.client`` transport: only ``http`` and ``https`` URLs are followed;
proxies from the environment are not used (storage is reached directly, as it always was); a
connection the server closed while idle is replaced without costing a retry (libcurl checks before
reuse); the timeout is an idle timeout: a PUT fails when no byte moves for ``timeout`` seconds, however
long a slow link takes overall; TLS trusts what Python's ``ssl`` trusts by default (the system's CA
bundle and ``SSL_CERT_FILE``, e.g. a clinic's private CA), plus certifi's, handed to libcurl in memory
so that no file path (a user folder with non-ASCII letters) has to pass through libcurl.
"""

from __future__ import annotations

import functools
import os
import ssl
import sys
import threading
from pathlib import Path

import certifi
import pycurl

# Errors that retrying cannot fix: a URL libcurl cannot use, a certificate nobody trusts.
_BAD_URL = {pycurl.E_UNSUPPORTED_PROTOCOL, pycurl.E_URL_MALFORMAT}
_UNTRUSTED = {pycurl.E_PEER_FAILED_VERIFICATION, pycurl.E_SSL_CACERT_BADFILE}


class TransportError(Exception):
    """The PUT got no answer: connection refused, dropped or idle too long. Worth retrying."""


class PermanentTransportError(Exception):
    """The PUT cannot be made at all (a malformed URL, an untrusted certificate). Retrying will not help."""


class PutTransport:
    """Sends PUTs from many threads; each thread reuses its own libcurl handle (and so its connections)."""

    def __init__(self, timeout: float) -> None:
        self._timeout = max(1, round(timeout))
        self._local = threading.local()
        self._lock = threading.Lock()
        self._handles: list[pycurl.Curl] = []

    def put(
        self, url: str, body: bytes, headers: dict[str, str], *, timeout: float | None = None
    ) -> tuple[int, bytes]:
        """PUT ``body`` to ``url`` with exactly ``headers``; return ``(status, answer body)``.

        ``timeout`` shortens the connect and idle timeouts of this one PUT (the engine does so during an
        outage, so that no PUT outlasts what is left of its retry budget).
        """
        curl = self._handle()
        answer: list[bytes] = []
        limit = self._timeout if timeout is None else max(1, min(self._timeout, round(timeout)))
        curl.setopt(pycurl.CONNECTTIMEOUT, limit)
        curl.setopt(pycurl.LOW_SPEED_TIME, limit)
        try:
            curl.setopt(pycurl.URL, url)
        except UnicodeEncodeError:
            raise PermanentTransportError("cannot PUT to the signed URL: it is not plain ASCII") from None
        curl.setopt(pycurl.POSTFIELDS, body)  # sent from memory: libcurl can re-send it on a fresh connection
        curl.setopt(pycurl.POSTFIELDSIZE, len(body))
        # "Expect:" and an empty Content-Type (when none is signed) stop libcurl adding its own.
        lines = [f"{name}: {value}" for name, value in headers.items()]
        if not any(name.lower() == "content-type" for name in headers):
            lines.append("Content-Type:")
        curl.setopt(pycurl.HTTPHEADER, [*lines, "Expect:"])
        curl.setopt(pycurl.WRITEFUNCTION, answer.append)
        try:
            curl.perform()
        except pycurl.error as exc:
            code, message = exc.args
            if code in _BAD_URL:
                raise PermanentTransportError(f"cannot PUT to the signed URL: {message}") from None
            if code in _UNTRUSTED:
                raise PermanentTransportError(
                    f"storage's TLS certificate is not trusted: {message}"
                ) from None
            raise TransportError(f"connection problem: {message}") from None
        return int(curl.getinfo(pycurl.RESPONSE_CODE)), b"".join(answer)

    def _handle(self) -> pycurl.Curl:
        curl: pycurl.Curl | None = getattr(self._local, "curl", None)
        if curl is None:
            curl = pycurl.Curl()
            curl.setopt(pycurl.CUSTOMREQUEST, "PUT")
            curl.setopt(pycurl.NOSIGNAL, 1)  # required with threads
            curl.setopt(pycurl.PROXY, "")
            curl.setopt(pycurl.HTTP_VERSION, pycurl.CURL_HTTP_VERSION_1_1)
            curl.setopt(pycurl.PROTOCOLS, pycurl.PROTO_HTTP | pycurl.PROTO_HTTPS)
            curl.setopt(pycurl.REDIR_PROTOCOLS, pycurl.PROTO_HTTP | pycurl.PROTO_HTTPS)
            curl.setopt(pycurl.CAINFO_BLOB, trusted_certificates())
            if sys.platform == "win32":
                curl.setopt(pycurl.SSL_OPTIONS, pycurl.SSLOPT_NATIVE_CA)  # and the Windows certificate store
            curl.setopt(pycurl.CONNECTTIMEOUT, self._timeout)
            curl.setopt(pycurl.LOW_SPEED_LIMIT, 1)
            curl.setopt(pycurl.LOW_SPEED_TIME, self._timeout)
            self._local.curl = curl
            with self._lock:
                self._handles.append(curl)
        return curl

    def close(self) -> None:
        """Close every handle and its connections (call when no PUT is in flight)."""
        with self._lock:
            handles, self._handles = self._handles, []
        for curl in handles:
            curl.close()
        self._local = threading.local()


@functools.lru_cache(maxsize=1)
def trusted_certificates() -> bytes:
    """PEM of every CA a PUT trusts: certifi's bundle, the system's default bundle, ``SSL_CERT_FILE``."""
    paths = ssl.get_default_verify_paths()
    found = [certifi.where(), os.environ.get("SSL_CERT_FILE"), paths.cafile, paths.openssl_cafile]
    bundles: list[bytes] = []
    for name in dict.fromkeys(f for f in found if f):  # in order, without repeats
        try:
            bundles.append(Path(name).read_bytes())
        except OSError:
            continue  # a default path this system does not have
    return b"\n".join(bundles)
