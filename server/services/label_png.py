"""The one decoder of stored mask PNGs: label values at their real bit depth.

Used by the validate job (``server.jobs.validate``: the content check), the SEG export
(``server.services.seg``) and the comparison (``server.services.compare``: its size bound). It lives
with the services because the jobs stand on the services, not the other way round.
"""

from __future__ import annotations

import io
import struct

import numpy as np
from PIL import Image

#: Largest mask side decoded (the desktop's own limit is lower).
MAX_MASK_SIDE = 65535

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def decode_label_array(data: bytes) -> np.ndarray | str:
    """A mask PNG as a 2-D array of its label values, or why it is not one.

    The bit depth comes from the IHDR chunk, since Pillow scales 2- and 4-bit greyscale to 0..255 and
    does not report the depth. A 1-bit image decodes to 0/1; 16-bit keeps its values (the caller bounds
    them).
    """
    if not data.startswith(_PNG_SIGNATURE) or len(data) < 33 or data[12:16] != b"IHDR":
        return "not a PNG file"
    width, height, bit_depth, colour_type = struct.unpack(">IIBB", data[16:26])
    if colour_type not in (0, 3):
        return f"PNG colour type {colour_type} is not a single-channel label image"
    if not (1 <= width <= MAX_MASK_SIDE and 1 <= height <= MAX_MASK_SIDE):
        return f"absurd size {width}x{height}"
    try:
        with Image.open(io.BytesIO(data), formats=["PNG"]) as image:
            image.load()
            array = np.asarray(image)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        return f"corrupt PNG data ({exc})"
    if array.ndim != 2:
        return f"decoded to shape {array.shape}, not a single-channel image"
    if array.dtype == np.bool_:
        array = array.astype(np.uint8)
    if colour_type == 0 and bit_depth in (2, 4):
        array = array // np.uint8(255 // (2**bit_depth - 1))  # undo Pillow's scaling to 0..255
    return array
