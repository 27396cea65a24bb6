"""A slice index the server cannot store is refused by the client before anything is sent (issue 11, #2).

``mask_9223372036854775808.png`` used to pass every client check, upload, and end in five 500s from
``complete`` (the index overflows the database's ``Integer`` column).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from pacs_mask_desktop import cli
from pacs_mask_desktop.core.plan import prepare
from tests.live_server import LiveServer

HUGE = "mask_9223372036854775808.png"


def _write_masks(folder: Path, names: list[str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        Image.fromarray(np.ones((8, 8), dtype=np.uint8), mode="L").save(folder / name)


@pytest.mark.parametrize(
    ("name", "refused"),
    [("mask_2147483647.png", False), ("mask_2147483648.png", True), (HUGE, True)],
)
def test_prepare_refuses_a_number_too_large_for_a_slice_index(
    tmp_path: Path, name: str, refused: bool
) -> None:
    _write_masks(tmp_path, [name])

    prepared = prepare(tmp_path, annotation_id=1, model_name="m", version="1")

    problems = [p for p in prepared.problems if p.filename == name]
    if not refused:
        assert problems == [], problems
        return
    assert [p.code for p in problems] == ["no_index"], problems
    assert "too large for a slice index" in problems[0].message
    assert "2147483647" in problems[0].message
    assert prepared.plan is None


def test_the_cli_refuses_it_before_sending_with_a_clear_message(
    live_server: LiveServer, tmp_path: Path, client_env: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    client_env(live_server)
    annotation = live_server.new_annotation()
    _write_masks(tmp_path / "masks", ["mask_0000.png", HUGE])

    code = cli.main(
        ["upload", "--annotation", str(annotation), "--model", "m", "--version", "1", "--json",
         str(tmp_path / "masks")]
    )  # fmt: skip

    assert code == cli.EXIT_BAD_INPUT
    out = json.loads(capsys.readouterr().out)
    assert out["status"] == "invalid"
    assert any(
        p["filename"] == HUGE and p["code"] == "no_index" and "too large for a slice index" in p["message"]
        for p in out["problems"]
    ), out["problems"]
    with live_server.api() as api:
        assert api.list_groups(annotation) == []
    assert live_server.stored_keys(f"mask/{annotation}/") == []
