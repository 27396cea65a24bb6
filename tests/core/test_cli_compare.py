"""``pacs-mask compare``, ``pacs-mask groups`` (volumes) and ``pacs-mask review`` against a live server.

Two groups of the hand-worked pair of ``tests/server/test_compare.py`` on a series whose voxels are
exactly 1 mL (10 x 10 mm pixels, slices 10 mm apart), so the printed volumes are the voxel counts.
"""

from __future__ import annotations

import base64
import hashlib
import json
import uuid
from collections.abc import Callable
from typing import Any

import httpx
import msgspec
import numpy as np
import pytest

from pacs_mask_desktop.cli import EXIT_BAD_INPUT, EXIT_OK, EXIT_SERVER
from server.contract.messages import SeriesGeometry
from tests.live_server import LiveServer, Ran
from tests.server.conftest import png
from tests.server.review_data import geometry
from tests.server.test_compare import hand_pair

ClientEnv = Callable[..., dict[str, str]]


def upload(server: LiveServer, annotation_id: int, volume: np.ndarray, version: str) -> str:
    """A complete group of every slice of ``volume``, through the signed-URL flow."""
    with server.api() as api:
        group = api.create_group(
            {"annotation_id": annotation_id, "model_name": "cli-compare", "version": version, "source": "ai"}
        )
        files = {i: png(volume[i]) for i in range(volume.shape[0])}
        signed = api.sign(
            group.id,
            [
                {
                    "filename": f"m_{i}.png",
                    "size": len(data),
                    "content_md5": base64.b64encode(
                        hashlib.md5(data, usedforsecurity=False).digest()
                    ).decode(),
                }
                for i, data in files.items()
            ],
        )
        with httpx.Client() as http:
            for url, data in zip(signed, files.values(), strict=True):
                http.request(url.method, url.url, content=data, headers=url.headers).raise_for_status()
        api.complete(
            group.id,
            [
                {
                    "filename": f"m_{i}.png",
                    "slice_index": i,
                    "width": volume.shape[2],
                    "height": volume.shape[1],
                    "checksum": hashlib.md5(data, usedforsecurity=False).hexdigest(),
                }
                for i, data in files.items()
            ],
        )
    return str(group.id)


def pair(server: LiveServer) -> tuple[int, str, str]:
    a, b = hand_pair()
    series = geometry(3, 4, pixel_spacing=(10.0, 10.0), step=10.0)
    series["series_instance_uid"] = series["study_instance_uid"] + f".{uuid.uuid4().int % 10**12}"
    with server.api() as api:
        annotation_id = int(
            api.create_annotation(
                series["study_instance_uid"],
                series["series_instance_uid"],
                series=msgspec.convert(series, SeriesGeometry),
            ).id
        )
    version = uuid.uuid4().hex[:8]
    return (
        annotation_id,
        upload(server, annotation_id, a, f"a-{version}"),
        upload(server, annotation_id, b, f"b-{version}"),
    )


def test_compare_prints_labels_totals_and_worst_slices_and_the_json_document(
    run_cli: Callable[..., Ran], client_env: ClientEnv, live_server: LiveServer
) -> None:
    env = client_env(live_server)
    annotation_id, a, b = pair(live_server)

    human = run_cli(["compare", a, b], env)
    assert human.returncode == EXIT_OK, human.stderr
    labels_part, worst_part = human.stdout.split("worst slices (of 3 with a mask)")

    def cells(text: str) -> dict[str, list[str]]:
        """First cell -> the other cells of each table row (rich draws ``│`` between them)."""
        rows = [
            [c.strip() for c in line.strip("│ ").split("│")]
            for line in text.splitlines()
            if line.startswith("│")
        ]
        return {row[0]: row[1:] for row in rows}

    rows = cells(labels_part)
    # label: dice, voxels a, voxels b, mL a, mL b, mL b-a (1 voxel = 1 mL here)
    assert rows["1"] == ["0.727", "6", "5", "6.00", "5.00", "-1.00"]
    assert rows["2"] == ["0.400", "2", "3", "2.00", "3.00", "1.00"]
    assert rows["total"] == ["0.625", "8", "8", "8.00", "8.00", "0.00"]
    worst = cells(worst_part)
    assert list(worst) == ["2", "0", "1"]  # Dice 0, then 6/9 and 4/6 (equal): lowest first, then by slice
    assert worst["0"] == ["0.667", "1: 0.750 (4/4), 2: 0.000 (1/0)"]

    machine = run_cli(["compare", a, b, "--json"], env)
    assert machine.returncode == EXIT_OK, machine.stderr
    document = json.loads(machine.stdout)
    with live_server.api() as api:
        assert document == msgspec.to_builtins(
            api.compare(a, b)
        )  # the server's JSON, as decoded and re-encoded
    assert document["totals"]["voxels_a"] == 8

    groups = run_cli(["groups", "--annotation", str(annotation_id)], env)
    assert groups.returncode == EXIT_OK, groups.stderr
    assert "volume (mL)" in groups.stdout
    assert "extent" in groups.stdout
    assert "1: 6.00 mL" in groups.stdout
    assert "2: 3.00 mL" in groups.stdout
    assert "2: 1-2" in groups.stdout  # label 2 of group b spans slices 1 to 2
    listed = json.loads(run_cli(["groups", "--annotation", str(annotation_id), "--json"], env).stdout)
    volumes = {g["id"]: g["volumes"] for g in listed["items"]}
    assert volumes[a]["1"] == {"voxels": 6, "volume_ml": 6.0, "first_slice": 0, "last_slice": 1}


def test_compare_refusals_exit_2(
    run_cli: Callable[..., Ran], client_env: ClientEnv, live_server: LiveServer
) -> None:
    env = client_env(live_server)
    _annotation, a, _b = pair(live_server)
    _other, c, _d = pair(live_server)
    refused = run_cli(["compare", a, c], env)
    assert refused.returncode == EXIT_BAD_INPUT
    assert "different annotations" in refused.stderr
    unknown = run_cli(["compare", a, str(uuid.UUID(int=0))], env)
    assert unknown.returncode == EXIT_BAD_INPUT


def test_review_with_findings_and_four_eyes(
    run_cli: Callable[..., Ran], client_env: ClientEnv, live_server: LiveServer
) -> None:
    env = client_env(live_server)
    _annotation, a, _b = pair(live_server)
    own = run_cli(["review", a, "--approve"], env)  # the embedded server's token uploaded it
    assert own.returncode == EXIT_SERVER
    assert "four eyes" in own.stderr
    bad = run_cli(["review", a, "--reject", "--comment", "x", "--finding", "9::outside"], env)
    assert bad.returncode == EXIT_BAD_INPUT
    assert "outside" in bad.stderr
    with pytest.raises(SystemExit) as malformed:  # argparse refuses it before anything is sent
        run_cli(["review", a, "--reject", "--finding", "one:2:x"], env)
    assert malformed.value.code == EXIT_BAD_INPUT

    rejected = run_cli(
        [
            "review",
            a,
            "--reject",
            "--comment",
            "edges",
            "--finding",
            "1:2:lesion: too small",
            "--finding",
            "2::empty",
            "--json",
        ],
        env,
    )
    assert rejected.returncode == EXIT_OK, rejected.stderr
    group: dict[str, Any] = json.loads(rejected.stdout)
    assert group["review_status"] == "rejected"
    assert group["findings"] == [
        {"slice_index": 1, "label": 2, "comment": "lesion: too small"},
        {"slice_index": 2, "label": None, "comment": "empty"},
    ]
    approved = run_cli(["review", a, "--approve", "--override-four-eyes"], env)
    assert approved.returncode == EXIT_OK, approved.stderr
    assert "approved by" in approved.stdout
    assert "review 2 of this group" in approved.stdout
