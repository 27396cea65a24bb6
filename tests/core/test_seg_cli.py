"""``pacs-mask export-seg`` and ``pacs-mask send`` against a live server whose PACS is a real Orthanc.

Masks go up with ``upload --series pacs`` for three slices of the 200-slice CT; ``export-seg`` saves the
group's DICOM SEG (0600: patient data) and refuses to overwrite a file; ``send`` stores it in Orthanc
once (the server allows unreviewed groups here, ``PACS_MASK_SEND_UNREVIEWED=true``). Exit codes: an
unknown group is bad input (2).
"""

from __future__ import annotations

import json
import stat
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image

from pacs_mask_desktop.cli import EXIT_BAD_INPUT, EXIT_OK
from tests.live_server import LiveServer, Ran, ServerFactory
from tests.orthanc import Orthanc, StoredSeries

ClientEnv = Callable[..., dict[str, str]]


@pytest.fixture(scope="module")
def sending_server(live_server_factory: ServerFactory, orthanc: Orthanc) -> LiveServer:
    """A live server whose PACS is the test Orthanc and which sends groups before review."""
    return live_server_factory("local", env=orthanc.env() | {"PACS_MASK_SEND_UNREVIEWED": "true"})


def test_export_seg_saves_the_file_and_send_stores_it_once(
    run_cli: Callable[..., Ran],
    client_env: ClientEnv,
    sending_server: LiveServer,
    orthanc: Orthanc,
    pacs_ct_for_seg: StoredSeries,
    tmp_path: Path,
) -> None:
    pacs_ct = pacs_ct_for_seg  # its SEGs are deleted from the PACS afterwards
    env = client_env(sending_server)
    with sending_server.api() as api:
        annotation = api.create_annotation_from_pacs(pacs_ct.series_instance_uid).id
    masks = tmp_path / "masks"
    masks.mkdir()
    for index in (10, 11, 120):
        mask = np.zeros((pacs_ct.rows, pacs_ct.columns), dtype=np.uint8)
        mask[5:20, 8 + index % 7 : 30] = 1 if index < 100 else 3
        Image.fromarray(mask, mode="L").save(masks / f"mask_{index:04d}.png")
    upload = [
        "upload",
        "--annotation",
        str(annotation),
        "--model",
        "cli-seg",
        "--version",
        "1",
        "--series",
        "pacs",
    ]
    done = run_cli([*upload, str(masks)], env)
    assert done.returncode == EXIT_OK, done.stderr
    with sending_server.api() as api:
        (group,) = api.list_groups(annotation)

    out = tmp_path / "export" / "seg.dcm"
    out.parent.mkdir()
    exported = run_cli(["export-seg", group.id, str(out), "--json"], env)
    assert exported.returncode == EXIT_OK, exported.stderr
    meta = json.loads(exported.stdout)
    assert (meta["segments"], meta["frames"], meta["path"]) == (2, 3, str(out))
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    seg = pydicom.dcmread(out)
    assert (seg.Modality, seg.SOPInstanceUID, seg.StudyInstanceUID) == (
        "SEG",
        meta["sop_instance_uid"],
        pacs_ct.study_instance_uid,
    )
    again = run_cli(["export-seg", group.id, str(out)], env)
    assert again.returncode == EXIT_BAD_INPUT
    assert "--overwrite" in again.stderr

    sent = run_cli(["send", group.id, "--json"], env)
    assert sent.returncode == EXIT_OK, sent.stderr
    first = json.loads(sent.stdout)
    assert (first["sop_instance_uid"], first["pacs_url"]) == (meta["sop_instance_uid"], orthanc.dicomweb_url)
    repeat = run_cli(["send", group.id, "--json"], env)
    assert json.loads(repeat.stdout) == first  # recorded, not sent again
    human = run_cli(["send", group.id], env)
    assert orthanc.dicomweb_url in human.stdout

    unknown = run_cli(["send", "00000000-0000-0000-0000-000000000000"], env)
    assert unknown.returncode == EXIT_BAD_INPUT, unknown.stderr
