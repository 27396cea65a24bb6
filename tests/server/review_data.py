"""Groups with known label content for the review, findings and compare tests (issue 14).

A group is uploaded through the real API (sign, PUT with exactly the signed headers, complete) from a
``(slices, rows, columns)`` uint8 label volume, by the user whose token is given.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from tests.server.conftest import Server, md5_b64, md5_hex, png

SOP_ROOT = "1.2.826.0.1.3680043.8.498."


def geometry(
    slices: int, size: int, *, pixel_spacing: tuple[float, float] = (0.5, 0.8), step: float = 2.0
) -> dict[str, Any]:
    """An axial series of ``slices`` ``size``x``size`` images ``step`` mm apart, as a client sends it."""
    return {
        "series_instance_uid": "1.2.3.4.5",
        "study_instance_uid": "1.2.3.4",
        "frame_of_reference_uid": "1.2.3.4.6",
        "modality": "CT",
        "rows": size,
        "columns": size,
        "pixel_spacing": list(pixel_spacing),
        "image_orientation_patient": [1, 0, 0, 0, 1, 0],
        "patient_id": "P-7",
        "patient_name": "Doe^Jane",
        "source": "folder",
        "instances": [
            {
                "slice_index": i,
                "sop_instance_uid": f"{SOP_ROOT}{i + 1}",
                "image_position_patient": [0.0, 0.0, -50.0 + step * i],
            }
            for i in range(slices)
        ],
    }


def annotation(server: Server, series: dict[str, Any] | None, description: str | None = None) -> int:
    """A new annotation, with ``series`` geometry (or none, as older annotations)."""
    body: dict[str, Any] = {"study_instance_uid": "1.2.3.4", "series_instance_uid": "1.2.3.4.5"}
    if series is not None:
        body["series"] = series
    else:
        body["patient_id"] = "P-7"
    if description:
        body["description"] = description
    response = server.api("POST", "/api/annotations", role="uploader", json=body)
    assert response.status_code == 201, response.text
    return int(response.json()["id"])


def upload_group(
    server: Server,
    annotation_id: int,
    volume: np.ndarray,
    indexes: list[int] | None = None,
    *,
    token: str | None = None,
    complete: bool = True,
    **fields: Any,
) -> dict[str, Any]:
    """A group holding ``volume[i]`` for each of ``indexes`` (default: every slice), completed."""
    body = {
        "annotation_id": annotation_id,
        "model_name": "liver-net",
        "version": "1",
        "source": "ai",
    } | fields
    auth: dict[str, Any] = {"token": token} if token is not None else {"role": "uploader"}
    created = server.api("POST", "/api/mask-group", json=body, **auth)
    assert created.status_code == 201, created.text
    group = created.json()
    chosen = list(range(volume.shape[0])) if indexes is None else indexes
    files = {i: png(volume[i]) for i in chosen}
    signed = server.api(
        "POST",
        f"/api/mask-group/{group['id']}/signed-url",
        json={"slices": [{"filename": f"m_{i:04d}.png", "size": len(b), "content_md5": md5_b64(b)} for i, b in files.items()]},
        **auth,
    )  # fmt: skip
    assert signed.status_code == 200, signed.text
    for url, data in zip(signed.json()["urls"], files.values(), strict=True):
        assert server.put_signed(url, data).status_code == 200
    if not complete:
        return group
    rows, columns = volume.shape[1:]
    done = server.api(
        "POST",
        f"/api/mask-group/{group['id']}/complete",
        json={
            "slices": [
                {"filename": f"m_{i:04d}.png", "slice_index": i, "width": columns, "height": rows, "checksum": md5_hex(b)}
                for i, b in files.items()
            ]
        },
        **auth,
    )  # fmt: skip
    assert done.status_code == 200, done.text
    return done.json()
