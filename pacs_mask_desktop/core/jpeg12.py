"""A pydicom decoder plugin for 12-bit lossy JPEG ("JPEG Extended", 1.2.840.10008.1.2.4.51).

Why it exists: the product ships only permissively licensed decoders (the GPL-3.0
``pylibjpeg-libjpeg`` may not go into a proprietary installer). pydicom's own plugins cover every
other transfer syntax with those (GDCM: JPEG lossless and JPEG-LS; Pillow: 8-bit JPEG; pyjpegls:
JPEG-LS; pylibjpeg-openjpeg: JPEG 2000; pydicom itself: RLE), but none of them decodes 12-bit JPEG
Extended: the GDCM wheels are built without 12-bit libjpeg and Pillow reads 8-bit JPEG only.
``imagecodecs`` (BSD-3-Clause) wraps libjpeg-turbo 3, which decodes 12-bit sequential JPEG; measured on
pydicom's ``JPGExtended.dcm`` it differs from the libjpeg reference by at most 1 (IDCT rounding of a
lossy codec).

12-bit JPEG is a greyscale format in DICOM practice; colour or 8-bit data are left to the other
plugins (this one refuses them, so pydicom moves on). Call :func:`register` once before decoding.
"""

from __future__ import annotations

import importlib.util
from typing import TYPE_CHECKING

from pydicom import uid

if TYPE_CHECKING:
    from pydicom.pixels.decoders.base import DecodeRunner

PLUGIN = "imagecodecs-jpeg12"
DECODER_DEPENDENCIES = {uid.JPEGExtended12Bit: ("imagecodecs>=2024.1",)}


def is_available(transfer_syntax: str) -> bool:
    """True when imagecodecs is installed and ``transfer_syntax`` is JPEG Extended (pydicom's API)."""
    return transfer_syntax == uid.JPEGExtended12Bit and importlib.util.find_spec("imagecodecs") is not None


def _decode_frame(src: bytes, runner: DecodeRunner) -> bytes:
    """One frame's pixels, little-endian, in the container pydicom expects (pydicom's plugin API)."""
    if runner.samples_per_pixel != 1 or runner.bits_stored <= 8:
        raise NotImplementedError("the imagecodecs plugin decodes only greyscale 12-bit JPEG Extended")
    from imagecodecs import jpeg8_decode

    frame = jpeg8_decode(src)
    runner.set_option("bits_allocated", 16)
    return frame.astype("<u2", copy=False).tobytes()


def register() -> None:
    """Add this plugin to pydicom's JPEG Extended decoder, after its own plugins (idempotent)."""
    from pydicom.pixels.decoders import JPEGExtended12BitDecoder

    if PLUGIN not in JPEGExtended12BitDecoder.available_plugins and is_available(uid.JPEGExtended12Bit):
        JPEGExtended12BitDecoder.add_plugin(PLUGIN, (__name__, "_decode_frame"))
