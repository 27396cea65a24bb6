"""Checking while sending: ``prepare(defer_decode=True)`` checks headers, the plan's PixelCheck decodes
the pixels beside the PUTs, and a file that fails to decode completes nothing (the group stays pending)."""

from __future__ import annotations

import io
import json
import shutil
import struct
import zlib
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from pacs_mask_desktop.core.demo import write_bad_masks
from pacs_mask_desktop.core.masks import encode_label_png, read_mask
from pacs_mask_desktop.core.plan import _fast_labels, prepare
from pacs_mask_desktop.core.upload_run import upload_with_journal
from tests.live_server import LiveServer, Volume, assert_group_matches, copy_masks


def _png(array: np.ndarray | Image.Image, **save: Any) -> bytes:
    buffer = io.BytesIO()
    image = array if isinstance(array, Image.Image) else Image.fromarray(array)
    image.save(buffer, format="PNG", **save)
    return buffer.getvalue()


def _chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    pos, found = 8, []
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        found.append((data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]))
        pos += 12 + length
    return found


def _assemble(chunks: list[tuple[bytes, bytes]]) -> bytes:
    out = b"\x89PNG\r\n\x1a\n"
    for kind, payload in chunks:
        out += (
            struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))
        )
    return out


def corrupt_pixels(data: bytes) -> bytes:
    """The same PNG with a valid header and valid CRCs but an IDAT stream that does not inflate."""
    chunks = [(k, bytes(b ^ 0x5A for b in p) if k == b"IDAT" else p) for k, p in _chunks(data)]
    return _assemble(chunks)


def test_fast_labels_find_empty_slices_and_unfiltered_labels_or_defer_to_the_decoder() -> None:
    zeros = np.zeros((40, 50), dtype=np.uint8)
    one = zeros.copy()
    one[39, 49] = 3
    one[0, 0] = 7
    for data in (
        _png(zeros),
        _png(zeros, compress_level=9, optimize=True),
        encode_label_png(zeros),
        _png(zeros.astype(np.uint16)),
        _png(zeros.astype(bool)),
        _png(Image.fromarray(zeros).convert("P")),
    ):
        assert _fast_labels(data, 50, 40) == ()
    assert _fast_labels(encode_label_png(one), 50, 40) == (3, 7)  # filter "none" rows: read directly
    assert _fast_labels(_png(one, compress_level=9, optimize=True), 50, 40) in (None, (3, 7))
    assert _fast_labels(_png(one.astype(np.uint16)), 50, 40) is None  # 16-bit: decoded in full
    good = _png(zeros)
    assert _fast_labels(good[:-20] + bytes(20), 50, 40) is None  # a damaged CRC at the end
    interlaced = _assemble([(k, p[:12] + b"\x01" if k == b"IHDR" else p) for k, p in _chunks(good)])
    assert _fast_labels(interlaced, 50, 40) is None  # another row layout: decoded in full instead
    assert _fast_labels(corrupt_pixels(good), 50, 40) is None
    texted = _assemble([*_chunks(good)[:1], (b"tEXt", b"Software\x00x"), *_chunks(good)[1:]])
    assert _fast_labels(texted, 50, 40) is None  # a text chunk: Pillow decides whether the file is good
    taller = _assemble(
        [(k, p[:4] + struct.pack(">I", 41) + p[8:] if k == b"IHDR" else p) for k, p in _chunks(good)]
    )
    assert _fast_labels(taller, 50, 41) is None  # the rows inflate to less than the header says
    shorter = _assemble(
        [(k, p[:4] + struct.pack(">I", 39) + p[8:] if k == b"IHDR" else p) for k, p in _chunks(good)]
    )
    assert _fast_labels(shorter, 50, 39) is None  # ... or to more


def test_deferred_plan_gets_the_labels_a_full_prepare_finds(ct_1000: Volume, tmp_path: Path) -> None:
    files = copy_masks(ct_1000, tmp_path / "masks", 100, 60)  # empty slices, then liver/lesion slices
    fields: dict[str, Any] = {"annotation_id": 1, "model_name": "m", "version": "1"}
    full = prepare(tmp_path / "masks", **fields)
    deferred = prepare(tmp_path / "masks", defer_decode=True, **fields)
    assert full.plan is not None
    assert deferred.plan is not None
    assert full.plan.pixel_check is None
    check = deferred.plan.pixel_check
    assert check is not None
    assert len(check.slices) == len(files)
    assert check.wait() == []
    decoded = check.apply(deferred.plan.slices)
    assert [(s.filename, s.labels, s.empty) for s in decoded] == [
        (s.filename, s.labels, s.empty) for s in full.plan.slices
    ]
    assert {s.empty for s in decoded} == {True, False}


def test_with_a_cheap_problem_the_pixel_problems_are_listed_at_once_too(tmp_path: Path) -> None:
    bad = write_bad_masks(tmp_path / "bad")
    bad["good_3"].write_bytes(corrupt_pixels(bad["good_3"].read_bytes()))
    full = prepare(tmp_path / "bad", annotation_id=1, model_name="m", version="1")
    deferred = prepare(tmp_path / "bad", annotation_id=1, model_name="m", version="1", defer_decode=True)
    assert deferred.plan is None
    assert sorted((p.filename or "", p.code) for p in deferred.problems) == sorted(
        (p.filename or "", p.code) for p in full.problems
    )
    assert (bad["good_3"].name, "unreadable") in {(p.filename, p.code) for p in deferred.problems}
    assert [r.status for r in deferred.rows] == [r.status for r in full.rows]


def _run(server: LiveServer, folder: Path, annotation: int) -> Any:
    prepared = prepare(folder, annotation_id=annotation, model_name="m", version="1", defer_decode=True)
    assert prepared.plan is not None, prepared.problems
    with server.api() as api:
        return upload_with_journal(api, prepared.plan, source_path=str(folder))


def test_a_mask_that_fails_to_decode_while_sending_completes_nothing_and_a_fixed_rerun_resumes(
    live_server: LiveServer, ct_1000: Volume, tmp_path: Path, client_env: Any
) -> None:
    client_env(live_server)
    files = copy_masks(ct_1000, tmp_path / "masks", 100, 40)
    good = files[7].read_bytes()
    broken = [files[7], files[30]]
    for path in broken:
        path.write_bytes(corrupt_pixels(path.read_bytes()))
    annotation = live_server.new_annotation()

    first = _run(live_server, tmp_path / "masks", annotation)
    assert first.status == "incomplete"
    assert first.error_code == "invalid_masks"
    assert [(p["filename"], p["code"]) for p in first.problems] == [(f.name, "unreadable") for f in broken]
    assert first.group_id is not None
    with live_server.api() as api:
        group = api.group_with_slices(first.group_id)
    assert group.group.status == "pending"
    assert group.items == []
    stored = live_server.stored_keys(f"mask/{annotation}/{first.group_id}/")
    assert sorted(k.rsplit("/", 1)[-1] for k in stored) == sorted(f.name for f in files if f not in broken)

    files[7].write_bytes(good)
    shutil.copy2(ct_1000.mask_paths()[100 + 30], files[30])
    again = _run(live_server, tmp_path / "masks", annotation)
    assert again.ok, again.message
    assert again.group_id == first.group_id
    assert again.skipped == len(files) - len(broken)  # only the two fixed files were sent again
    stored = assert_group_matches(live_server, again.group_id, files)
    by_name = {m.filename: m.label for m in stored.items}
    for path in files:
        labels = read_mask(path).labels
        assert by_name[path.name] == (",".join(map(str, labels)) or None)


def test_the_cli_lists_pixel_problems_found_while_sending_with_exit_2_and_a_resume_command(
    live_server: LiveServer, ct_1000: Volume, tmp_path: Path, client_env: Any, capsys: Any
) -> None:
    from pacs_mask_desktop import cli

    client_env(live_server)
    files = copy_masks(ct_1000, tmp_path / "masks", 100, 30)
    files[20].write_bytes(corrupt_pixels(files[20].read_bytes()))
    annotation = live_server.new_annotation()
    code = cli.main(
        ["upload", "--annotation", str(annotation), "--model", "m", "--version", "1", "--json",
         str(tmp_path / "masks")]
    )  # fmt: skip
    assert code == cli.EXIT_BAD_INPUT
    summary = json.loads(capsys.readouterr().out)
    assert (summary["status"], summary["error"]) == ("incomplete", "invalid_masks")
    assert [(p["filename"], p["code"]) for p in summary["problems"]] == [(files[20].name, "unreadable")]
    assert summary["resume_command"].startswith("pacs-mask upload")
    with live_server.api() as api:
        assert [g.status for g in api.list_groups(annotation)] == ["pending"]
