"""Prometheus metrics of the upload flow.

Counters are bumped by the services as things happen. When the server runs several worker processes,
``PROMETHEUS_MULTIPROC_DIR`` makes prometheus-client aggregate them (set by ``pacs-mask-server serve``).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram

FAILURE_REASONS = ("expired", "signature", "digest", "missing_object", "auth", "oversize", "storage")


class Metrics:
    """The server's metric families, registered on one registry."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        r = self.registry
        self.slices_uploaded = Counter(
            "pacs_mask_slices_uploaded", "Mask slices registered by complete", registry=r
        )
        self.bytes_uploaded = Counter(
            "pacs_mask_bytes_uploaded", "Bytes of mask slices registered by complete", registry=r
        )
        self.urls_signed = Counter("pacs_mask_signed_urls", "Signed upload URLs issued", registry=r)
        self.completes = Counter("pacs_mask_group_completes", "Mask groups completed", registry=r)
        self.failures = Counter(
            "pacs_mask_upload_failures", "Upload failures by reason", ["reason"], registry=r
        )
        buckets = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
        self.sign_seconds = Histogram(
            "pacs_mask_sign_seconds", "Time to sign one batch of URLs", buckets=buckets, registry=r
        )
        self.complete_seconds = Histogram(
            "pacs_mask_complete_seconds", "Time to verify and complete a group", buckets=buckets, registry=r
        )

    def failure(self, reason: str, count: int = 1) -> None:
        """Count ``count`` failures of one reason (see ``FAILURE_REASONS``)."""
        self.failures.labels(reason=reason).inc(count)
