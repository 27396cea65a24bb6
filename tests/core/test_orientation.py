"""Patient orientation markers from real DICOM headers (pydicom's test files), plus generated planes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.data import get_testdata_file

from pacs_mask_desktop.core.dicom_series import load_series
from pacs_mask_desktop.core.orientation import EdgeLabels, direction_label, edge_labels


def _iop(name: str) -> list[float]:
    path = get_testdata_file(name)
    assert path is not None, f"pydicom's {name} is missing"
    return [float(v) for v in pydicom.dcmread(path, stop_before_pixels=True).ImageOrientationPatient]


def test_axial_ct_is_radiological() -> None:
    """A head-first supine axial CT: patient's right on the screen's left, anterior at the top."""
    assert edge_labels(_iop("CT_small.dcm")) == EdgeLabels(left="R", right="L", top="A", bottom="P")


def test_series_read_from_a_real_file_carries_the_orientation(tmp_path: Path) -> None:
    path = get_testdata_file("CT_small.dcm")
    assert path is not None
    (tmp_path / "ct.dcm").write_bytes(Path(path).read_bytes())
    series = load_series(tmp_path)
    assert edge_labels(series.orientation) == EdgeLabels("R", "L", "A", "P")


def _with_orientation(tmp_path: Path, iop: list[float]) -> tuple[float, ...] | None:
    path = get_testdata_file("CT_small.dcm")
    assert path is not None
    ds = pydicom.dcmread(path)
    ds.ImageOrientationPatient = iop
    ds.save_as(tmp_path / "plane.dcm")
    return load_series(tmp_path).orientation


def test_sagittal(tmp_path: Path) -> None:
    orientation = _with_orientation(tmp_path, [0, 1, 0, 0, 0, -1])
    assert edge_labels(orientation) == EdgeLabels(left="A", right="P", top="H", bottom="F")


def test_coronal(tmp_path: Path) -> None:
    orientation = _with_orientation(tmp_path, [1, 0, 0, 0, 0, -1])
    assert edge_labels(orientation) == EdgeLabels(left="R", right="L", top="H", bottom="F")


def test_oblique_real_mr() -> None:
    """pydicom's MR2 (data store): rows run 55 degrees between left and posterior, columns to the feet."""
    pytest.importorskip("data_store")
    import data_store

    ds = pydicom.dcmread(Path(data_store.__file__).parent / "data" / "MR2_UNCI.dcm", stop_before_pixels=True)
    labels = edge_labels(ds.ImageOrientationPatient)
    assert labels == EdgeLabels(left="AR", right="PL", top="H", bottom="F")


def test_tilted_axial_real_ct() -> None:
    """A gantry-tilted CT (pydicom's J2K_pixelrep_mismatch.dcm): columns point posterior and to the feet."""
    labels = edge_labels(_iop("J2K_pixelrep_mismatch.dcm"))
    assert labels == EdgeLabels(left="R", right="L", top="AH", bottom="PF")


def test_rounding_noise_adds_no_letter() -> None:
    assert direction_label([0.99999, 0.001, -0.0002]) == "L"


@pytest.mark.parametrize("value", [None, [], [1, 0, 0], ["a"] * 6, [0, 0, 0, 0, 1, 0]])
def test_unknown_orientation_gives_no_markers(value: Any) -> None:
    assert edge_labels(value) is None
