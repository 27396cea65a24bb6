"""PACS Mask Upload v2: desktop app, upload engine and command-line uploader."""

__version__ = "2.0.0"
