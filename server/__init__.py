"""PACS Mask Upload v2: the bundled server."""

__version__ = "2.0.0"
