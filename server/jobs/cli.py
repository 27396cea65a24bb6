"""Job subcommands of ``pacs-mask-server`` (validate, cleanup, init-storage)."""

from __future__ import annotations

import argparse


def add_job_commands(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Register the job subcommands on the server's parser."""
