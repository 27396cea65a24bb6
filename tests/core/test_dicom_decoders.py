"""Every compressed transfer syntax a PACS sends decodes with the permissively licensed decoders the
project installs (no GPL ``pylibjpeg-libjpeg``): JPEG baseline, 12-bit JPEG Extended, JPEG lossless,
JPEG-LS, JPEG 2000 and RLE, on pydicom's real test files (``pydicom.data`` and ``pydicom-data``).

Lossless files must equal their uncompressed originals (or, where pydicom ships none, the SHA-256 of
the reference decoder's output, recorded from pylibjpeg-libjpeg); lossy ones must stay within the
codec's error of the original, which also catches a wrong colour conversion (errors of ~100).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.pixels import pixel_array

from pacs_mask_desktop.core import dicom_series  # noqa: F401  (registers core/jpeg12.py, as the app does)


def _path(name: str) -> Path:
    path = get_testdata_file(name)  # pydicom.data, else the pydicom-data package (test extra); no download
    if path is None:
        pytest.skip(f"{name} is not installed (pydicom-data, part of the test extra)")
    return Path(path)


def _pixels(name: str) -> np.ndarray:
    return pixel_array(dcmread(_path(name)))


def _syntax(name: str) -> str:
    return str(dcmread(_path(name), stop_before_pixels=True).file_meta.TransferSyntaxUID.name)


@pytest.mark.parametrize(
    ("compressed", "original"),
    [
        ("MR_small_RLE.dcm", "MR_small.dcm"),
        ("MR_small_jp2klossless.dcm", "MR_small.dcm"),
        ("MR_small_jpeg_ls_lossless.dcm", "MR_small.dcm"),
        ("emri_small_RLE.dcm", "emri_small.dcm"),  # multi-frame MR
        ("emri_small_jpeg_2k_lossless.dcm", "emri_small.dcm"),
        ("emri_small_jpeg_ls_lossless.dcm", "emri_small.dcm"),
        ("SC_rgb_jpeg_gdcm.dcm", "SC_rgb.dcm"),  # JPEG lossless SV1, RGB
        ("SC_rgb_rle.dcm", "SC_rgb.dcm"),
        ("SC_rgb_gdcm_KY.dcm", "SC_rgb.dcm"),  # JPEG 2000 lossless, RGB
    ],
)
def test_lossless_files_equal_their_originals(compressed: str, original: str) -> None:
    decoded, expected = _pixels(compressed), _pixels(original)
    assert decoded.shape == expected.shape
    assert np.array_equal(decoded, expected)


@pytest.mark.parametrize(
    ("name", "sha256"),
    [
        # JPEG Lossless, Process 14 (selection value 1), 16-bit signed CT-like image
        ("JPEG-LL.dcm", "a6e9d32143339d3f5748b5520aa4e6c6ffb3550b6f71fdf17bdb2ebb44bc2611"),
        # JPEG Lossless SV1, 8-bit
        (
            "JPGLosslessP14SV1_1s_1f_8b.dcm",
            "36e27e4f1e87a7d50407463323ddc3736736ecff35eb4e4a4c1b74646938835d",
        ),
    ],
)
def test_lossless_jpeg_matches_the_reference_decoder_exactly(name: str, sha256: str) -> None:
    assert _syntax(name).startswith("JPEG Lossless")
    decoded = np.ascontiguousarray(_pixels(name))
    assert hashlib.sha256(decoded.tobytes()).hexdigest() == sha256


@pytest.mark.parametrize(
    ("name", "mean_error", "max_error"),
    [
        ("SC_rgb_jpeg_dcmtk.dcm", 1.0, 10),  # JPEG baseline, YBR_FULL
        ("SC_rgb_dcmtk_+eb+cy+s2.dcm", 1.0, 10),  # baseline, YBR_FULL_422 subsampled
        ("SC_rgb_dcmtk_+eb+cr.dcm", 0.5, 2),  # baseline, stored as RGB (no colour transform)
        ("SC_rgb_jpeg_lossy_gdcm.dcm", 3.0, 80),  # baseline at a low quality: large errors at the edges
        ("SC_rgb_jls_lossy_line.dcm", 1.0, 2),  # JPEG-LS near-lossless, NEAR=2
        ("SC_rgb_jls_lossy_sample.dcm", 1.0, 2),
    ],
)
def test_lossy_files_stay_within_the_codec_error_of_the_original(
    name: str, mean_error: float, max_error: int
) -> None:
    decoded = _pixels(name).astype(np.int64)
    original = _pixels("SC_rgb.dcm").astype(np.int64)
    assert decoded.shape == original.shape
    error = np.abs(decoded - original)
    assert error.mean() <= mean_error
    assert error.max() <= max_error


def test_12_bit_jpeg_extended_decodes_like_the_reference_decoder() -> None:
    """12-bit lossy JPEG (pydicom's JPGExtended.dcm, 1.2.840.10008.1.2.4.51): only imagecodecs decodes it
    among the permissive decoders. Values from pylibjpeg-libjpeg; a lossy codec's IDCT may round by 1."""
    assert _syntax("JPGExtended.dcm").startswith("JPEG Extended")
    decoded = _pixels("JPGExtended.dcm")
    assert decoded.shape == (1024, 256)
    assert decoded.dtype == np.uint16
    assert abs(float(decoded.mean()) - 14.383037567138672) < 0.05
    reference_row = [31, 28, 24, 21, 24, 24, 23, 22]
    assert np.abs(decoded[500, 100:108].astype(int) - reference_row).max() <= 1


@pytest.mark.parametrize(
    "name",
    ["JPEG2000.dcm", "693_J2KI.dcm", "US1_J2KI.dcm", "examples_ybr_color.dcm", "SC_rgb_small_odd_jpeg.dcm"],
)
def test_other_compressed_files_decode(name: str) -> None:
    ds = dcmread(_path(name))
    decoded = pixel_array(ds)
    frames = int(ds.get("NumberOfFrames") or 1)
    samples = int(ds.SamplesPerPixel)
    expected = (frames,) * (frames > 1) + (ds.Rows, ds.Columns) + (samples,) * (samples > 1)
    assert decoded.shape == expected
    assert int(decoded.max()) > int(decoded.min())
