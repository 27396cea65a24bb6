"""Issue 9: the server records each annotation's series geometry and refuses masks that do not fit it.

Geometry is built from real pydicom headers (pydicom's multi-frame MR, generated CTs whose
InstanceNumber runs against position) and sent through the real API on SQLite and PostgreSQL.
"""

from __future__ import annotations

import copy
import io
import random
from pathlib import Path
from typing import Any

import msgspec
import pydicom
import pytest
from PIL import Image
from pydicom.data import get_testdata_file

from pacs_mask_desktop.core.demo import write_synthetic_ct, write_synthetic_enhanced_ct
from server.contract import messages
from server.geometry import GeometryError, geometry_from_datasets, validate_geometry
from server.jobs.validate import validate
from tests.server.conftest import (
    ALL_DBS,
    Server,
    Slice,
    assert_error,
    create_group,
    make_slices,
    upload,
)

SOP_ROOT = (
    "1.2.826.0.1.3680043.8.498."  # the UIDs tests.server.conftest.Slice sends for slice i: ROOT + (i+1)
)


@pytest.fixture(scope="module")
def ct_headers(tmp_path_factory: pytest.TempPathFactory) -> list[pydicom.Dataset]:
    """A generated 8-slice CT (InstanceNumber descending with z), headers in shuffled order."""
    paths = write_synthetic_ct(tmp_path_factory.mktemp("ct"), slices=8, size=16, seed=5)
    headers = [pydicom.dcmread(p, stop_before_pixels=True) for p in paths]
    random.Random(3).shuffle(headers)
    return headers


def geometry_dict(count: int = 4, size: int = 16, **changes: Any) -> dict[str, Any]:
    """A folder geometry of ``count`` axial slices whose SOP UIDs are the ones conftest's Slice sends."""
    return {
        "series_instance_uid": "1.2.3.4.5",
        "study_instance_uid": "1.2.3.4",
        "frame_of_reference_uid": "1.2.3.4.6",
        "modality": "CT",
        "rows": size,
        "columns": size,
        "pixel_spacing": [0.7, 0.7],
        "image_orientation_patient": [1, 0, 0, 0, 1, 0],
        "patient_id": "P-1",
        "patient_name": "Doe^Jane",
        "source": "folder",
        "instances": [
            {
                "slice_index": i,
                "sop_instance_uid": f"{SOP_ROOT}{i + 1}",
                "instance_number": count - i,
                "image_position_patient": [0.0, 0.0, -100.0 + 2.5 * i],
            }
            for i in range(count)
        ],
        **changes,
    }


def create_with_geometry(server: Server, geometry: dict[str, Any]) -> Any:
    return server.api(
        "POST",
        "/api/annotations",
        role="uploader",
        json={
            "study_instance_uid": geometry["study_instance_uid"],
            "series_instance_uid": geometry["series_instance_uid"],
            "series": geometry,
        },
    )


# --- geometry_from_datasets / validate_geometry -------------------------------------------------------


def test_generated_ct_slice_0_is_the_lowest_position_whatever_the_instance_numbers(ct_headers) -> None:
    geometry = geometry_from_datasets(ct_headers, "pacs")
    z = [i.image_position_patient[2] for i in geometry.instances]  # type: ignore[index]
    assert z == sorted(z)
    assert [i.slice_index for i in geometry.instances] == list(range(8))
    assert [i.instance_number for i in geometry.instances] == list(range(8, 0, -1))  # runs the other way
    assert (geometry.rows, geometry.columns, geometry.modality, geometry.source) == (16, 16, "CT", "pacs")
    assert geometry.image_orientation_patient == [1, 0, 0, 0, 1, 0]
    assert geometry.patient_id
    assert geometry.study_instance_uid == ct_headers[0].StudyInstanceUID


def test_multiframe_mr_without_any_spatial_information_is_one_slice_per_frame_in_frame_order() -> None:
    mr = pydicom.dcmread(get_testdata_file("emri_small.dcm"), stop_before_pixels=True)
    geometry = geometry_from_datasets([mr], "pacs")  # one object, no positions, no orientation
    assert [i.frame_number for i in geometry.instances] == list(range(1, 11))
    assert {i.sop_instance_uid for i in geometry.instances} == {mr.SOPInstanceUID}
    assert (geometry.rows, geometry.columns, geometry.modality) == (64, 64, "MR")


def test_multiframe_mr_without_positions_is_refused_where_frame_order_is_ambiguous() -> None:
    mr = pydicom.dcmread(get_testdata_file("emri_small.dcm"), stop_before_pixels=True)
    second = copy.deepcopy(mr)
    second.SOPInstanceUID = "1.2.3.4.5.6.7.8.9"
    with pytest.raises(GeometryError) as caught:  # two objects: which comes first is unknown
        geometry_from_datasets([mr, second], "pacs")
    assert caught.value.code == "series_missing_positions"
    assert "frame(s) of the multi-frame MR image" in caught.value.message
    oriented = copy.deepcopy(mr)
    oriented.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]  # placed in space, but without positions
    with pytest.raises(GeometryError) as caught:
        geometry_from_datasets([oriented], "pacs")
    assert caught.value.code == "series_missing_positions"
    mr.Modality = "US"  # only CT, MR and PET must be placed; other multi-frame images keep frame order
    assert len(geometry_from_datasets([mr, second], "pacs").instances) == 20


def raw(ds: pydicom.Dataset, tag: int, vr: str, value: bytes) -> None:
    """An element as a PACS may deliver it: raw text, converted (and failing) only when read."""
    from pydicom.dataelem import RawDataElement

    ds._dict[pydicom.tag.Tag(tag)] = RawDataElement(
        pydicom.tag.Tag(tag), vr, len(value), value, 0, False, True
    )


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        (lambda ds: setattr(ds, "Rows", None), "TypeError"),
        (lambda ds: raw(ds, 0x00200013, "IS", b"inf "), "OverflowError"),
        (lambda ds: raw(ds, 0x00200013, "IS", b"nan "), "InstanceNumber nan"),
        (lambda ds: raw(ds, 0x00200013, "DS", b"1e999 "), "InstanceNumber inf"),
        (lambda ds: setattr(ds, "ImagePositionPatient", ["0", "nan", "1"]), "finite numbers"),
        (lambda ds: setattr(ds, "ImagePositionPatient", ["0", "inf", "1"]), "finite numbers"),
        (lambda ds: setattr(ds, "ImageOrientationPatient", [1, 0, 0, 0, 1]), "6 finite numbers"),
        (lambda ds: raw(ds, 0x00280030, "DS", b"x\\1 "), "is not 2 numbers"),
    ],
    ids=["rows-without-value", "instance-inf", "instance-nan", "instance-ds-inf", "position-nan", "position-inf", "orientation-5", "spacing-text"],
)  # fmt: skip
@pytest.mark.filterwarnings("ignore:Invalid value for VR:UserWarning")  # the point of the test
def test_malformed_header_values_are_a_geometry_error_not_a_crash(ct_headers, change, problem: str) -> None:
    from server.geometry import MalformedHeader

    headers = copy.deepcopy(ct_headers)
    with pydicom.config.disable_value_validation():
        change(headers[0])  # the first header also gives the series-wide values
    with pytest.raises(MalformedHeader) as caught:
        geometry_from_datasets(headers, "pacs")
    assert caught.value.code == "series_geometry_invalid"
    assert caught.value.status_code == 422
    assert problem in caught.value.message


def test_enhanced_multiframe_uses_per_frame_positions(tmp_path: Path) -> None:
    path = write_synthetic_enhanced_ct(tmp_path / "enhanced.dcm", frames=6, size=16, reverse_frames=True)
    geometry = geometry_from_datasets([pydicom.dcmread(path, stop_before_pixels=True)], "pacs")
    assert [i.frame_number for i in geometry.instances] == [6, 5, 4, 3, 2, 1]  # frame 1 is the top
    assert geometry.image_orientation_patient == [1, 0, 0, 0, 1, 0]
    assert geometry.pixel_spacing is not None


def test_mixed_planes_are_refused_naming_the_slices(ct_headers) -> None:
    headers = copy.deepcopy(ct_headers)
    headers[2].ImageOrientationPatient = [1, 0, 0, 0, 0, -1]  # a coronal slice in an axial series
    with pytest.raises(GeometryError) as caught:
        geometry_from_datasets(headers, "pacs")
    assert caught.value.code == "series_mixed_orientations"
    assert "mixes planes" in caught.value.message
    assert caught.value.details["slices"][0]["sop_instance_uid"] == headers[2].SOPInstanceUID


def test_duplicate_positions_are_refused(ct_headers) -> None:
    headers = copy.deepcopy(ct_headers)
    headers[1].ImagePositionPatient = list(headers[4].ImagePositionPatient)
    with pytest.raises(GeometryError) as caught:
        geometry_from_datasets(headers, "pacs")
    assert caught.value.code == "series_duplicate_positions"
    pair = {s["sop_instance_uid"] for s in caught.value.details["duplicates"][0]["slices"]}
    assert pair == {headers[1].SOPInstanceUID, headers[4].SOPInstanceUID}


def test_inconsistent_rows_and_columns_are_refused(ct_headers) -> None:
    headers = copy.deepcopy(ct_headers)
    headers[3].Rows = 32
    with pytest.raises(GeometryError) as caught:
        geometry_from_datasets(headers, "pacs")
    assert caught.value.code == "series_inconsistent_size"


def test_several_series_are_refused(ct_headers) -> None:
    headers = copy.deepcopy(ct_headers)
    headers[0].SeriesInstanceUID = "1.2.3.999"
    with pytest.raises(GeometryError) as caught:
        geometry_from_datasets(headers, "pacs")
    assert caught.value.code == "series_mixed"


@pytest.mark.parametrize("db_kind", ALL_DBS)
def test_over_long_study_id_and_accession_number_are_kept_whole_up_to_64(app_client: Server) -> None:
    # SH is 16 characters in DICOM, but real PACS send longer; kept as sent (copied into the SEG).
    long_text = {"study_id": "S" * 40, "accession_number": "ACC-2026-11-30-RADIOLOGY-000123"}
    created = create_with_geometry(app_client, geometry_dict(4, **long_text))
    assert created.status_code == 201, created.text
    stored = app_client.api("GET", f"/api/annotations/{created.json()['id']}/series", role="uploader").json()
    assert (stored["study_id"], stored["accession_number"]) == (
        long_text["study_id"],
        long_text["accession_number"],
    )
    garbage = create_with_geometry(app_client, geometry_dict(4, accession_number="A" * 65))
    assert_error(garbage, 422, "invalid_value")  # still bounded
    assert_error(create_with_geometry(app_client, geometry_dict(4, study_id="S\x001")), 422, "invalid_value")


def test_validate_reorders_a_client_geometry_along_the_normal() -> None:
    sent = geometry_dict(4)
    sent["instances"] = [dict(item, slice_index=3 - item["slice_index"]) for item in sent["instances"]]
    geometry = validate_geometry(msgspec.convert(sent, messages.SeriesGeometry))
    assert [i.sop_instance_uid for i in geometry.instances] == [f"{SOP_ROOT}{n}" for n in (1, 2, 3, 4)]
    assert [i.slice_index for i in geometry.instances] == [0, 1, 2, 3]


def test_validate_refuses_indexes_that_are_not_0_to_n() -> None:
    sent = geometry_dict(3)
    sent["instances"][2]["slice_index"] = 5
    with pytest.raises(GeometryError, match=r"0\.\.2"):
        validate_geometry(msgspec.convert(sent, messages.SeriesGeometry))


# --- the API -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("db_kind", ALL_DBS)
def test_annotation_with_geometry_round_trips_in_server_order(app_client: Server, ct_headers) -> None:
    built = msgspec.to_builtins(geometry_from_datasets(ct_headers, "folder"))
    sent = dict(built, instances=[dict(i, slice_index=7 - i["slice_index"]) for i in built["instances"]])
    response = create_with_geometry(app_client, sent)
    assert response.status_code == 201, response.text
    out = response.json()
    assert out["has_geometry"] is True
    assert (out["rows"], out["columns"], out["slice_count"], out["modality"]) == (16, 16, 8, "CT")
    assert out["patient_id"] == built["patient_id"]

    series = app_client.api("GET", f"/api/annotations/{out['id']}/series", role="uploader")
    assert series.status_code == 200, series.text
    assert series.json() == built  # re-ordered back: slice 0 is the lowest z again
    assert series.json()["instances"][0]["instance_number"] == 8

    actions = [r["action"] for r in app_client.api("GET", "/api/audit", params={"limit": 10}).json()["items"]]
    assert {"annotation.create", "annotation.series.view"} <= set(actions)


@pytest.mark.parametrize("db_kind", ALL_DBS)
def test_older_annotations_without_geometry_keep_working(app_client: Server) -> None:
    created = app_client.api(
        "POST",
        "/api/annotations",
        role="uploader",
        json={"study_instance_uid": "1.2", "series_instance_uid": "1.3"},
    ).json()
    assert created["has_geometry"] is False
    assert created["rows"] is None
    assert created["slice_count"] is None
    missing = app_client.api("GET", f"/api/annotations/{created['id']}/series", role="uploader")
    assert_error(missing, 404, "series_geometry_unknown")
    assert_error(
        app_client.api("GET", "/api/annotations/999/series", role="uploader"), 404, "annotation_not_found"
    )


@pytest.mark.parametrize("db_kind", ALL_DBS)
@pytest.mark.parametrize(
    ("change", "code"),
    [
        (
            lambda g: g["instances"][1].update(image_orientation_patient=[0, 1, 0, 0, 0, -1]),
            "series_mixed_orientations",
        ),
        (
            lambda g: g["instances"][1].update(image_position_patient=[0.0, 0.0, -100.0]),
            "series_duplicate_positions",
        ),
        (lambda g: g["instances"][2].update(rows=32), "series_inconsistent_size"),
        (lambda g: g.update(series_instance_uid="1.2.3.4.999"), "series_mismatch"),
        (lambda g: g.update(image_orientation_patient=[1, 0, 0, 1, 0, 0]), "series_geometry_invalid"),
        (
            lambda g: g.update(
                modality="MR",
                instances=[
                    i | {"frame_number": n + 1, "image_position_patient": None}
                    for n, i in enumerate(g["instances"])
                ],
            ),
            "series_missing_positions",
        ),
    ],
    ids=[
        "mixed-planes",
        "duplicate-positions",
        "sizes",
        "other-series",
        "degenerate-orientation",
        "multiframe-unplaced",
    ],
)
def test_bad_geometry_is_a_clear_422_and_creates_nothing(app_client: Server, change, code: str) -> None:
    geometry = geometry_dict(4)
    change(geometry)
    before = app_client.row_counts()
    response = app_client.api(
        "POST",
        "/api/annotations",
        role="uploader",
        json={"study_instance_uid": "1.2.3.4", "series_instance_uid": "1.2.3.4.5", "series": geometry},
    )
    assert_error(response, 422, code)
    assert app_client.row_counts() == before


@pytest.mark.parametrize("db_kind", ALL_DBS)
def test_complete_refuses_every_slice_that_does_not_fit_in_one_422(app_client: Server) -> None:
    annotation = create_with_geometry(app_client, geometry_dict(4)).json()
    group = create_group(app_client, annotation["id"])
    good = make_slices(2)  # 16x16, indexes 0-1, the series' UIDs
    wrong = [Slice("slice_0002.png", 2, good[0].body), Slice("slice_0009.png", 9, good[1].body)]
    upload(app_client, group["id"], good + wrong)
    body = [s.to_complete() for s in good + wrong]
    body[1].update(width=64, height=64)  # declared size differs from Rows/Columns
    body[2].update(sop_instance_uid=f"{SOP_ROOT}4")  # the instance of slice 3, not 2
    before = app_client.snapshot()

    response = app_client.api(
        "POST", f"/api/mask-group/{group['id']}/complete", role="uploader", json={"slices": body}
    )

    error = assert_error(response, 422, "geometry_mismatch")
    by_index = {s["index"]: s for s in error["details"]["slices"]}
    assert set(by_index) == {1, 2, 9}
    assert "64x64" in by_index[1]["reason"]
    assert "16x16" in by_index[1]["reason"]
    assert "not the instance at slice index 2" in by_index[2]["reason"]
    assert "outside the series" in by_index[9]["reason"]
    assert by_index[9]["filename"] == "slice_0009.png"
    assert app_client.snapshot() == before  # nothing registered, no audit row

    fitting = app_client.api(
        "POST", f"/api/mask-group/{group['id']}/complete", role="uploader",
        json={"slices": [s.to_complete() for s in good]},
    )  # fmt: skip
    assert fitting.status_code == 200, fitting.text


@pytest.mark.parametrize("db_kind", ALL_DBS)
def test_signed_url_refuses_a_declared_index_outside_the_series(app_client: Server) -> None:
    annotation = create_with_geometry(app_client, geometry_dict(4)).json()
    group = create_group(app_client, annotation["id"])
    slices = make_slices(5)  # index 4 is one past the end
    before = app_client.snapshot()
    response = app_client.api(
        "POST",
        f"/api/mask-group/{group['id']}/signed-url",
        role="uploader",
        json={"slices": [dict(s.to_sign(), slice_index=s.index) for s in slices]},
    )
    error = assert_error(response, 422, "geometry_mismatch")
    assert [s["index"] for s in error["details"]["slices"]] == [4]
    assert app_client.snapshot() == before


# --- the validate job decodes what was stored -----------------------------------------------------------


def labelled_png(size: int, labels: tuple[int, ...]) -> bytes:
    image = Image.new("L", (size, size), 0)
    for n, label in enumerate(labels):
        image.putpixel((n, n), label)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.mark.parametrize("db_kind", ALL_DBS)
def test_validate_reports_slices_whose_real_size_or_labels_differ(app_client: Server) -> None:
    """The issue's case: a 16x16 PNG with labels 1 and 2 registered as "64x64, label 1"."""
    created = app_client.api(
        "POST",
        "/api/annotations",
        role="uploader",
        json={"study_instance_uid": "1.2", "series_instance_uid": "1.3"},
    ).json()  # an older annotation without geometry: complete cannot check the declared size
    group = create_group(app_client, created["id"])
    lying = Slice("slice_0000.png", 0, labelled_png(16, (1, 2)))
    honest = Slice("slice_0001.png", 1, labelled_png(16, (3,)))
    upload(app_client, group["id"], [lying, honest])
    body = [
        dict(lying.to_complete(), width=64, height=64, label="1"),
        dict(honest.to_complete(), label="3"),
    ]
    response = app_client.api(
        "POST", f"/api/mask-group/{group['id']}/complete", role="uploader", json={"slices": body}
    )
    assert response.status_code == 200, response.text

    report = validate(app_client.db, app_client.storage, app_client.settings)

    assert [f.kind for f in report.findings] == ["content_mismatch"]
    finding = report.findings[0]
    assert finding.detail["slice_index"] == 0
    assert finding.detail["filename"] == "slice_0000.png"
    assert "16x16, registered as 64x64" in finding.message
    assert "labels are 1,2, registered as 1" in finding.message
    assert finding.detail["stored"] == {"width": 16, "height": 16, "labels": [1, 2]}
    assert not report.ok
