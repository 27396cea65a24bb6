"""A pydicom decoder plugin for lossless JPEG (Process 14: 1.2.840.10008.1.2.4.57 and its Selection
Value 1 form 1.2.840.10008.1.2.4.70), the syntax many CT and MR archives store.

Why it exists: pydicom's own plugins decode lossless JPEG only through GDCM (python-gdcm, 20 MiB in the
installer with its own OpenSSL) or the GPL-3.0 ``pylibjpeg-libjpeg`` (not allowed in a proprietary
installer). ``imagecodecs`` (BSD-3-Clause) is installed anyway for 12-bit JPEG (core/jpeg12.py), and its
libjpeg-turbo 3 decodes lossless JPEG of 2 to 16 bits with every predictor (1-7) and point transform, so
the installer ships this plugin instead of GDCM. GDCM stays in the test extras as the independent
referee: tests/core/test_jpeg_lossless.py decodes pydicom's real lossless JPEG files and synthetic ones
(all predictors, precisions, signed, colour, multi-frame) with both and requires identical arrays.

The samples come back as stored: no colour conversion (lossless JPEG has none; pydicom converts
YBR_FULL to RGB itself, as for GDCM's output), colour-by-pixel, in the Bits Allocated container
(pydicom then applies the signedness and unused high bits, as for the other lossless JPEG plugins).
Call :func:`register` once before decoding.
"""

from __future__ import annotations

import importlib.util
from typing import TYPE_CHECKING

from pydicom import uid

if TYPE_CHECKING:
    from pydicom.pixels.decoders.base import DecodeRunner

PLUGIN = "imagecodecs-lossless"
SYNTAXES = (uid.JPEGLossless, uid.JPEGLosslessSV1)
DECODER_DEPENDENCIES = dict.fromkeys(SYNTAXES, ("imagecodecs>=2024.1",))
#: libjpeg's names of the colour spaces that leave the samples as stored (no conversion on output).
_AS_STORED = {1: "GRAYSCALE", 3: "RGB"}


def is_available(transfer_syntax: str) -> bool:
    """True when imagecodecs is installed and ``transfer_syntax`` is lossless JPEG (pydicom's API)."""
    return transfer_syntax in SYNTAXES and importlib.util.find_spec("imagecodecs") is not None


def _decode_frame(src: bytes, runner: DecodeRunner) -> bytes:
    """One frame's samples, little-endian, colour-by-pixel, in the Bits Allocated container (pydicom's
    plugin API). Raises ValueError when the codestream contradicts the dataset's Rows, Columns, Samples
    per Pixel or Bits Allocated, so a mismatched file is refused instead of shown garbled."""
    samples = runner.samples_per_pixel
    colorspace = _AS_STORED.get(samples)
    if colorspace is None:
        raise NotImplementedError(f"lossless JPEG with {samples} samples per pixel is not supported")
    from imagecodecs import jpeg8_decode

    frame = jpeg8_decode(src, colorspace=colorspace, outcolorspace=colorspace)
    expected = (runner.rows, runner.columns) + ((samples,) if samples > 1 else ())
    if frame.shape != expected:
        raise ValueError(
            f"the lossless JPEG frame is {'x'.join(map(str, frame.shape))} samples but the dataset says "
            f"{'x'.join(map(str, expected))} (Rows x Columns x Samples per Pixel)"
        )
    bits_allocated = runner.bits_allocated
    if bits_allocated not in (8, 16) or frame.dtype.itemsize * 8 > bits_allocated:
        raise ValueError(
            f"the lossless JPEG frame has {frame.dtype.itemsize * 8}-bit samples, which do not fit the "
            f"dataset's Bits Allocated {bits_allocated}"
        )
    runner.set_option("planar_configuration", 0)  # libjpeg returns interleaved samples
    return frame.astype(f"<u{bits_allocated // 8}", copy=False).tobytes()


def register() -> None:
    """Add this plugin to pydicom's two lossless JPEG decoders, after their own plugins (idempotent)."""
    from pydicom.pixels.decoders import JPEGLosslessDecoder, JPEGLosslessSV1Decoder

    for decoder in (JPEGLosslessDecoder, JPEGLosslessSV1Decoder):
        if PLUGIN not in decoder.available_plugins and is_available(str(decoder.UID)):
            decoder.add_plugin(PLUGIN, (__name__, "_decode_frame"))
