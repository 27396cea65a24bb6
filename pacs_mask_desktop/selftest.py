"""``pacs-mask-desktop --self-test``: prove an installed (or frozen) build works, without a screen.

It starts the embedded server exactly as the app does (from the frozen executable when frozen),
which migrates a fresh database; creates an annotation; signs, uploads and completes one mask slice
through the real upload engine; reads it back through the view route; and decodes compressed DICOM
pixel data (JPEG 2000 through pylibjpeg-openjpeg, JPEG-LS through pyjpegls, JPEG lossless and 12-bit
JPEG through imagecodecs (core/jpeg_lossless.py, core/jpeg12.py), RLE through pydicom) to show the decoders were bundled. Prints one JSON document and returns 0 when every step passed.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
import tempfile
import time
import traceback
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
from PIL import Image

from pacs_mask_desktop.core.api_client import ApiClient
from pacs_mask_desktop.core.embedded import EmbeddedServer
from pacs_mask_desktop.core.plan import prepare
from pacs_mask_desktop.core.upload_run import upload_with_journal


def _decode_compressed() -> dict[str, Any]:
    """Round-trip a synthetic CT slice through every compressed syntax family the decoders cover.

    pydicom encodes JPEG 2000, JPEG-LS and RLE itself; JPEG lossless and 12-bit JPEG Extended are
    encoded with imagecodecs (libjpeg-turbo) and decoded through pydicom like a PACS file.
    """
    import imagecodecs
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.encaps import encapsulate
    from pydicom.uid import (
        CTImageStorage,
        ExplicitVRLittleEndian,
        JPEG2000Lossless,
        JPEGExtended12Bit,
        JPEGLosslessSV1,
        JPEGLSLossless,
        RLELossless,
        generate_uid,
    )

    from pacs_mask_desktop.core import dicom_series  # noqa: F401  (registers jpeg12.py, jpeg_lossless.py)

    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 4000, size=(64, 64), dtype=np.uint16)
    smooth = (np.add.outer(np.arange(64), np.arange(64)) * 30).astype(np.uint16)  # 0..3780, for lossy JPEG
    results = {}
    for syntax in (JPEG2000Lossless, JPEGLSLossless, RLELossless, JPEGLosslessSV1, JPEGExtended12Bit):
        source = smooth if syntax == JPEGExtended12Bit else pixels
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = generate_uid()
        ds.Rows, ds.Columns = pixels.shape
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
        if syntax in (JPEGLosslessSV1, JPEGExtended12Bit):
            lossless = syntax == JPEGLosslessSV1
            frame = imagecodecs.jpeg8_encode(source, lossless=lossless, level=95, bitspersample=12)
            ds.file_meta.TransferSyntaxUID = syntax
            ds.PixelData = encapsulate([bytes(frame)])
            ds["PixelData"].VR = "OB"
        else:
            ds.PixelData = source.tobytes()
            ds.compress(syntax)
        error = np.abs(ds.pixel_array.astype(np.int64) - source).max()
        if error > (16 if syntax == JPEGExtended12Bit else 0):
            raise AssertionError(f"{syntax.name}: decoded pixels differ from the original by up to {error}")
        results[syntax.name] = "ok"
    return results


def run_self_test(folder: Path | None = None, *, log: Callable[[str], None] | None = None) -> int:
    """Run every step; print a JSON report to stdout; 0 when all passed."""
    say = log or (lambda text: print(text, file=sys.stderr, flush=True))
    work = folder or Path(tempfile.mkdtemp(prefix="pacs-mask-selftest-"))
    report: dict[str, Any] = {"frozen": bool(getattr(sys, "frozen", False)), "steps": {}}
    started = time.monotonic()
    ok = False
    try:
        report["steps"]["dicom_decoders"] = _decode_compressed()
        say("decoders ok")
        with EmbeddedServer(work / "data", log_path=work / "server.log") as server:
            target = server.target
            assert target is not None
            report["steps"]["server"] = {"url": target.url}
            say(f"embedded server answered at {target.url}")
            with ApiClient(target.url, target.token) as api:
                report["steps"]["health"] = msgspec.to_builtins(api.health())
                annotation = api.create_annotation(
                    "1.2.826.0.1.1", "1.2.826.0.1.1.1", description="self-test"
                )
                masks = work / "masks"
                masks.mkdir(parents=True, exist_ok=True)
                label = np.zeros((128, 128), np.uint8)
                label[32:96, 40:90] = 1
                Image.fromarray(label).save(masks / "mask_0000.png")
                prepared = prepare(
                    masks,
                    annotation_id=annotation.id,
                    model_name="self-test",
                    version=uuid.uuid4().hex[:12],
                    source="manual",
                )
                if prepared.plan is None:  # not prepared.ok
                    raise AssertionError(f"prepare found problems: {prepared.problems}")
                result = upload_with_journal(
                    api, prepared.plan, journal_path=work / "journal.sqlite3", workers=1
                )
                if not result.ok or result.group_id is None:
                    raise AssertionError(f"upload did not complete: {result.message}")
                stored = api.view(result.group_id, filename="mask_0000.png")
                original = (masks / "mask_0000.png").read_bytes()
                if (
                    hashlib.md5(stored, usedforsecurity=False).digest()
                    != hashlib.md5(original, usedforsecurity=False).digest()
                ):
                    raise AssertionError("the stored slice differs from the uploaded file")
                report["steps"]["upload"] = {"group_id": result.group_id, "slices": 1, "verified": True}
                say(f"uploaded and verified one slice in group {result.group_id}")
        ok = True
    except Exception as exc:
        report["error"] = f"{type(exc).__name__}: {exc}"
        report["traceback"] = traceback.format_exc(limit=5)
    finally:
        report["ok"] = ok
        report["seconds"] = round(time.monotonic() - started, 2)
        print(json.dumps(report, indent=2, default=str), flush=True)
        if folder is None and ok:
            shutil.rmtree(work, ignore_errors=True)
    return 0 if ok else 1
