"""NIfTI import vs the PNG-folder prepare, on the same 500-slice 512x512 two-label volume, in one run.

- **NIfTI import**: ``masks_from_nifti`` (read the ``.nii.gz``, check its affine against the series grid,
  reorder the voxels, write the PNG slices into the staging folder) and then ``prepare()`` on those slices
  with the facts of the files just written (``known_slices``), as ``pacs-mask upload seg.nii.gz`` does
  before anything is sent.
- **peer**: ``prepare()`` on the same masks already written as a folder of PNG slices (what a PNG upload
  costs before anything is sent).

Both check against the same stored series geometry (a headers-only series; no DICOM files are read).
Target: NIfTI import <= 1.0x the PNG-folder prepare. Medians of ``--repeat`` alternating runs after a
warm-up. Figures and the state of the target: the README (NIfTI and DICOM SEG section).

The work folder (the PNG folder, the ``.nii.gz`` and the staging folder) is made in the system temp
folder, ``TMPDIR`` if set, and removed at the end. The NIfTI import creates a file per slice and the peer only
reads them, so the ratio depends on that folder's file-creation cost: on the shared dev machine creating
500 small files took 0.5-0.8 s of CPU in the default temp folder and 0.03 s in another folder of the
same disk (measured), so figures say which.

Usage: ``python benchmarks/nifti_import.py [--slices 500] [--size 512] [--repeat 3]``
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import msgspec
import nibabel as nib
import numpy as np

try:
    import pacs_mask_desktop  # noqa: F401
except ImportError:  # run from a checkout that is not installed
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pacs_mask_desktop.core.masks import write_label_pngs
from pacs_mask_desktop.core.plan import prepare
from pacs_mask_desktop.core.series_geometry import series_from_geometry
from pacs_mask_desktop.core.volume_masks import masks_from_nifti
from server.contract.messages import SeriesGeometry

TARGET_RATIO = 1.0
SPACING, STEP = 0.78125, 1.25


def geometry(slices: int, size: int) -> SeriesGeometry:
    """An axial series geometry document as the server stores it."""
    origin = -SPACING * (size - 1) / 2
    document = {
        "series_instance_uid": "1.2.3.4", "study_instance_uid": "1.2.3", "rows": size, "columns": size,
        "pixel_spacing": [SPACING, SPACING], "image_orientation_patient": [1, 0, 0, 0, 1, 0],
        "instances": [
            {"slice_index": k, "sop_instance_uid": f"1.2.3.4.{k + 1}", "instance_number": slices - k,
             "image_position_patient": [origin, origin, -300.0 + k * STEP], "frame_number": None}
            for k in range(slices)
        ],
    }  # fmt: skip
    return msgspec.convert(document, SeriesGeometry)


def label_volume(slices: int, size: int) -> np.ndarray:
    """Two labels: a large ellipsoid (1) through most slices and a smaller one (2) inside it."""
    z, y, x = np.ogrid[:slices, :size, :size]
    zc, c = (slices - 1) / 2, (size - 1) / 2
    outer = ((z - zc) / (0.4 * slices)) ** 2 + ((y - c) / (0.3 * size)) ** 2 + ((x - c) / (0.35 * size)) ** 2
    inner = (
        ((z - zc) / (0.1 * slices)) ** 2
        + ((y - c) / (0.08 * size)) ** 2
        + ((x - c * 1.2) / (0.08 * size)) ** 2
    )
    return (outer <= 1).astype(np.uint8) + (inner <= 1).astype(np.uint8)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--slices", type=int, default=500)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="nifti-import-"))
    try:
        run(work, args)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def run(work: Path, args: argparse.Namespace) -> None:
    """Write the masks both ways into ``work``, then time both sides alternately and print the figures."""
    os.environ["PACS_MASK_DATA_DIR"] = str(work / "data")
    g = geometry(args.slices, args.size)
    stored = series_from_geometry(g)
    volume = label_volume(args.slices, args.size)
    pngs = work / "pngs"
    write_label_pngs(list(volume), pngs)
    lps = np.eye(4)  # ITK order: i = column, j = row, k = slice
    lps[:3, :3] = np.diag([SPACING, SPACING, STEP])
    lps[:3, 3] = g.instances[0].image_position_patient
    nifti = work / "seg.nii.gz"
    nib.save(
        nib.Nifti1Image(np.ascontiguousarray(volume.transpose(2, 1, 0)), np.diag([-1, -1, 1, 1]) @ lps), nifti
    )
    prepare_masks = partial(
        prepare, annotation_id=1, model_name="bench", version="1", annotation_series=stored
    )

    def png_prepare() -> float:
        start = time.perf_counter()
        assert prepare_masks(pngs).ok
        return time.perf_counter() - start

    def nifti_import() -> float:
        start = time.perf_counter()
        with masks_from_nifti(nifti, g) as staged:
            assert prepare_masks(staged.folder, labels=staged.labels, known_slices=staged.known_slices).ok
            return time.perf_counter() - start  # the staging folder's removal is not timed

    png_prepare(), nifti_import()  # warm-up
    peer, ours = [], []
    for _ in range(args.repeat):
        peer.append(png_prepare())
        ours.append(nifti_import())
    p, o = statistics.median(peer), statistics.median(ours)
    print(
        f"{args.slices} slices {args.size}x{args.size}, two labels; medians of {args.repeat}; work folder in {work.parent}"
    )
    print(f"  PNG-folder prepare (peer):           {p:6.2f} s  runs {', '.join(f'{s:.2f}' for s in peer)}")
    print(f"  NIfTI import (stage + prepare):      {o:6.2f} s  runs {', '.join(f'{s:.2f}' for s in ours)}")
    print(
        f"  ratio {o / p:.2f}x (target <= {TARGET_RATIO:.1f}x): {'met' if o / p <= TARGET_RATIO else 'NOT met'}"
    )


if __name__ == "__main__":
    main()
