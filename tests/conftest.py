"""Shared fixtures. Plugins: the real S3 server (rclone) lives in ``tests.s3_server``, the real PACS (Orthanc) in
``tests.orthanc``, pydicom's multi-frame MR with a scanner's geometry added in ``tests.enhanced_mr``."""

from __future__ import annotations

pytest_plugins = ["tests.s3_server", "tests.live_server", "tests.orthanc", "tests.enhanced_mr"]
