"""Issue 10: a complete group becomes a DICOM SEG (highdicom), checked by outside referees, and goes to the PACS.

Referees: ``dciodvfy -new`` (dicom3tools; no line may start with "Error") validates the object, and dcmqi's
``segimage2itkimage`` (the reference SEG reader) converts it back to a volume, which must equal the
uploaded masks voxel for voxel once placed on the series grid (by its affine, not by trust). The SEG is
sent to a real Orthanc over STOW-RS and must be listed in the same study (QIDO-RS).
Series: a generated 20-slice CT (classic single-frame, InstanceNumber against position), a generated
Enhanced CT (one multi-frame instance, frames stored top-down), the 200-slice CT in Orthanc, and
pydicom's multi-frame MR, whose headers hold no plane positions (refused: a SEG could not place it).
"""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import msgspec
import nibabel as nib
import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.data import get_testdata_file

from pacs_mask_desktop.core.demo import write_synthetic_ct, write_synthetic_enhanced_ct
from server.geometry import geometry_from_datasets
from server.jobs.validate import validate
from tests.orthanc import Orthanc, StoredSeries
from tests.server.conftest import ALL_DBS, ALL_STORAGES, Server, ServerFactory, assert_error, md5_b64, md5_hex

SEGIMAGE2ITKIMAGE = shutil.which("segimage2itkimage") or str(
    Path(sys.executable).with_name("segimage2itkimage")
)
LIVER = {"code": "10200004", "scheme": "SCT", "meaning": "Liver"}


# --- helpers -----------------------------------------------------------------------------------------


def geometry_of(paths: list[Path]) -> dict[str, Any]:
    """The geometry a client sends for a folder (server.geometry, as JSON)."""
    headers = [pydicom.dcmread(p, stop_before_pixels=True) for p in paths]
    return msgspec.to_builtins(geometry_from_datasets(headers, "folder"))


def annotation_with(server: Server, geometry: dict[str, Any] | None, **ids: str) -> int:
    body: dict[str, Any] = {
        "study_instance_uid": geometry["study_instance_uid"] if geometry else ids["study"],
        "series_instance_uid": geometry["series_instance_uid"] if geometry else ids["series"],
    }
    if geometry:
        body["series"] = geometry
    response = server.api("POST", "/api/annotations", role="uploader", json=body)
    assert response.status_code == 201, response.text
    return int(response.json()["id"])


def png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array.astype(np.uint8), mode="L").save(buffer, format="PNG")
    return buffer.getvalue()


def upload_volume(
    server: Server,
    annotation_id: int,
    volume: np.ndarray,
    indexes: list[int],
    *,
    complete: bool = True,
    **fields: Any,
) -> dict[str, Any]:
    """A group holding ``volume[i]`` for each slice index in ``indexes`` (PNG label images), completed."""
    body = {
        "annotation_id": annotation_id,
        "model_name": "liver-net",
        "version": "2.1",
        "source": "ai",
    } | fields
    created = server.api("POST", "/api/mask-group", role="uploader", json=body)
    assert created.status_code == 201, created.text
    group = created.json()
    files = {i: png(volume[i]) for i in indexes}
    signed = server.api(
        "POST",
        f"/api/mask-group/{group['id']}/signed-url",
        role="uploader",
        json={"slices": [{"filename": f"mask_{i:04d}.png", "size": len(b), "content_md5": md5_b64(b)} for i, b in files.items()]},
    )  # fmt: skip
    assert signed.status_code == 200, signed.text
    for url, body_bytes in zip(signed.json()["urls"], files.values(), strict=True):
        assert server.put_signed(url, body_bytes).status_code == 200
    if complete:
        rows, columns = volume.shape[1:]
        done = server.api(
            "POST",
            f"/api/mask-group/{group['id']}/complete",
            role="uploader",
            json={"slices": [
                {"filename": f"mask_{i:04d}.png", "slice_index": i, "width": columns, "height": rows, "checksum": md5_hex(b)}
                for i, b in files.items()
            ]},
        )  # fmt: skip
        assert done.status_code == 200, done.text
    return group


def dciodvfy_errors(path: Path) -> list[str]:
    """The "Error" lines of ``dciodvfy -new`` (dicom3tools) for ``path``."""
    if shutil.which("dciodvfy") is None:
        pytest.fail("dciodvfy is not installed: apt-get install dicom3tools (.ci/run does)", pytrace=False)
    run = subprocess.run(
        ["dciodvfy", "-new", str(path)], capture_output=True, text=True, timeout=60, check=False
    )
    return [line for line in (run.stdout + run.stderr).splitlines() if line.startswith("Error")]


def dcmqi_volume(seg_path: Path, geometry: dict[str, Any], out: Path) -> np.ndarray:
    """dcmqi's reading of the SEG, as original label values placed on the series grid.

    ``segimage2itkimage --mergeSegments`` writes one NIfTI whose values are segment numbers, plus a JSON
    of the segments (our TrackingIdentifier ``label N`` gives the label value). Each NIfTI slice is put at
    the series slice with the same position (affine, LPS), after checking the in-plane axes match.
    """
    out.mkdir()
    run = subprocess.run(
        [SEGIMAGE2ITKIMAGE, "--inputDICOM", str(seg_path), "--outputDirectory", str(out), "-t", "nifti",
         "-p", "ref", "--mergeSegments"],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    meta = json.loads((out / "ref-meta.json").read_text())
    to_label = {s["labelID"]: int(s["TrackingIdentifier"].split()[-1]) for s in meta["segmentAttributes"][0]}
    image = nib.load(out / "ref-1.nii.gz")
    data = np.asarray(image.dataobj)
    affine = np.diag([-1.0, -1.0, 1.0, 1.0]) @ image.affine  # RAS -> LPS
    iop = np.array(geometry["image_orientation_patient"])
    row_mm, col_mm = geometry["pixel_spacing"]
    assert np.allclose(affine[:3, 0], iop[:3] * col_mm, atol=1e-3), affine
    assert np.allclose(affine[:3, 1], iop[3:] * row_mm, atol=1e-3), affine
    positions = np.array([i["image_position_patient"] for i in geometry["instances"]])
    volume = np.zeros((len(positions), geometry["rows"], geometry["columns"]), dtype=np.uint8)
    lut = np.zeros(256, dtype=np.uint8)
    for segment, label in to_label.items():
        lut[segment] = label
    for k in range(data.shape[2]):
        where = (affine @ [0, 0, k, 1])[:3]
        match = np.flatnonzero(np.linalg.norm(positions - where, axis=1) < 1e-3)
        assert match.size == 1, f"dcmqi slice {k} at {where} is on no series slice"
        volume[match[0]] = lut[data[:, :, k].T.astype(np.intp)]
    return volume


def phantom(slices: int, size: int) -> np.ndarray:
    """Two labels (1 and 4) on some slices, asymmetric in rows, columns and slices (a flip would show)."""
    volume = np.zeros((slices, size, size), dtype=np.uint8)
    volume[2:7, 3:12, 5:20] = 1
    volume[3, 3:5, 5:7] = 0
    volume[slices - 4 : slices - 2, size - 9 : size - 2, 1:4] = 4
    return volume


@pytest.fixture(scope="module")
def ct_folder(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """A generated 20-slice 32x32 CT (classic single-frame)."""
    return write_synthetic_ct(tmp_path_factory.mktemp("seg_ct"), slices=20, size=32, seed=11)


# --- SEG out -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("storage_kind", ALL_STORAGES)
def test_seg_of_a_ct_group_is_valid_and_dcmqi_reads_back_the_uploaded_masks(
    server_factory: ServerFactory, ct_folder: list[Path], tmp_path: Path
) -> None:
    app = server_factory()
    geometry = geometry_of(ct_folder)
    annotation_id = annotation_with(app, geometry)
    volume = phantom(20, 32)
    labels = {"4": {"name": "liver", "category": None, "type": LIVER, "color": [200, 10, 10]}}
    group = upload_volume(app, annotation_id, volume, [1, 2, 3, 4, 5, 6, 7, 16, 17], labels=labels)
    assert group["labels"]["4"]["name"] == "liver"
    assert group["seg"] is None

    built = app.api("POST", f"/api/mask-group/{group['id']}/seg", role="uploader")
    assert built.status_code == 200, built.text
    meta = built.json()
    assert (meta["segments"], meta["frames"]) == (2, 5 + 2)  # empty frames omitted

    download = app.api("GET", f"/api/mask-group/{group['id']}/seg", role="uploader")
    assert download.status_code == 200, download.text
    assert download.headers["content-type"].startswith("application/dicom")
    assert (len(download.content), md5_hex(download.content)) == (meta["size"], meta["checksum"])
    seg_path = tmp_path / "seg.dcm"
    seg_path.write_bytes(download.content)

    assert dciodvfy_errors(seg_path) == []
    assert np.array_equal(dcmqi_volume(seg_path, geometry, tmp_path / "dcmqi"), volume)

    seg = pydicom.dcmread(seg_path)
    assert (seg.Modality, seg.SOPInstanceUID, seg.SeriesInstanceUID) == (
        "SEG",
        meta["sop_instance_uid"],
        meta["series_instance_uid"],
    )
    assert (seg.StudyInstanceUID, seg.PatientID, seg.FrameOfReferenceUID) == (
        geometry["study_instance_uid"], geometry["patient_id"], geometry["frame_of_reference_uid"]
    )  # fmt: skip
    segments = {s.SegmentNumber: s for s in seg.SegmentSequence}
    assert [segments[n].SegmentLabel for n in (1, 2)] == ["Label 1", "liver"]
    assert segments[2].SegmentedPropertyTypeCodeSequence[0].CodeValue == "10200004"
    assert segments[1].SegmentedPropertyCategoryCodeSequence[0].CodeValue == "91723000"  # the default
    assert {s.SegmentAlgorithmType for s in segments.values()} == {"AUTOMATIC"}
    assert segments[1].SegmentAlgorithmName == "liver-net"
    assert segments[1].SegmentationAlgorithmIdentificationSequence[0].AlgorithmVersion == "2.1"
    # each frame references the SOP Instance UID of the slice its mask was uploaded for
    uids = [i["sop_instance_uid"] for i in geometry["instances"]]
    positions = [i["image_position_patient"] for i in geometry["instances"]]
    for frame in seg.PerFrameFunctionalGroupsSequence:
        referenced = frame.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        position = [float(v) for v in frame.PlanePositionSequence[0].ImagePositionPatient]
        assert np.allclose(position, positions[uids.index(referenced)])

    again = app.api("POST", f"/api/mask-group/{group['id']}/seg", role="uploader")
    assert again.json() == meta  # built once
    assert [k for k in app.objects() if k.endswith(".dcm")] == [
        f"mask/{annotation_id}/{group['id']}/seg-{meta['sop_instance_uid']}.dcm"
    ]
    listed = app.api("GET", f"/api/mask/{group['id']}", role="uploader").json()["group"]
    assert listed["seg"] == meta
    actions = [
        r["action"] for r in app.api("GET", "/api/audit", params={"group_id": group["id"]}).json()["items"]
    ]
    assert actions.count("group.seg") == 1
    assert "group.seg_download" in actions
    report = validate(app.db, app.storage, app.settings)  # the SEG is no orphan of its group
    assert "orphan_object" not in [f.kind for f in report.findings]
    assert app.api("DELETE", f"/api/mask-group/{group['id']}").status_code == 200
    assert app.objects() == []  # deleted with its group


def test_seg_of_a_multiframe_enhanced_ct_references_frames_and_is_manual(
    server_factory: ServerFactory, tmp_path: Path
) -> None:
    app = server_factory()
    path = write_synthetic_enhanced_ct(tmp_path / "enhanced.dcm", frames=12, size=32, seed=5)
    geometry = geometry_of([path])
    annotation_id = annotation_with(app, geometry)
    volume = phantom(12, 32)
    group = upload_volume(app, annotation_id, volume, list(range(12)), source="manual")
    built = app.api("POST", f"/api/mask-group/{group['id']}/seg", role="uploader")
    assert built.status_code == 200, built.text
    seg_path = tmp_path / "seg.dcm"
    seg_path.write_bytes(app.api("GET", f"/api/mask-group/{group['id']}/seg").content)

    assert dciodvfy_errors(seg_path) == []
    assert np.array_equal(dcmqi_volume(seg_path, geometry, tmp_path / "dcmqi"), volume)
    seg = pydicom.dcmread(seg_path)
    assert {s.SegmentAlgorithmType for s in seg.SegmentSequence} == {"MANUAL"}
    frames_of = {i["slice_index"]: i["frame_number"] for i in geometry["instances"]}
    referenced = [
        int(f.DerivationImageSequence[0].SourceImageSequence[0].ReferencedFrameNumber)
        for f in seg.PerFrameFunctionalGroupsSequence
    ]
    assert set(referenced) == {frames_of[i] for i in range(12) if volume[i].any()}


@pytest.mark.parametrize("db_kind", ALL_DBS)
def test_seg_refusals_say_why(server_factory: ServerFactory, ct_folder: list[Path]) -> None:
    app = server_factory()
    geometry = geometry_of(ct_folder)
    volume = phantom(20, 32)

    pending = upload_volume(app, annotation_with(app, geometry), volume, [2, 3], complete=False)
    body = assert_error(app.api("POST", f"/api/mask-group/{pending['id']}/seg"), 409, "group_not_complete")
    assert "pending" in body["message"]

    old = annotation_with(app, None, study="1.2.3.4", series="1.2.3.4.5")  # recorded without geometry
    no_geometry = upload_volume(app, old, volume, [2, 3])
    body = assert_error(
        app.api("POST", f"/api/mask-group/{no_geometry['id']}/seg"), 409, "series_geometry_unknown"
    )
    assert "without its series geometry" in body["message"]

    mr = geometry_of([Path(get_testdata_file("emri_small.dcm"))])  # no plane positions in its headers
    mr_group = upload_volume(app, annotation_with(app, mr), np.ones((10, 64, 64), np.uint8), [0])
    body = assert_error(
        app.api("POST", f"/api/mask-group/{mr_group['id']}/seg"), 422, "seg_geometry_incomplete"
    )
    assert "image_position_patient" in body["message"]

    empty = upload_volume(app, annotation_with(app, geometry), np.zeros_like(volume), [0], model_name="empty")
    assert_error(app.api("POST", f"/api/mask-group/{empty['id']}/seg"), 422, "seg_empty")

    assert_error(app.api("GET", f"/api/mask-group/{empty['id']}/seg"), 404, "seg_not_built")
    assert_error(app.api("POST", f"/api/mask-group/{empty['id']}/seg", token=""), 401)
    assert_error(app.api("GET", f"/api/mask-group/{empty['id']}/seg", token=""), 401)
    assert_error(app.api("POST", f"/api/mask-group/{empty['id']}/send", token=""), 401)
    assert [k for k in app.objects() if k.endswith(".dcm")] == []


@pytest.mark.parametrize(
    ("labels", "where"),
    [
        ({"0": {"name": "background"}}, "labels"),
        ({"256": {"name": "x"}}, "labels"),
        ({"1": {"name": "bad\x00name"}}, "name"),
        ({"1": {"name": "x", "color": [0, 0, 300]}}, "color"),
        ({"1": {"name": "x", "type": {"code": "1", "scheme": "SCT"}}}, "meaning"),
    ],
)
def test_label_tables_out_of_bounds_are_a_422(app_client: Server, labels: dict[str, Any], where: str) -> None:
    annotation_id = annotation_with(app_client, None, study="1.2.3.4", series="1.2.3.4.5")
    body = {
        "annotation_id": annotation_id,
        "model_name": "m",
        "version": "1",
        "source": "ai",
        "labels": labels,
    }
    response = app_client.api("POST", "/api/mask-group", role="uploader", json=body)
    assert response.status_code in (400, 422), response.text
    assert where in response.text


# --- send to the PACS --------------------------------------------------------------------------------


def test_send_needs_approval_and_records_a_pacs_failure(
    server_factory: ServerFactory, ct_folder: list[Path]
) -> None:
    app = server_factory()  # no PACS configured
    geometry = geometry_of(ct_folder)
    group = upload_volume(app, annotation_with(app, geometry), phantom(20, 32), [2, 3])
    body = assert_error(
        app.api("POST", f"/api/mask-group/{group['id']}/send", role="uploader"), 409, "group_not_approved"
    )
    assert "PACS_MASK_SEND_UNREVIEWED" in body["message"]

    assert (
        app.api(
            "POST", f"/api/mask-group/{group['id']}/review", role="reviewer", json={"decision": "approved"}
        ).status_code
        == 200
    )
    assert_error(
        app.api("POST", f"/api/mask-group/{group['id']}/send", role="uploader"), 503, "pacs_not_configured"
    )
    listed = app.api("GET", f"/api/mask/{group['id']}").json()["group"]
    assert listed["sent_at"] is None
    assert listed["send_error"].startswith("pacs_not_configured")
    actions = [
        r["action"] for r in app.api("GET", "/api/audit", params={"group_id": group["id"]}).json()["items"]
    ]
    assert "group.send_failed" in actions


def pacs_settings(orthanc: Orthanc, **changes: Any) -> dict[str, Any]:
    return {
        "dicomweb_url": orthanc.dicomweb_url,
        "dicomweb_user": orthanc.user,
        "dicomweb_password": orthanc.password,
    } | changes


def seg_in_study(orthanc: Orthanc, study_uid: str) -> list[tuple[str, str]]:
    """``(SeriesInstanceUID, Modality)`` of every series of the study, by QIDO-RS."""
    from dicomweb_client.api import DICOMwebClient
    from dicomweb_client.session_utils import create_session_from_user_pass

    client = DICOMwebClient(
        orthanc.dicomweb_url, session=create_session_from_user_pass(orthanc.user, orthanc.password)
    )
    found = client.search_for_series(study_uid, fields=["Modality"])
    return [(s["0020000E"]["Value"][0], s["00080060"]["Value"][0]) for s in found]


def test_approved_seg_is_stored_in_the_pacs_once_and_listed_in_its_study(
    server_factory: ServerFactory, orthanc: Orthanc, pacs_ct: StoredSeries
) -> None:
    app = server_factory(**pacs_settings(orthanc, send_approved_seg=True))
    created = app.api(
        "POST", "/api/annotations/from-pacs", json={"series_instance_uid": pacs_ct.series_instance_uid}
    )
    assert created.status_code == 201, created.text
    volume = np.zeros((pacs_ct.count, pacs_ct.rows, pacs_ct.columns), dtype=np.uint8)
    volume[0, 10:20, 30:50] = 1
    volume[150:152, 40:44, 2:9] = 2
    group = upload_volume(app, created.json()["id"], volume, [0, 150, 151, 199])

    approved = app.api(
        "POST", f"/api/mask-group/{group['id']}/review", role="reviewer", json={"decision": "approved"}
    )
    assert approved.status_code == 200, approved.text
    after = approved.json()
    assert after["review_status"] == "approved"
    assert after["sent_at"] is not None, after  # PACS_MASK_SEND_APPROVED_SEG sent it on approval
    assert after["sent_to"] == orthanc.dicomweb_url
    seg_uid = after["seg"]["sop_instance_uid"]
    series = seg_in_study(orthanc, pacs_ct.study_instance_uid)
    assert (after["seg"]["series_instance_uid"], "SEG") in series

    again = app.api("POST", f"/api/mask-group/{group['id']}/send", role="uploader")
    assert again.status_code == 200, again.text
    assert again.json()["sop_instance_uid"] == seg_uid
    assert again.json()["pacs_url"] == orthanc.dicomweb_url
    actions = [
        r["action"] for r in app.api("GET", "/api/audit", params={"group_id": group["id"]}).json()["items"]
    ]
    assert actions.count("group.send") == 1


def test_a_failed_send_on_approval_is_recorded_and_the_approval_stands(
    server_factory: ServerFactory, ct_folder: list[Path], caplog: pytest.LogCaptureFixture
) -> None:
    app = server_factory(send_approved_seg=True)  # asked to send on approval, but no PACS configured
    geometry = geometry_of(ct_folder)
    group = upload_volume(app, annotation_with(app, geometry), phantom(20, 32), [2, 3])
    approved = app.api(
        "POST", f"/api/mask-group/{group['id']}/review", role="reviewer", json={"decision": "approved"}
    )
    assert approved.status_code == 200, approved.text
    body = approved.json()
    assert (body["review_status"], body["sent_at"]) == ("approved", None)
    assert body["send_error"].startswith("pacs_not_configured")
    assert body["seg"] is None  # the PACS check comes first: nothing was built for nothing
    assert "sending the SEG of group" in caplog.text


def test_the_multiframe_mr_from_the_pacs_is_refused_naming_the_missing_positions(
    server_factory: ServerFactory, orthanc: Orthanc, pacs_mr: StoredSeries
) -> None:
    app = server_factory(**pacs_settings(orthanc, send_unreviewed=True))
    assert app.api("GET", "/api/config", role="uploader").json()["send_unreviewed"] is True
    created = app.api(
        "POST",
        "/api/annotations/from-pacs",
        json={
            "series_instance_uid": pacs_mr.series_instance_uid,
            "study_instance_uid": pacs_mr.study_instance_uid,
        },
    )
    assert created.status_code == 201, created.text
    volume = np.zeros((pacs_mr.count, pacs_mr.rows, pacs_mr.columns), dtype=np.uint8)
    volume[4, 10:20, 10:20] = 1
    group = upload_volume(app, created.json()["id"], volume, [4])
    for route in ("seg", "send"):
        body = assert_error(
            app.api("POST", f"/api/mask-group/{group['id']}/{route}"), 422, "seg_geometry_incomplete"
        )
        assert "image_position_patient of slice 0" in body["message"]
    assert (pacs_mr.series_instance_uid, "MR") in seg_in_study(orthanc, pacs_mr.study_instance_uid)
    assert [s for s in seg_in_study(orthanc, pacs_mr.study_instance_uid) if s[1] == "SEG"] == []
