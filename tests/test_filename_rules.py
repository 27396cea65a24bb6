"""The client checks slice filenames with the server's rules before anything is sent.

The import boundaries keep ``pacs_mask_desktop.core`` and ``server`` apart, so the rules are written
twice (``core/masks.py`` and ``server/naming.py``); this test fails the moment the two disagree.
"""

from __future__ import annotations

import pytest

from pacs_mask_desktop.core import masks
from pacs_mask_desktop.core.masks import check_upload_filename
from server import naming
from server.naming import filename_problem

NAMES = [
    "mask_0000.png", "MASK-12.PNG", "a.png", "slice.7.png", "x" * 124 + ".png", "x" * 125 + ".png",
    "0.png", "_under.png", "-dash.png", ".hidden.png", "../up.png", "a/b.png", "a\\b.png", "space name.png",
    "ünïcode.png", "mask.jpg", "mask.png.exe", "mask", "", "con.png", "NUL.png", "lpt1.png", "com9.PNG",
    "console.png", "mask\x00.png", "mask..png", "a:b.png",
]  # fmt: skip


@pytest.mark.parametrize("name", NAMES)
def test_client_and_server_agree(name: str) -> None:
    client, server = check_upload_filename(name), filename_problem(name)
    assert (client is None) == (server is None), f"{name!r}: client says {client!r}, server says {server!r}"
    assert client == server


def test_client_and_server_bound_the_slice_index_alike() -> None:
    """A file whose name holds a larger number is refused by the client (issue 11: a PostgreSQL INTEGER)."""
    assert masks.MAX_SLICE_INDEX == naming.MAX_SLICE_INDEX == naming.INT32_MAX == 2**31 - 1
    assert masks.slice_index_problem(naming.MAX_SLICE_INDEX) is None
    assert masks.slice_index_problem(naming.MAX_SLICE_INDEX + 1)
