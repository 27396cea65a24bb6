"""Issue 14: two complete groups of one annotation compared (Dice, voxels, mL) and each group's volumes.

The numbers of the small case are worked out by hand below; a generated 300-slice pair is checked
against a plain numpy computation. Both run on the local and the S3 backend (real ``rclone serve s3``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from server.db.models import Comparison
from tests.server.conftest import ALL_DBS, ALL_STORAGES, Server, assert_error
from tests.server.review_data import annotation, geometry, upload_group

# 3 axial slices of 4x4, pixel spacing 0.5 x 0.8 mm, 2 mm apart: one voxel is 0.8 mm³ = 0.0008 mL.
VOXEL_ML = 0.0008


def hand_pair() -> tuple[np.ndarray, np.ndarray]:
    """Group A: slice 0 label 1 on a 2x2 square and label 2 at (3, 0); slice 1 label 1 at (0, 0) and (0, 1),
    label 2 at (3, 3); slice 2 empty (not even uploaded). Group B: slice 0 label 1 on three of A's four
    pixels and label 1 (not 2) at (3, 0); slice 1 label 1 at (0, 0), label 2 at (3, 3) and (3, 2);
    slice 2 label 2 at (2, 2)."""
    a = np.zeros((3, 4, 4), np.uint8)
    a[0, 0:2, 0:2] = 1
    a[0, 3, 0] = 2
    a[1, 0, 0:2] = 1
    a[1, 3, 3] = 2
    b = np.zeros((3, 4, 4), np.uint8)
    b[0, 0, 0:2] = 1
    b[0, 1, 0] = 1
    b[0, 3, 0] = 1
    b[1, 0, 0] = 1
    b[1, 3, 2:4] = 2
    b[2, 2, 2] = 2
    return a, b


def hand_groups(server: Server, series: dict[str, Any] | None) -> tuple[dict[str, Any], dict[str, Any]]:
    a, b = hand_pair()
    annotation_id = annotation(server, series)
    group_a = upload_group(server, annotation_id, a, [0, 1], version="a")
    group_b = upload_group(server, annotation_id, b, [0, 1, 2], version="b")
    return group_a, group_b


@pytest.mark.parametrize("storage_kind", ALL_STORAGES)
def test_hand_computed_dice_voxels_and_volumes(app_client: Server) -> None:
    server = app_client
    group_a, group_b = hand_groups(server, geometry(3, 4))
    response = server.api("GET", f"/api/mask-group/{group_a['id']}/compare/{group_b['id']}", role="uploader")
    assert response.status_code == 200, response.text
    result = response.json()
    assert (result["a"], result["b"]) == (group_a["id"], group_b["id"])

    # Label 1: A has 4 + 2 = 6 voxels, B 4 + 1 = 5; both on 3 + 1 = 4 -> Dice 8/11.
    # Label 2: A has 1 + 1 = 2, B 2 + 1 = 3; both only at slice 1 (3, 3) -> Dice 2/5.
    # Totals: A 8, B 8; the values agree on 4 + 1 = 5 voxels -> Dice 10/16 (slice 0 (3, 0): 2 vs 1).
    expected = {
        "1": (8 / 11, 6, 5, 6 * VOXEL_ML, 5 * VOXEL_ML, -1 * VOXEL_ML),
        "2": (2 / 5, 2, 3, 2 * VOXEL_ML, 3 * VOXEL_ML, 1 * VOXEL_ML),
    }
    assert set(result["labels"]) == set(expected)
    for label, (dice, voxels_a, voxels_b, ml_a, ml_b, diff) in expected.items():
        got = result["labels"][label]
        assert got["dice"] == pytest.approx(dice)
        assert (got["voxels_a"], got["voxels_b"]) == (voxels_a, voxels_b)
        assert got["volume_a_ml"] == pytest.approx(ml_a)
        assert got["volume_b_ml"] == pytest.approx(ml_b)
        assert got["volume_diff_ml"] == pytest.approx(diff)
    totals = result["totals"]
    assert totals["dice"] == pytest.approx(10 / 16)
    assert (totals["voxels_a"], totals["voxels_b"]) == (8, 8)
    assert totals["volume_diff_ml"] == pytest.approx(0.0)

    # Per slice: 0 -> A 5, B 4, agree 3: 6/9; label 1 6/8, label 2 0 (A 1, B 0).
    # 1 -> A 3, B 3, agree 2: 4/6; label 1 2/3 (2 vs 1), label 2 2/3 (1 vs 2). 2 -> only B: 0.
    slices = {s["slice_index"]: s for s in result["slices"]}
    assert list(slices) == [0, 1, 2]
    assert slices[0]["dice"] == pytest.approx(6 / 9)
    assert slices[0]["labels"]["1"] == {"dice": pytest.approx(6 / 8), "voxels_a": 4, "voxels_b": 4}
    assert slices[0]["labels"]["2"] == {"dice": 0.0, "voxels_a": 1, "voxels_b": 0}
    assert slices[1]["dice"] == pytest.approx(4 / 6)
    assert slices[1]["labels"]["1"] == {"dice": pytest.approx(2 / 3), "voxels_a": 2, "voxels_b": 1}
    assert slices[1]["labels"]["2"] == {"dice": pytest.approx(2 / 3), "voxels_a": 1, "voxels_b": 2}
    assert slices[2] == {
        "slice_index": 2,
        "dice": 0.0,
        "labels": {"2": {"dice": 0.0, "voxels_a": 0, "voxels_b": 1}},
    }

    # The other way round: the same numbers with a and b swapped (served from the cache).
    reverse = server.api("GET", f"/api/mask-group/{group_b['id']}/compare/{group_a['id']}").json()
    assert reverse["labels"]["1"]["voxels_a"] == 5
    assert reverse["labels"]["1"]["volume_diff_ml"] == pytest.approx(1 * VOXEL_ML)
    assert reverse["slices"][2]["labels"]["2"] == {"dice": 0.0, "voxels_a": 1, "voxels_b": 0}
    with server.db.session() as session:
        assert session.query(Comparison).count() == 1
    audit = server.api("GET", "/api/audit", params={"group_id": group_b["id"]}).json()["items"]
    compares = [a for a in audit if a["action"] == "group.compare"]
    assert [a["detail"]["cached"] for a in compares] == [True]

    # Comparing stored both groups' volumes: label, voxels, mL and slice extent.
    listed = {
        g["id"]: g for g in server.api("GET", f"/api/mask-group/{group_a['annotation_id']}").json()["items"]
    }
    volumes_a = listed[group_a["id"]]["volumes"]
    assert volumes_a == {
        "1": {"voxels": 6, "volume_ml": pytest.approx(6 * VOXEL_ML), "first_slice": 0, "last_slice": 1},
        "2": {"voxels": 2, "volume_ml": pytest.approx(2 * VOXEL_ML), "first_slice": 0, "last_slice": 1},
    }
    assert listed[group_b["id"]]["volumes"]["2"] == {
        "voxels": 3,
        "volume_ml": pytest.approx(3 * VOXEL_ML),
        "first_slice": 1,
        "last_slice": 2,
    }


def test_volumes_are_computed_when_a_group_is_first_opened(app_client: Server) -> None:
    server = app_client
    a, _b = hand_pair()
    annotation_id = annotation(server, geometry(3, 4, pixel_spacing=(1.0, 1.0), step=5.0))  # 5 mm³ voxels
    group = upload_group(server, annotation_id, a, [0, 1])
    assert group["volumes"] is None
    listed = server.api("GET", f"/api/mask-group/{annotation_id}").json()["items"]
    assert listed[0]["volumes"] is None  # the list never computes
    opened = server.api("GET", f"/api/mask/{group['id']}", role="uploader").json()["group"]
    assert opened["volumes"] == {
        "1": {"voxels": 6, "volume_ml": pytest.approx(0.03), "first_slice": 0, "last_slice": 1},
        "2": {"voxels": 2, "volume_ml": pytest.approx(0.01), "first_slice": 0, "last_slice": 1},
    }
    assert (
        server.api("GET", f"/api/mask-group/{annotation_id}").json()["items"][0]["volumes"]
        == opened["volumes"]
    )


def test_without_stored_geometry_voxels_are_counted_and_volumes_are_null(app_client: Server) -> None:
    server = app_client
    group_a, group_b = hand_groups(server, None)
    result = server.api("GET", f"/api/mask-group/{group_a['id']}/compare/{group_b['id']}").json()
    assert result["labels"]["1"]["dice"] == pytest.approx(8 / 11)
    assert result["labels"]["1"]["volume_a_ml"] is None
    assert result["totals"]["volume_diff_ml"] is None
    opened = server.api("GET", f"/api/mask/{group_a['id']}").json()["group"]
    assert opened["volumes"]["1"] == {"voxels": 6, "volume_ml": None, "first_slice": 0, "last_slice": 1}


def random_pair(slices: int, size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Two label volumes (labels 1..3) that mostly overlap: B is A with blobs moved and relabelled."""
    rng = np.random.default_rng(seed)
    a = np.zeros((slices, size, size), np.uint8)
    for _ in range(40):
        label = int(rng.integers(1, 4))
        z0 = int(rng.integers(0, slices - 20))
        y0, x0 = (int(v) for v in rng.integers(0, size - 16, 2))
        a[
            z0 : z0 + int(rng.integers(5, 20)),
            y0 : y0 + int(rng.integers(4, 16)),
            x0 : x0 + int(rng.integers(4, 16)),
        ] = label
    b = np.roll(a, shift=(1, 2), axis=(1, 2)).copy()
    noise = rng.random(a.shape) < 0.01
    b[noise] = rng.integers(0, 4, int(noise.sum()), dtype=np.uint8)
    return a, b


def numpy_reference(a: np.ndarray, b: np.ndarray) -> dict[str, Any]:
    """Dice per label, in total and per slice, the plain way."""
    labels = {}
    for label in sorted((set(np.unique(a)) | set(np.unique(b))) - {0}):
        in_a, in_b = a == label, b == label
        labels[str(label)] = (
            2 * np.sum(in_a & in_b) / (in_a.sum() + in_b.sum()),
            int(in_a.sum()),
            int(in_b.sum()),
        )
    agree = np.sum((a == b) & (a > 0))
    total = 2 * agree / (np.sum(a > 0) + np.sum(b > 0))
    per_slice = {}
    for index in range(a.shape[0]):
        count = np.sum(a[index] > 0) + np.sum(b[index] > 0)
        if count:
            per_slice[index] = 2 * np.sum((a[index] == b[index]) & (a[index] > 0)) / count
    return {"labels": labels, "total": total, "slices": per_slice}


@pytest.mark.parametrize("storage_kind", ALL_STORAGES)
def test_a_generated_300_slice_pair_matches_numpy(app_client: Server) -> None:
    server = app_client
    a, b = random_pair(300, 48, seed=14)
    series = geometry(300, 48, pixel_spacing=(0.7, 0.7), step=1.25)
    annotation_id = annotation(server, series)
    group_a = upload_group(server, annotation_id, a, version="a")
    group_b = upload_group(server, annotation_id, b, version="b")
    result = server.api("GET", f"/api/mask-group/{group_a['id']}/compare/{group_b['id']}").json()
    reference = numpy_reference(a, b)
    assert set(result["labels"]) == set(reference["labels"])
    for label, (dice, voxels_a, voxels_b) in reference["labels"].items():
        got = result["labels"][label]
        assert got["dice"] == pytest.approx(dice)
        assert (got["voxels_a"], got["voxels_b"]) == (voxels_a, voxels_b)
        assert got["volume_diff_ml"] == pytest.approx((voxels_b - voxels_a) * 0.7 * 0.7 * 1.25 / 1000)
    assert result["totals"]["dice"] == pytest.approx(reference["total"])
    assert {s["slice_index"]: s["dice"] for s in result["slices"]} == pytest.approx(reference["slices"])


@pytest.mark.parametrize("db_kind", ALL_DBS)
def test_groups_that_cannot_be_compared_are_refused_with_the_reason(app_client: Server) -> None:
    server = app_client
    a, b = hand_pair()
    first = annotation(server, geometry(3, 4))
    second = annotation(server, geometry(3, 4))
    group_a = upload_group(server, first, a, version="a")
    other_annotation = upload_group(server, second, b, version="b")
    pending = upload_group(server, first, b, version="p", complete=False)

    body = assert_error(
        server.api("GET", f"/api/mask-group/{group_a['id']}/compare/{other_annotation['id']}"),
        409,
        "not_comparable",
    )
    assert "different annotations" in body["message"]
    body = assert_error(
        server.api("GET", f"/api/mask-group/{group_a['id']}/compare/{pending['id']}"), 409, "not_comparable"
    )
    assert "pending" in body["message"]
    assert_error(
        server.api("GET", f"/api/mask-group/{group_a['id']}/compare/00000000-0000-0000-0000-000000000000"),
        404,
        "group_not_found",
    )
    assert_error(
        server.api("GET", f"/api/mask-group/{group_a['id']}/compare/not-a-group"), 404, "group_not_found"
    )
    assert_error(server.api("GET", f"/api/mask-group/{group_a['id']}/compare/{pending['id']}", token=""), 401)


@pytest.mark.parametrize("storage_kind", ALL_STORAGES)
def test_a_group_against_itself_and_a_missing_object(app_client: Server) -> None:
    server = app_client
    group_a, group_b = hand_groups(server, geometry(3, 4))
    itself = server.api("GET", f"/api/mask-group/{group_a['id']}/compare/{group_a['id']}").json()
    assert itself["totals"] == {
        "dice": 1.0,
        "voxels_a": 8,
        "voxels_b": 8,
        "volume_a_ml": pytest.approx(8 * VOXEL_ML),
        "volume_b_ml": pytest.approx(8 * VOXEL_ML),
        "volume_diff_ml": 0.0,
    }
    assert [s["dice"] for s in itself["slices"]] == [1.0, 1.0]
    masks = server.api("GET", f"/api/mask/{group_b['id']}").json()["items"]
    server.storage.delete([masks[-1]["storage_key"]])  # storage lost an object behind the server's back
    body = assert_error(
        server.api("GET", f"/api/mask-group/{group_a['id']}/compare/{group_b['id']}"), 409, "object_missing"
    )
    assert masks[-1]["filename"] in body["message"]
