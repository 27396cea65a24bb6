"""Shared fixtures. Plugins: the real S3 server (rclone) lives in ``tests.s3_server``, the real PACS (Orthanc) in
``tests.orthanc``."""

from __future__ import annotations

pytest_plugins = ["tests.s3_server", "tests.live_server", "tests.orthanc"]
