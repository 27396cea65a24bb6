"""Mask reading: real PNG files of every accepted and rejected kind."""

from __future__ import annotations

import base64
import hashlib
import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pacs_mask_desktop.core import masks
from pacs_mask_desktop.core.masks import (
    MaskError,
    decode_mask,
    encode_label_png,
    load_mask_array,
    read_mask,
    slice_index_from_filename,
)
from tests.core.test_pixel_check import filtered_png


def _labels_image(shape: tuple[int, int] = (32, 48)) -> np.ndarray:
    array = np.zeros(shape, dtype=np.uint8)
    array[4:10, 4:10] = 1
    array[12:20, 20:30] = 3
    return array


def _raw_png(path: Path, rows: list[bytes], width: int, height: int, bit_depth: int, colour: int) -> None:
    """A hand-built PNG (for bit depths Pillow will not write, or a lying header)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, colour, 0, 0, 0)
    body = zlib.compress(b"".join(b"\x00" + row for row in rows))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", body) + chunk(b"IEND", b""))


def test_grayscale_8bit_labels_geometry_and_checksums(tmp_path):
    path = tmp_path / "mask_0007.png"
    Image.fromarray(_labels_image(), mode="L").save(path)
    info = read_mask(path)
    data = path.read_bytes()
    assert info.filename == "mask_0007.png"
    assert info.path == path
    assert (info.width, info.height) == (48, 32)
    assert info.labels == (1, 3)
    assert not info.empty
    assert info.size_bytes == len(data)
    assert info.md5_hex == hashlib.md5(data).hexdigest()  # noqa: S324 - the checksum storage uses
    assert info.content_md5_b64 == base64.b64encode(hashlib.md5(data).digest()).decode()  # noqa: S324
    assert info.content_type == "image/png"
    assert (info.mode, info.bit_depth) == ("L", 8)
    assert np.array_equal(load_mask_array(path), _labels_image())


def test_empty_mask_is_valid_and_flagged(tmp_path):
    path = tmp_path / "mask_0000.png"
    Image.fromarray(np.zeros((16, 16), dtype=np.uint8), mode="L").save(path)
    info = read_mask(path)
    assert info.empty
    assert info.labels == ()


def test_sixteen_bit_labels_are_read_exactly(tmp_path):
    array = np.zeros((20, 20), dtype=np.uint16)
    array[1, 1] = 1000
    array[2, 2] = 40000
    array[3, 3] = 7
    path = tmp_path / "mask16_0001.png"
    Image.fromarray(array).save(path)
    info = read_mask(path)
    assert info.labels == (7, 1000, 40000)
    assert info.bit_depth == 16
    loaded = load_mask_array(path)
    assert loaded.dtype == np.uint16
    assert np.array_equal(loaded, array)


def test_many_labels_in_8bit(tmp_path):
    array = np.arange(0, 200, dtype=np.uint8).reshape(10, 20)
    path = tmp_path / "many_1.png"
    Image.fromarray(array, mode="L").save(path)
    assert read_mask(path).labels == tuple(range(1, 200))


def test_palette_index_is_the_label_whatever_the_colours(tmp_path):
    indexes = _labels_image()
    image = Image.fromarray(indexes, mode="P")
    palette = [0, 0, 0] + [255, 0, 0] + [0, 255, 0] + [13, 200, 77] + [0, 0, 0] * 252
    image.putpalette(palette)
    path = tmp_path / "pal_0002.png"
    image.save(path, transparency=0)  # tRNS on a palette: presentation only, still accepted
    info = read_mask(path)
    assert info.mode == "P"
    assert info.labels == (1, 3)
    assert np.array_equal(load_mask_array(path), indexes)


def test_one_bit_mask_is_label_one(tmp_path):
    array = np.zeros((8, 16), dtype=bool)
    array[2:4, 3:9] = True
    path = tmp_path / "bin_3.png"
    Image.fromarray(array).save(path)
    info = read_mask(path)
    assert (info.mode, info.bit_depth) == ("1", 1)
    assert info.labels == (1,)
    assert np.array_equal(load_mask_array(path), array.astype(np.uint8))


def test_four_bit_grayscale_keeps_stored_values(tmp_path):
    values = [[0, 5, 9, 15], [1, 0, 0, 2]]
    rows = [bytes([(r[0] << 4) | r[1], (r[2] << 4) | r[3]]) for r in values]
    path = tmp_path / "g4_4.png"
    _raw_png(path, rows, width=4, height=2, bit_depth=4, colour=0)
    info = read_mask(path)
    assert info.bit_depth == 4
    assert info.labels == (1, 2, 5, 9, 15)
    assert load_mask_array(path).tolist() == values


@pytest.mark.parametrize(
    ("mode", "channels", "reason"),
    [("RGB", 3, "colour image"), ("RGBA", 4, "colour image"), ("LA", 2, "alpha")],
)
def test_colour_and_alpha_images_are_not_masks(tmp_path, mode, channels, reason):
    path = tmp_path / f"{mode.lower()}_1.png"
    Image.fromarray(np.zeros((8, 8, channels), dtype=np.uint8), mode=mode).save(path)
    with pytest.raises(MaskError) as caught:
        read_mask(path)
    assert caught.value.filename == path.name
    assert caught.value.code == "not_a_mask"
    assert reason in caught.value.reason


def test_other_image_formats_are_refused(tmp_path):
    path = tmp_path / "mask_0001.png"
    Image.fromarray(_labels_image(), mode="L").save(path, format="JPEG")
    with pytest.raises(MaskError, match="JPEG image; only PNG") as caught:
        read_mask(path)
    assert caught.value.code == "not_a_mask"


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"hello, I am text\n", "not an image file"),
        (b"", "empty"),
        (b"\x89PNG\r\n\x1a\n\x00\x00", "truncated"),
    ],
)
def test_unreadable_files(tmp_path, content, reason):
    path = tmp_path / "mask_0002.png"
    path.write_bytes(content)
    with pytest.raises(MaskError, match=reason) as caught:
        read_mask(path)
    assert caught.value.code == "unreadable"
    assert caught.value.filename == "mask_0002.png"


def _png_bytes(array: np.ndarray, **save: object) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG", **save)
    return buffer.getvalue()


def test_eight_bit_greyscale_is_decoded_by_libpng_to_exactly_what_pillow_reads(monkeypatch):
    """The common mask (8-bit greyscale) skips Pillow: libpng's array must be Pillow's, for every row
    filter an encoder may choose: none, Sub, Up and Paeth (Pillow picks them for blobs, a ramp, noise),
    Average (built by hand), stored without compression."""
    rng = np.random.default_rng(5)
    blobs = _labels_image((300, 257))
    noise = rng.integers(0, 256, size=(64, 80), dtype=np.uint8)
    ramp = (np.add.outer(np.arange(90), np.arange(70)) % 251).astype(np.uint8)
    cases = [
        _png_bytes(blobs),
        _png_bytes(blobs, compress_level=9, optimize=True),
        _png_bytes(noise),
        _png_bytes(ramp, compress_level=0),
        encode_label_png(ramp),
        filtered_png(noise, [3] * noise.shape[0]),  # Average on every row, which Pillow never picks
    ]
    expected = [np.asarray(Image.open(io.BytesIO(data))) for data in cases]

    def no_pillow(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("Pillow was asked to decode an 8-bit greyscale PNG")

    monkeypatch.setattr(masks.Image, "open", no_pillow)
    for data, want in zip(cases, expected, strict=True):
        array, mode, bit_depth = decode_mask("mask_0001.png", data)
        assert (mode, bit_depth, array.dtype) == ("L", 8, np.dtype(np.uint8))
        assert array.flags.c_contiguous
        np.testing.assert_array_equal(array, want)


def _with_chunk(data: bytes, kind: bytes, payload: bytes, *, crc_ok: bool = True) -> bytes:
    """PNG bytes with one more chunk right after IHDR (its CRC right or wrong)."""
    crc = zlib.crc32(kind + payload) ^ (0 if crc_ok else 1)
    chunk = struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)
    return data[:33] + chunk + data[33:]


def test_a_file_pillow_refuses_is_refused_even_where_libpng_would_decode_it():
    """libpng only warns about a bad CRC on a text chunk; Pillow (and the server's validation) refuse the
    file. The upload must refuse it too, with Pillow's reason, while a valid text chunk is fine."""
    plain = _png_bytes(_labels_image())
    bad_text = _with_chunk(plain, b"tEXt", b"Software\x00segmenter 1.0", crc_ok=False)
    with pytest.raises(MaskError, match="corrupt") as caught:
        decode_mask("mask_0002.png", bad_text)
    assert caught.value.code == "unreadable"
    good_text = _with_chunk(plain, b"tEXt", b"Software\x00segmenter 1.0")
    np.testing.assert_array_equal(decode_mask("mask_0002.png", good_text)[0], _labels_image())


def test_corrupt_png_body_is_unreadable(tmp_path):
    path = tmp_path / "mask_0003.png"
    Image.fromarray(_labels_image(), mode="L").save(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(MaskError, match="corrupt") as caught:
        read_mask(path)
    assert caught.value.code == "unreadable"


def test_missing_file_and_folder(tmp_path):
    with pytest.raises(MaskError, match="not found"):
        read_mask(tmp_path / "nope.png")
    with pytest.raises(MaskError, match="folder"):
        read_mask(tmp_path)


def test_absurd_size_is_refused_from_the_header_without_decoding(tmp_path):
    path = tmp_path / "huge_1.png"
    _raw_png(path, [b"\x00"], width=100_000, height=100_000, bit_depth=8, colour=0)
    with pytest.raises(MaskError, match="absurd size 100000x100000") as caught:
        read_mask(path)
    assert caught.value.code == "not_a_mask"


@pytest.mark.parametrize(
    ("name", "index"),
    [
        ("mask_0042.png", 42),
        ("slice-7.png", 7),
        ("ct2_slice12.png", 12),
        ("0005.png", 5),
        ("mask.png", None),
        ("seg_v2_003.PNG", 3),
    ],
)
def test_slice_index_from_filename(name, index):
    assert slice_index_from_filename(name) == index
