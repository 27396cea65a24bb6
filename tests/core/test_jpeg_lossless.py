"""Lossless JPEG (core/jpeg_lossless.py, imagecodecs/libjpeg-turbo) decodes exactly like GDCM.

GDCM decoded lossless JPEG in the installer until it was replaced by this plugin to save 21 MiB; it
stays in the test extras as the independent referee. Every file is decoded twice through pydicom, once
with each plugin named explicitly, and the arrays must be identical: pydicom's real lossless JPEG files
(8-bit, 12-bit, signed 16-bit, RGB) and synthetic ones covering what those do not (every predictor of
Process 14, precisions 2 to 16 bits, signed samples with unused high bits, YBR_FULL colour, several
frames), whose decoded values must also equal the pixels they were made from.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.pixels import pixel_array
from pydicom.pixels.decoders import JPEGLosslessDecoder
from pydicom.uid import CTImageStorage, JPEGLossless, JPEGLosslessSV1, generate_uid

from pacs_mask_desktop.core import (
    dicom_series,  # noqa: F401  (registers the plugins, as the app does)
    jpeg_lossless,
)

imagecodecs = pytest.importorskip("imagecodecs")
pytest.importorskip("gdcm", reason="python-gdcm is the referee (test extra)")


def _both(ds: Dataset) -> tuple[np.ndarray, np.ndarray]:
    """(this plugin's array, GDCM's array) for the same dataset."""
    ours = pixel_array(ds, decoding_plugin=jpeg_lossless.PLUGIN)
    referee = pixel_array(ds, decoding_plugin="gdcm")
    return ours, referee


@pytest.mark.parametrize(
    "name",
    ["JPEG-LL.dcm", "JPGLosslessP14SV1_1s_1f_8b.dcm", "SC_rgb_jpeg_gdcm.dcm", "bad_sequence.dcm"],
)
def test_pydicoms_lossless_jpeg_files_decode_like_gdcm(name: str) -> None:
    path = get_testdata_file(name)
    if path is None:
        pytest.skip(f"{name} is not installed (pydicom-data, part of the test extra)")
    ds = dcmread(Path(path))
    assert ds.file_meta.TransferSyntaxUID in jpeg_lossless.SYNTAXES
    ours, referee = _both(ds)
    assert ours.dtype == referee.dtype
    assert ours.shape == referee.shape
    assert np.array_equal(ours, referee)
    assert int(ours.max()) > int(ours.min())


def _as_ycbcr_codestream(stream: bytes) -> bytes:
    """The codestream libjpeg-turbo wrote for RGB samples, relabelled the way a PACS writes YBR_FULL:
    no Adobe marker and component IDs 1, 2, 3 (for which a JPEG decoder assumes YCbCr and would
    convert to RGB; a lossless decoder must not)."""
    out = bytearray(stream[:2])
    pos = 2
    while pos < len(stream):
        marker, length = stream[pos + 1], int.from_bytes(stream[pos + 2 : pos + 4], "big")
        segment = bytearray(stream[pos : pos + 2 + length])
        if marker == 0xEE:  # APP14 "Adobe": says RGB
            pos += 2 + length
            continue
        if marker == 0xC3:  # SOF3: precision, height, width, count, then (id, sampling, table) each
            for index in range(segment[9]):
                segment[10 + 3 * index] = index + 1
        if marker == 0xDA:  # SOS: count, then (id, tables) each; the entropy-coded data follows
            for index in range(segment[4]):
                segment[5 + 2 * index] = index + 1
            out += segment + stream[pos + 2 + length :]
            return bytes(out)
        out += segment
        pos += 2 + length
    raise AssertionError("no SOS marker in the codestream")


def _dataset(
    frames: list[np.ndarray],
    *,
    predictor: int,
    bits: int,
    signed: bool = False,
    photometric: str = "MONOCHROME2",
) -> Dataset:
    """A dataset whose frames are lossless JPEG made by libjpeg-turbo from ``frames`` (stored values)."""
    first = frames[0]
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = JPEGLosslessSV1 if predictor == 1 else JPEGLossless
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.Rows, ds.Columns = first.shape[:2]
    samples = first.shape[2] if first.ndim == 3 else 1
    ds.SamplesPerPixel, ds.PhotometricInterpretation = samples, photometric
    if samples > 1:
        ds.PlanarConfiguration = 0
    ds.BitsAllocated = 8 if bits <= 8 else 16
    ds.BitsStored, ds.HighBit, ds.PixelRepresentation = bits, bits - 1, int(signed)
    if len(frames) > 1:
        ds.NumberOfFrames = len(frames)
    encoded = [
        bytes(imagecodecs.jpeg8_encode(frame, lossless=True, predictor=predictor, bitspersample=bits))
        for frame in frames
    ]
    if photometric == "YBR_FULL":
        encoded = [_as_ycbcr_codestream(frame) for frame in encoded]
    ds.PixelData = encapsulate(encoded)
    ds["PixelData"].VR = "OB"
    return ds


def _random(bits: int, seed: int) -> np.ndarray:
    dtype = np.uint8 if bits <= 8 else np.uint16
    # odd sizes: no row padding hides a bug
    return np.random.default_rng(seed).integers(0, 2**bits, size=(37, 53), dtype=dtype)


@pytest.mark.parametrize("predictor", range(1, 8))
@pytest.mark.parametrize("bits", [8, 10, 12, 16])
def test_every_predictor_and_precision_decodes_like_gdcm(predictor: int, bits: int) -> None:
    pixels = _random(bits, predictor * 100 + bits)
    ours, referee = _both(_dataset([pixels], predictor=predictor, bits=bits))
    assert np.array_equal(ours, referee)
    assert np.array_equal(ours, pixels)


@pytest.mark.parametrize("bits", [2, 6])
def test_precisions_below_8_bits_decode_to_their_pixels(bits: int) -> None:
    """GDCM aborts the process on these (it wants Bits Stored = Bits Allocated below 8): the pixels the
    frame was made from are the referee."""
    pixels = _random(bits, bits)
    decoded = pixel_array(_dataset([pixels], predictor=7, bits=bits), decoding_plugin=jpeg_lossless.PLUGIN)
    assert np.array_equal(decoded, pixels)


def test_signed_samples_with_unused_high_bits_decode_like_gdcm() -> None:
    values = np.random.default_rng(1).integers(-2048, 2048, size=(40, 40), dtype=np.int16)
    stored = (values.view(np.uint16) & 0x0FFF).astype(np.uint16)  # 12-bit two's complement, as stored
    ours, referee = _both(_dataset([stored], predictor=1, bits=12, signed=True))
    assert ours.dtype == np.int16
    assert np.array_equal(ours, referee)
    assert np.array_equal(ours, values)


@pytest.mark.parametrize("photometric", ["RGB", "YBR_FULL"])
def test_colour_frames_decode_like_gdcm(photometric: str) -> None:
    rng = np.random.default_rng(2)
    frames = [rng.integers(0, 256, size=(24, 31, 3), dtype=np.uint8) for _ in range(3)]
    ds = _dataset(frames, predictor=6, bits=8, photometric=photometric)
    ours, referee = _both(ds)
    assert ours.shape == (3, 24, 31, 3)
    assert np.array_equal(ours, referee)
    raw = pixel_array(ds, decoding_plugin=jpeg_lossless.PLUGIN, raw=True)  # no YBR -> RGB conversion
    assert np.array_equal(raw, np.stack(frames))


def test_a_frame_that_contradicts_the_dataset_is_refused() -> None:
    pixels = np.zeros((16, 16), dtype=np.uint16)
    ds = _dataset([pixels], predictor=1, bits=12)
    ds.Rows = 32  # the codestream says 16
    with pytest.raises(RuntimeError, match="dataset says"):  # pydicom wraps the plugin's ValueError
        pixel_array(ds, decoding_plugin=jpeg_lossless.PLUGIN)


_WITHOUT_GDCM = r"""
import hashlib, sys
sys.modules["gdcm"] = None  # as in the installer, which bundles no GDCM
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.pixels import pixel_array
from pydicom.pixels.decoders import JPEGLosslessDecoder, JPEGLosslessSV1Decoder
from pacs_mask_desktop.core import dicom_series  # noqa: F401  (registers the plugins, as the app does)
assert "gdcm" not in JPEGLosslessSV1Decoder.available_plugins
print(sorted(JPEGLosslessDecoder.available_plugins), sorted(JPEGLosslessSV1Decoder.available_plugins))
for name in sys.argv[1:]:
    pixels = pixel_array(dcmread(get_testdata_file(name)))
    print(name, pixels.dtype, pixels.shape, hashlib.sha256(pixels.tobytes()).hexdigest())
"""


def test_the_app_decodes_lossless_jpeg_without_gdcm() -> None:
    """The installer has no GDCM: with it unimportable, the app's decoding path (pydicom's default,
    plugins registered by core/dicom_series.py) still decodes lossless JPEG, to GDCM's arrays."""
    names = [n for n in ("JPEG-LL.dcm", "SC_rgb_jpeg_gdcm.dcm") if get_testdata_file(n) is not None]
    done = subprocess.run(
        [sys.executable, "-c", _WITHOUT_GDCM, *names],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    assert lines[0] == f"{[jpeg_lossless.PLUGIN]} {[jpeg_lossless.PLUGIN]}"
    for name, line in zip(names, lines[1:], strict=True):
        referee = pixel_array(dcmread(get_testdata_file(name)), decoding_plugin="gdcm")
        digest = hashlib.sha256(referee.tobytes()).hexdigest()
        assert line == f"{name} {referee.dtype} {referee.shape} {digest}"
    jpeg_lossless.register()  # idempotent: a second call adds nothing and does not raise
    assert list(JPEGLosslessDecoder.available_plugins).count(jpeg_lossless.PLUGIN) == 1
