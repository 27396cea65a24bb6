"""DICOM SEG export of a 500-slice 512x512 group with two labels: this server vs dcmqi, in one run.

- **API**: ``POST /api/mask-group/{id}/seg`` through the app (Litestar test client, SQLite, local storage):
  reading the 500 stored PNGs, building the SEG with highdicom from the stored geometry, storing and
  recording it. The group's masks are uploaded once beforehand (not timed); between runs the recorded
  SEG is forgotten so each run builds it again.
- **peer**: dcmqi's ``itkimage2segimage`` on the same masks written as one NIfTI label volume, with the
  same series (the 500 DICOM files) and a metadata JSON for the two labels — the reference converter
  most pipelines use.

Target: API time <= 1.0x dcmqi. Medians of ``--repeat`` runs after one warm-up.

Usage: ``python benchmarks/seg_export.py [--slices 500] [--size 512] [--repeat 3]``
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import io
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import msgspec
import nibabel as nib
import numpy as np
import pydicom
from PIL import Image

try:
    import server  # noqa: F401
except ImportError:  # run from a checkout that is not installed
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _processes import find_binary
from litestar.testing import TestClient
from sqlalchemy import update

from pacs_mask_desktop.core.demo import write_synthetic_ct
from server.app import create_app
from server.db.migrate import upgrade
from server.db.models import MaskGroup
from server.geometry import geometry_from_datasets
from server.services.tokens import issue_token
from server.settings import Settings

TARGET_RATIO = 1.0


def label_volume(slices: int, size: int) -> np.ndarray:
    """Two labels: a large ellipsoid (1) through most slices and a smaller one (2) inside the middle."""
    z, y, x = np.ogrid[:slices, :size, :size]
    zc, c = (slices - 1) / 2, (size - 1) / 2
    volume = np.zeros((slices, size, size), dtype=np.uint8)
    volume[
        ((z - zc) / (0.35 * slices)) ** 2 + ((y - c) / (0.3 * size)) ** 2 + ((x - c) / (0.35 * size)) ** 2
        <= 1
    ] = 1
    second = (
        ((z - zc) / (0.1 * slices)) ** 2
        + ((y - c) / (0.1 * size)) ** 2
        + ((x - 0.6 * size) / (0.08 * size)) ** 2
    )
    volume[second <= 1] = 2
    return volume


def png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array, mode="L").save(buffer, format="PNG")
    return buffer.getvalue()


def api_setup(
    work: Path, paths: list[Path], volume: np.ndarray
) -> tuple[TestClient, Any, str, dict[str, str]]:
    """An app with an annotation (geometry from the files) and a complete group of ``volume``'s slices."""
    settings = Settings(data_dir=work / "server")
    upgrade(settings.resolved_database_url)
    app = create_app(settings)
    client = TestClient(app)
    client.__enter__()
    headers = {"Authorization": f"Bearer {issue_token(app.state.parts.db, 'bench', 'admin')}"}
    geometry = msgspec.to_builtins(
        geometry_from_datasets([pydicom.dcmread(p, stop_before_pixels=True) for p in paths], "folder")
    )
    annotation = client.post(
        "/api/annotations",
        headers=headers,
        json={"study_instance_uid": geometry["study_instance_uid"], "series_instance_uid": geometry["series_instance_uid"],
              "series": geometry},
    ).json()  # fmt: skip
    group = client.post(
        "/api/mask-group",
        headers=headers,
        json={"annotation_id": annotation["id"], "model_name": "bench", "version": "1", "source": "ai"},
    ).json()
    files = {i: png(volume[i]) for i in range(volume.shape[0])}
    names = {i: f"mask_{i:04d}.png" for i in files}
    digests = {i: hashlib.md5(b, usedforsecurity=False) for i, b in files.items()}
    signed = client.post(
        f"/api/mask-group/{group['id']}/signed-url",
        headers=headers,
        json={"slices": [{"filename": names[i], "size": len(b), "content_md5": base64.b64encode(digests[i].digest()).decode()}
                         for i, b in files.items()]},
    ).json()["urls"]  # fmt: skip
    for url, body in zip(signed, files.values(), strict=True):
        response = client.request(url["method"], url["url"], content=body, headers=url["headers"])
        response.raise_for_status()
    rows, columns = volume.shape[1:]
    done = client.post(
        f"/api/mask-group/{group['id']}/complete",
        headers=headers,
        json={"slices": [{"filename": names[i], "slice_index": i, "width": columns, "height": rows,
                          "checksum": digests[i].hexdigest()} for i in files]},
    )  # fmt: skip
    done.raise_for_status()
    return client, app, group["id"], headers


def time_api(client: TestClient, app: Any, group_id: str, headers: dict[str, str]) -> float:
    """One ``POST .../seg`` from scratch (the previous SEG forgotten first); seconds."""
    with app.state.parts.db.session() as session:
        session.execute(update(MaskGroup).values(seg_sop_instance_uid=None, seg_storage_key=None))
    started = time.perf_counter()
    response = client.post(f"/api/mask-group/{group_id}/seg", headers=headers)
    elapsed = time.perf_counter() - started
    response.raise_for_status()
    return elapsed


def dcmqi_inputs(work: Path, paths: list[Path], volume: np.ndarray) -> tuple[Path, Path]:
    """The masks as one NIfTI on the series grid (RAS affine) and dcmqi's metadata for the two labels."""
    first = pydicom.dcmread(paths[0], stop_before_pixels=True)
    second = pydicom.dcmread(paths[1], stop_before_pixels=True)
    iop = np.array(first.ImageOrientationPatient, dtype=float)
    row_mm, col_mm = (float(v) for v in first.PixelSpacing)
    origin = np.array(first.ImagePositionPatient, dtype=float)
    step = np.array(second.ImagePositionPatient, dtype=float) - origin
    lps = np.eye(4)
    lps[:3, 0], lps[:3, 1], lps[:3, 2], lps[:3, 3] = iop[:3] * col_mm, iop[3:] * row_mm, step, origin
    affine = np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps
    nifti = work / "masks.nii.gz"
    nib.save(nib.Nifti1Image(np.ascontiguousarray(volume.transpose(2, 1, 0)), affine), nifti)
    segment = {
        "SegmentAlgorithmType": "AUTOMATIC",
        "SegmentAlgorithmName": "bench",
        "SegmentedPropertyCategoryCodeSequence": {"CodeValue": "91723000", "CodingSchemeDesignator": "SCT",
                                                  "CodeMeaning": "Anatomical Structure"},
        "SegmentedPropertyTypeCodeSequence": {"CodeValue": "85756007", "CodingSchemeDesignator": "SCT",
                                              "CodeMeaning": "Tissue"},
    }  # fmt: skip
    meta = {
        "ContentCreatorName": "bench^",
        "ClinicalTrialSeriesID": "1",
        "ClinicalTrialTimePointID": "1",
        "SeriesDescription": "SEG bench",
        "SeriesNumber": "9901",
        "InstanceNumber": "1",
        "BodyPartExamined": "",
        "segmentAttributes": [[
            {**segment, "labelID": 1, "SegmentLabel": "Label 1", "recommendedDisplayRGBValue": [230, 25, 75]},
            {**segment, "labelID": 2, "SegmentLabel": "Label 2", "recommendedDisplayRGBValue": [60, 180, 75]},
        ]],
        "ContentLabel": "SEGMENTATION",
        "ContentDescription": "bench",
        "ClinicalTrialCoordinatingCenterName": "",
    }  # fmt: skip
    meta_path = work / "meta.json"
    meta_path.write_text(json.dumps(meta))
    return nifti, meta_path


def time_dcmqi(work: Path, series: Path, nifti: Path, meta: Path, run: int) -> float:
    """One ``itkimage2segimage`` run on the NIfTI and the series folder; seconds."""
    out = work / f"dcmqi-{run}.dcm"
    started = time.perf_counter()
    subprocess.run(
        [find_binary("itkimage2segimage"), "--inputImageList", str(nifti), "--inputDICOMDirectory", str(series),
         "--inputMetadata", str(meta), "--outputDICOM", str(out), "--skip", "1"],
        check=True, capture_output=True,
    )  # fmt: skip
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=500)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="seg-bench-") as tmp:
        work = Path(tmp)
        series = work / "series"
        print(f"writing a {args.slices}-slice {args.size}x{args.size} CT and its masks ...", flush=True)
        paths = write_synthetic_ct(series, slices=args.slices, size=args.size, seed=7)
        volume = label_volume(args.slices, args.size)
        client, app, group_id, headers = api_setup(work, paths, volume)
        nifti, meta = dcmqi_inputs(work, paths, volume)
        api_times, dcmqi_times = [], []
        for run in range(args.repeat + 1):  # run 0 warms up
            api = time_api(client, app, group_id, headers)
            peer = time_dcmqi(work, series, nifti, meta, run)
            if run:
                api_times.append(api)
                dcmqi_times.append(peer)
        client.__exit__(None, None, None)
    api_s, peer_s = statistics.median(api_times), statistics.median(dcmqi_times)
    ratio = api_s / peer_s
    print(f"{args.slices} slices {args.size}x{args.size}, 2 labels, median of {args.repeat}:")
    print(f"  POST /api/mask-group/{{id}}/seg (highdicom)   {api_s:7.2f} s")
    print(f"  dcmqi itkimage2segimage (NIfTI + series)      {peer_s:7.2f} s")
    print(
        f"  ratio {ratio:.2f}x (target <= {TARGET_RATIO:.1f}x): {'OK' if ratio <= TARGET_RATIO else 'MISSED'}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
