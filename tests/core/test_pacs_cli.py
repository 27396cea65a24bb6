"""``pacs-mask pacs …``, ``annotations --from-pacs`` and ``upload --series pacs`` on a real Orthanc.

The 200-slice CT (stored shuffled, InstanceNumber descending with position) and pydicom's 10-frame MR are
found with ``pacs studies/series``, become annotations whose geometry the server reads from the PACS, and
take their masks through ``upload --series pacs``; masks of the wrong size or past the last slice are
refused before anything is sent. A PACS that is down, refuses the credentials or answers garbage gives
a one-line message and exit code 4 (``EXIT_PACS``).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pacs_mask_desktop.cli import EXIT_BAD_INPUT, EXIT_OK, EXIT_PACS
from pacs_mask_desktop.core.demo import write_masks_for_series
from tests.live_server import LiveServer, Ran, ServerFactory
from tests.orthanc import Orthanc, StoredSeries

ClientEnv = Callable[..., dict[str, str]]


@pytest.fixture(scope="module")
def pacs_server(live_server_factory: ServerFactory, orthanc: Orthanc) -> LiveServer:
    """A live server whose PACS is the test Orthanc."""
    return live_server_factory("local", env=orthanc.env())


@pytest.fixture
def env(pacs_server: LiveServer, orthanc: Orthanc, client_env: ClientEnv) -> dict[str, str]:
    """The client's environment: the server, and the PACS credentials (the URL comes from the server)."""
    environment = client_env(pacs_server)
    environment["PACS_MASK_DICOMWEB_USER"] = orthanc.user
    environment["PACS_MASK_DICOMWEB_PASSWORD"] = orthanc.password
    return environment


def label_masks(folder: Path, count: int, size: int = 64) -> list[Path]:
    """``mask_0000.png`` … with a small square of label 1 each."""
    folder.mkdir(parents=True, exist_ok=True)
    mask = np.zeros((size, size), dtype=np.uint8)
    mask[size // 4 : size // 2, size // 4 : size // 2] = 1
    paths = [folder / f"mask_{i:04d}.png" for i in range(count)]
    for path in paths:
        Image.fromarray(mask, mode="L").save(path)
    return paths


def test_the_ct_is_found_annotated_from_the_pacs_and_takes_its_masks(
    run_cli: Callable[..., Ran],
    env: dict[str, str],
    pacs_server: LiveServer,
    pacs_ct: StoredSeries,
    tmp_path: Path,
) -> None:
    found = run_cli(["pacs", "studies", "--patient-id", pacs_ct.patient_id, "--json"], env)
    assert found.returncode == EXIT_OK, found.stderr
    (study,) = json.loads(found.stdout)["items"]
    assert (study["study_instance_uid"], study["instance_count"]) == (pacs_ct.study_instance_uid, 200)
    by_accession = run_cli(["pacs", "studies", "--accession", pacs_ct.accession_number], env)
    assert pacs_ct.study_instance_uid in by_accession.stdout

    series = run_cli(["pacs", "series", pacs_ct.study_instance_uid, "--json"], env)
    assert series.returncode == EXIT_OK, series.stderr
    (item,) = json.loads(series.stdout)["items"]
    assert (item["series_instance_uid"], item["modality"], item["instance_count"]) == (
        pacs_ct.series_instance_uid,
        "CT",
        200,
    )

    created = run_cli(["annotations", "--from-pacs", pacs_ct.series_instance_uid, "--description", "CT"], env)
    assert created.returncode == EXIT_OK, created.stderr
    annotation = int(created.stdout.strip())  # the id alone on stdout
    with pacs_server.api() as api:
        geometry = api.annotation_series(annotation)
    assert tuple(i.sop_instance_uid for i in geometry.instances) == pacs_ct.sop_uids_in_order
    assert geometry.instances[0].instance_number == 200  # slice 0 = lowest z = last in scanner order

    masks = tmp_path / "masks"
    write_masks_for_series(pacs_ct.folder, masks)  # ground truth, mask_0000 = lowest z
    upload = [
        "upload",
        "--annotation",
        str(annotation),
        "--model",
        "unet",
        "--version",
        "1",
        "--series",
        "pacs",
    ]
    done = run_cli([*upload, str(masks)], env)
    assert done.returncode == EXIT_OK, done.stderr
    with pacs_server.api() as api:
        (group,) = api.list_groups(annotation)
        items = api.group_with_slices(group.id).items
    assert group.status == "complete"
    assert len(items) == 200
    assert {m.slice_index: m.sop_instance_uid for m in items} == dict(enumerate(pacs_ct.sop_uids_in_order))

    # Refused before anything is sent: a mask of another size, a mask past the last slice.
    for name, size in (("mask_0003.png", 32), ("mask_0200.png", 64)):
        bad = tmp_path / f"bad-{name}"
        bad.mkdir()
        Image.fromarray(np.zeros((size, size), dtype=np.uint8), mode="L").save(bad / name)
        refused = run_cli(
            ["upload", "--annotation", str(annotation), "--model", "unet", "--version", f"bad-{name}",
             "--series", "pacs", str(bad)],
            env,
        )  # fmt: skip
        assert refused.returncode == EXIT_BAD_INPUT, refused.stderr
        assert "nothing was sent" in refused.stderr
        assert name in refused.stderr
    with pacs_server.api() as api:
        assert len(api.list_groups(annotation)) == 1


def test_the_multiframe_mr_is_annotated_from_the_pacs_and_takes_one_mask_per_frame(
    run_cli: Callable[..., Ran],
    env: dict[str, str],
    pacs_server: LiveServer,
    pacs_mr: StoredSeries,
    tmp_path: Path,
) -> None:
    series = run_cli(["pacs", "series", pacs_mr.study_instance_uid, "--json"], env)
    (item,) = json.loads(series.stdout)["items"]
    assert (item["modality"], item["instance_count"]) == ("MR", 1)
    created = run_cli(["annotations", "--from-pacs", pacs_mr.series_instance_uid], env)
    assert created.returncode == EXIT_OK, created.stderr
    annotation = int(created.stdout.strip())
    masks = label_masks(tmp_path / "masks", 10)
    done = run_cli(
        ["upload", "--annotation", str(annotation), "--model", "m", "--version", "1", "--series", "pacs",
         str(masks[0].parent)],
        env,
    )  # fmt: skip
    assert done.returncode == EXIT_OK, done.stderr
    with pacs_server.api() as api:
        (group,) = api.list_groups(annotation)
        items = api.group_with_slices(group.id).items
    assert sorted(m.slice_index for m in items) == list(range(10))
    assert {m.sop_instance_uid for m in items} == {pacs_mr.sop_uids_in_order[0]}


def test_upload_series_pacs_needs_an_annotation_with_geometry(
    run_cli: Callable[..., Ran], env: dict[str, str], pacs_server: LiveServer, tmp_path: Path
) -> None:
    annotation = pacs_server.new_annotation("no geometry")
    label_masks(tmp_path / "m", 1)
    refused = run_cli(
        ["upload", "--annotation", str(annotation), "--model", "m", "--version", "1", "--series", "pacs",
         str(tmp_path / "m")],
        env,
    )  # fmt: skip
    assert refused.returncode == EXIT_BAD_INPUT
    assert "no stored series geometry" in refused.stderr


def test_an_unknown_series_is_bad_input(run_cli: Callable[..., Ran], env: dict[str, str]) -> None:
    refused = run_cli(["annotations", "--from-pacs", "1.2.3.4.5.6.7.8"], env)
    assert refused.returncode == EXIT_BAD_INPUT
    assert "has no series 1.2.3.4.5.6.7.8" in " ".join(refused.stderr.split())


@pytest.mark.parametrize(
    ("fault", "words"),
    [
        ("down", "Cannot reach the PACS"),
        ("wrong_password", "refused the credentials"),
        ("garbage", "not valid DICOMweb"),
    ],
)
def test_a_failing_pacs_gives_a_clear_message_and_exit_4(
    run_cli: Callable[..., Ran],
    request: pytest.FixtureRequest,
    env: dict[str, str],
    orthanc: Orthanc,
    fault: str,
    words: str,
) -> None:
    env["PACS_MASK_DICOMWEB_URL"] = orthanc.dicomweb_url
    if fault == "down":
        env["PACS_MASK_DICOMWEB_URL"] = request.getfixturevalue("dead_pacs_url")
    elif fault == "wrong_password":
        env["PACS_MASK_DICOMWEB_PASSWORD"] = "not-the-password"
    else:
        env["PACS_MASK_DICOMWEB_URL"] = request.getfixturevalue("garbage_pacs")
    failed = run_cli(["pacs", "studies", "--patient-id", "X"], env)
    assert failed.returncode == EXIT_PACS
    assert words in " ".join(failed.stderr.split())
    assert "Traceback" not in failed.stderr
    assert "not-the-password" not in failed.stderr


def test_from_pacs_on_a_server_without_a_pacs_exits_4(
    run_cli: Callable[..., Ran], live_server: LiveServer, client_env: ClientEnv
) -> None:
    failed = run_cli(["annotations", "--from-pacs", "1.2.3.4"], client_env(live_server))
    assert failed.returncode == EXIT_PACS
    assert "no PACS configured" in " ".join(failed.stderr.split())
