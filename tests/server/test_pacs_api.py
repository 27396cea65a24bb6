"""``POST /api/annotations/from-pacs`` and ``GET /api/config`` against a real Orthanc (DICOMweb).

The server reads the series' headers over WADO-RS itself: the 200-slice CT (sent to the PACS shuffled,
InstanceNumber descending with position) gets slice 0 at the lowest position, and the multi-frame MR one
slice per frame. A PACS that is down, silent, refuses the server's credentials, answers garbage or has
no such series gives a clear 4xx/5xx code, never a 500, and leaves nothing registered.
"""

from __future__ import annotations

import logging
from typing import Any

import pytest

from tests.orthanc import Orthanc, StoredSeries
from tests.server.conftest import Server, ServerFactory, assert_error


def pacs_settings(orthanc: Orthanc, **changes: Any) -> dict[str, Any]:
    """Settings pointing the app at the test Orthanc (and its credentials)."""
    return {
        "dicomweb_url": orthanc.dicomweb_url,
        "dicomweb_user": orthanc.user,
        "dicomweb_password": orthanc.password,
        **changes,
    }


def test_from_pacs_records_the_ct_in_geometric_order_despite_shuffled_descending_instances(
    server_factory: ServerFactory, orthanc: Orthanc, pacs_ct: StoredSeries
) -> None:
    app = server_factory(**pacs_settings(orthanc))
    created = app.api(
        "POST", "/api/annotations/from-pacs",
        json={"series_instance_uid": pacs_ct.series_instance_uid, "description": "liver CT"}, role="uploader",
    )  # fmt: skip
    assert created.status_code == 201, created.text
    row = created.json()
    assert row["study_instance_uid"] == pacs_ct.study_instance_uid  # found by the series UID alone
    assert (row["has_geometry"], row["rows"], row["columns"]) == (True, pacs_ct.rows, pacs_ct.columns)
    assert (row["slice_count"], row["modality"], row["patient_id"]) == (200, "CT", pacs_ct.patient_id)
    assert row["description"] == "liver CT"

    geometry = app.api("GET", f"/api/annotations/{row['id']}/series", role="uploader").json()
    instances = geometry["instances"]
    assert geometry["source"] == "pacs"
    assert [i["slice_index"] for i in instances] == list(range(200))
    assert tuple(i["sop_instance_uid"] for i in instances) == pacs_ct.sop_uids_in_order
    assert [i["instance_number"] for i in instances] == list(range(200, 0, -1))  # descending with position
    z = [i["image_position_patient"][2] for i in instances]
    assert z == sorted(z)
    assert z[0] < z[-1]
    assert geometry["accession_number"] == pacs_ct.accession_number


def test_from_pacs_records_the_multiframe_mr_one_slice_per_frame(
    server_factory: ServerFactory, orthanc: Orthanc, pacs_mr: StoredSeries
) -> None:
    app = server_factory(**pacs_settings(orthanc))
    created = app.api(
        "POST", "/api/annotations/from-pacs",
        json={"series_instance_uid": pacs_mr.series_instance_uid, "study_instance_uid": pacs_mr.study_instance_uid},
    )  # fmt: skip
    assert created.status_code == 201, created.text
    row = created.json()
    assert (row["slice_count"], row["rows"], row["columns"], row["modality"]) == (10, 64, 64, "MR")
    geometry = app.api("GET", f"/api/annotations/{row['id']}/series").json()
    assert {i["sop_instance_uid"] for i in geometry["instances"]} == {pacs_mr.sop_uids_in_order[0]}
    assert [i["frame_number"] for i in geometry["instances"]] == list(range(1, 11))  # frame order


def ct_json(count: int = 4) -> list[dict[str, Any]]:
    """DICOM JSON metadata of a small generated CT, as a PACS answers WADO-RS metadata."""
    import tempfile
    from pathlib import Path

    import pydicom

    from pacs_mask_desktop.core.demo import write_synthetic_ct

    with tempfile.TemporaryDirectory() as folder:
        paths = write_synthetic_ct(Path(folder), slices=count, size=16, seed=3)
        return [pydicom.dcmread(p, stop_before_pixels=True).to_json_dict() for p in paths]


@pytest.mark.parametrize(
    ("change", "said"),
    [
        (lambda item: item.update({"00280010": {"vr": "US"}}), "TypeError"),  # Rows without a value
        (lambda item: item.update({"00200032": {"vr": "DS", "Value": [0, "nan", 1]}}), "finite numbers"),
        (lambda item: item.update({"00200013": {"vr": "IS", "Value": ["inf"]}}), "malformed answer"),
        (
            lambda item: item.update({"00200032": {"vr": "DS", "BulkDataURI": "http://pacs/bulk/1"}}),
            "(0020,0032) came as BulkDataURI",
        ),
    ],
    ids=["rows-without-value", "position-nan", "instance-number-inf", "position-as-bulk-data"],
)
def test_from_pacs_answers_unreadable_headers_as_a_malformed_answer_not_a_500(
    server_factory: ServerFactory, monkeypatch: pytest.MonkeyPatch, change: Any, said: str
) -> None:
    from dicomweb_client.api import DICOMwebClient

    items = ct_json()
    change(items[1])
    monkeypatch.setattr(DICOMwebClient, "retrieve_series_metadata", lambda *_args: items)
    app = server_factory(dicomweb_url="http://127.0.0.1:9/dicom-web")  # never contacted
    before = app.row_counts()
    series = items[0]["0020000E"]["Value"][0]
    study = items[0]["0020000D"]["Value"][0]
    answer = app.api(
        "POST",
        "/api/annotations/from-pacs",
        json={"series_instance_uid": series, "study_instance_uid": study},
    )
    body = assert_error(answer, 502, "pacs_malformed_answer")
    assert said in body["message"]
    assert app.row_counts() == before


def test_config_tells_any_role_where_the_pacs_is_and_never_a_secret(
    server_factory: ServerFactory, orthanc: Orthanc
) -> None:
    app = server_factory(**pacs_settings(orthanc, dicomweb_token="t0ps3cret-bearer"))
    answer = app.api("GET", "/api/config", role="uploader")
    assert answer.status_code == 200
    assert answer.json()["dicomweb_url"] == orthanc.dicomweb_url
    assert answer.json()["version"]
    assert orthanc.password not in answer.text
    assert "t0ps3cret" not in answer.text
    assert app.api("GET", "/api/config", token="").status_code == 401
    assert "t0ps3cret" not in repr(app.settings)
    assert orthanc.password not in repr(app.settings)


def test_config_without_a_pacs_says_null(server_factory: ServerFactory) -> None:
    assert server_factory().api("GET", "/api/config").json()["dicomweb_url"] is None


def test_config_names_the_caller_and_its_role(server_factory: ServerFactory) -> None:
    app = server_factory()
    for role in ("uploader", "reviewer", "admin"):
        answer = app.api("GET", "/api/config", role=role).json()
        assert answer["role"] == role
        assert answer["user"]


@pytest.mark.parametrize(
    ("fault", "status", "code", "words"),
    [
        ("down", 503, "pacs_unreachable", "Cannot reach the PACS"),
        ("silent", 504, "pacs_timeout", "did not answer"),
        ("wrong_password", 502, "pacs_credentials_refused", "refused this server's credentials"),
        ("garbage", 502, "pacs_malformed_answer", "malformed"),
        ("unknown_series", 404, "pacs_series_not_found", "has no series"),
        ("not_configured", 503, "pacs_not_configured", "no PACS configured"),
    ],
)
def test_a_failing_pacs_gives_a_clear_error_and_registers_nothing(
    server_factory: ServerFactory,
    request: pytest.FixtureRequest,
    caplog: pytest.LogCaptureFixture,
    fault: str,
    status: int,
    code: str,
    words: str,
) -> None:
    orthanc: Orthanc = request.getfixturevalue("orthanc")
    series_uid = "1.2.3.4.5.6.7.8.9"
    settings = pacs_settings(orthanc, dicomweb_timeout=1.0)
    if fault == "down":
        settings["dicomweb_url"] = request.getfixturevalue("dead_pacs_url")
    elif fault == "silent":
        settings["dicomweb_url"] = request.getfixturevalue("silent_pacs")
    elif fault == "wrong_password":
        settings["dicomweb_password"] = "not-the-password"
        series_uid = request.getfixturevalue("pacs_ct").series_instance_uid
    elif fault == "garbage":
        settings["dicomweb_url"] = request.getfixturevalue("garbage_pacs")
    elif fault == "not_configured":
        settings["dicomweb_url"] = None
    app: Server = server_factory(**settings)
    before = app.snapshot()
    with caplog.at_level(logging.DEBUG):
        answer = app.api("POST", "/api/annotations/from-pacs", json={"series_instance_uid": series_uid})
    assert answer.status_code == status, answer.text
    body = answer.json()
    assert body["error"] == code
    assert words in body["message"]
    assert app.snapshot() == before
    assert orthanc.password not in caplog.text
    assert "not-the-password" not in caplog.text
    assert orthanc.password not in answer.text
    assert "not-the-password" not in answer.text


def test_metadata_without_the_image_plane_of_a_ct_is_refused_not_reordered_silently(orthanc: Orthanc) -> None:
    """A PACS answering only "main tags" must not make the server fall back to InstanceNumber order."""
    from pydicom import dcmread
    from pydicom.data import get_testdata_file

    from server.errors import PacsFailed
    from server.pacs import Pacs
    from server.settings import Settings

    ct = dcmread(get_testdata_file("CT_small.dcm"), stop_before_pixels=True)
    pacs = Pacs(Settings(dicomweb_url=orthanc.dicomweb_url))
    try:
        pacs.require_image_plane([ct])  # complete headers pass
        del ct.ImagePositionPatient
        with pytest.raises(PacsFailed) as caught:
            pacs.require_image_plane([ct])
    finally:
        pacs.close()
    assert caught.value.code == "pacs_malformed_answer"
    assert caught.value.status_code == 502
    assert "lacks ImagePositionPatient" in caught.value.message


def test_tls_verification_is_on_by_default_and_a_bad_ca_path_stops_start_up(tmp_path: Any) -> None:
    import certifi

    from server.settings import Settings, SettingsError

    assert Settings(data_dir=tmp_path).dicomweb_tls_verify is True
    assert Settings(data_dir=tmp_path, dicomweb_verify="false").dicomweb_tls_verify is False
    assert Settings(data_dir=tmp_path, dicomweb_verify=certifi.where()).dicomweb_tls_verify == certifi.where()
    with pytest.raises(SettingsError, match="PACS_MASK_DICOMWEB_VERIFY"):
        Settings.from_env(data_dir=tmp_path, dicomweb_verify=str(tmp_path / "no-such-ca.pem"))
