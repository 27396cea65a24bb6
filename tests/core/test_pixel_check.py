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
import pytest
from PIL import Image

from pacs_mask_desktop.core.demo import write_bad_masks
from pacs_mask_desktop.core.masks import encode_label_png, read_mask
from pacs_mask_desktop.core.plan import _fast_labels, _unfilter_sub_up, prepare
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


def filtered_png(array: np.ndarray, filters: list[int], *, palette: bool = False) -> bytes:
    """An 8-bit greyscale (or, with ``palette``, palette-indexed) PNG whose row ``y`` uses PNG filter
    ``filters[y]`` (0 none, 1 Sub, 2 Up, 3 Average, 4 Paeth), as the PNG specification defines them:
    an encoder's choice, made by hand."""
    height, width = array.shape
    x = array.astype(np.int32)
    rows = []
    for y in range(height):
        up = x[y - 1] if y else np.zeros(width, dtype=np.int32)
        left = np.concatenate(([0], x[y, :-1]))
        up_left = np.concatenate(([0], up[:-1]))
        if filters[y] == 4:
            p = left + up - up_left
            pa, pb, pc = abs(p - left), abs(p - up), abs(p - up_left)
            predictor = np.where((pa <= pb) & (pa <= pc), left, np.where(pb <= pc, up, up_left))
        else:
            predictor = [0 * up, left, up, (left + up) // 2][filters[y]]
        rows.append(bytes([filters[y]]) + ((x[y] - predictor) % 256).astype(np.uint8).tobytes())
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 3 if palette else 0, 0, 0, 0)
    colours = [(b"PLTE", bytes(range(256)) * 3)] if palette else []
    return _assemble([(b"IHDR", ihdr), *colours, (b"IDAT", zlib.compress(b"".join(rows))), (b"IEND", b"")])


def test_rows_filtered_none_sub_and_up_give_the_labels_pillow_decodes() -> None:
    """Labels read from Sub and Up rows are the labels of the pixels Pillow decodes, for any mix and
    order of the three filters (runs of Up rows at the top, between Sub rows, at the bottom), labels up
    to 255 so that every byte sum wraps; an Average or Paeth row leaves the file to the full decoder."""
    rng = np.random.default_rng(12)
    for case in range(60):
        height, width = int(rng.integers(1, 40)), int(rng.integers(1, 50))
        image = np.zeros((height, width), dtype=np.uint8)
        for _ in range(int(rng.integers(0, 4))):  # a few blobs of random labels, some slices empty
            top, left = int(rng.integers(0, height)), int(rng.integers(0, width))
            image[top : top + int(rng.integers(1, 20)), left : left + int(rng.integers(1, 20))] = (
                rng.integers(1, 256)
            )
        if case % 3 == 0:
            image = rng.integers(0, 256, size=(height, width), dtype=np.uint8)  # noise: every byte wraps
        filters = [int(f) for f in rng.integers(0, 3, size=height)]
        data = filtered_png(image, filters, palette=case % 4 == 1)  # a palette index is the label too
        decoded = np.asarray(Image.open(io.BytesIO(data)))
        assert np.array_equal(decoded, image)  # the hand-made file is what it says (Pillow referees)
        want = tuple(int(v) for v in np.unique(decoded) if v)
        assert _fast_labels(data, width, height) == want, (case, filters)
        idat = b"".join(p for k, p in _chunks(data) if k == b"IDAT")
        rows = np.frombuffer(zlib.decompress(idat), dtype=np.uint8).reshape(height, width + 1)
        assert np.array_equal(_unfilter_sub_up(rows[:, 1:], rows[:, 0]), decoded), (case, filters)
        slow = filters.copy()
        slow[int(rng.integers(0, height))] = int(rng.integers(3, 5))
        if image.any():
            assert _fast_labels(filtered_png(image, slow), width, height) is None


def test_files_pillow_refuses_are_left_to_it_not_read_by_the_fast_path() -> None:
    """Image data split by another chunk, or a greyscale tRNS that is not the two bytes of one sample:
    Pillow refuses them (so would the server), so the fast path must not answer for them."""
    image = np.zeros((6, 9), dtype=np.uint8)
    image[2:4, 3:7] = 5
    good = _chunks(filtered_png(image, [0, 1, 2, 1, 2, 0]))
    idat = good[1][1]
    gamma = (b"gAMA", struct.pack(">I", 45455))
    split = _assemble([good[0], (b"IDAT", idat[:10]), gamma, (b"IDAT", idat[10:]), good[-1]])
    short_trns = _assemble([good[0], (b"tRNS", b"\x00"), *good[1:]])
    for data in (split, short_trns):
        with pytest.raises((OSError, ValueError), match=r"(?i)truncated"):  # Pillow's verdict: the referee
            Image.open(io.BytesIO(data)).load()
        assert _fast_labels(data, 9, 6) is None
    together = _assemble([good[0], (b"IDAT", idat[:10]), (b"IDAT", idat[10:]), gamma, good[-1]])
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(together))), image)
    assert _fast_labels(together, 9, 6) == (5,)  # image data in two chunks side by side is fine


def test_what_pillow_writes_for_label_masks_is_read_to_the_same_labels() -> None:
    """Pillow's own filter choices (its adaptive encoder, several compression levels) on label masks
    (organs and lesions as ellipses, as drawn slice by slice): the labels read without the full decoder,
    where they are, are Pillow's, and that path is taken for files with Sub and Up rows."""
    rng = np.random.default_rng(3)
    y, x = np.ogrid[:300, :257]
    read_with_sub_or_up = 0
    for case in range(40):
        image = np.zeros((300, 257), dtype=np.uint8)
        for label in range(1, 1 + case % 3 + 1):  # one to three structures, later ones on top
            cy, cx = rng.integers(40, 260), rng.integers(40, 220)
            ry, rx = rng.integers(5, 80), rng.integers(5, 80)
            image[((y - cy) / ry) ** 2 + ((x - cx) / rx) ** 2 <= 1] = label
        data = _png(image, compress_level=int(case % 10))
        filters = set(zlib.decompress(b"".join(p for k, p in _chunks(data) if k == b"IDAT"))[:: 257 + 1])
        labels = _fast_labels(data, 257, 300)
        if labels is not None:
            decoded = np.asarray(Image.open(io.BytesIO(data)))
            assert labels == tuple(int(v) for v in np.unique(decoded) if v), case
            read_with_sub_or_up += bool(filters & {1, 2})
    assert read_with_sub_or_up >= 10  # the path is taken on real encoder output, not only on made-up files
