"""Pytest plugin: pydicom's real multi-frame MR (``emri_small.dcm``) with the geometry a scanner writes.

Registered in ``tests/conftest.py`` (``pytest_plugins``). ``emri_small.dcm`` (pydicom-data) is a real
10-frame 64x64 Enhanced MR, but anonymised down to no functional groups at all: no plane positions, no
orientation, no pixel spacing. Nothing says where its voxels are, so this project rightly refuses to
place a NIfTI or build a SEG on it as shipped (tests keep that refusal). To run the issue's NIfTI and SEG
cases on a real MR's pixels and object structure anyway, :func:`write_emri_with_geometry` derives from it
an Enhanced MR carrying the geometry an MR scanner writes. **That geometry is made up by this module**
(the file states none), chosen like a 3D T1 head scan:

- ``SharedFunctionalGroupsSequence``: ``PixelMeasuresSequence`` (PixelSpacing 3.75 mm = a 240 mm field
  of view, SliceThickness 1.2 mm, SpacingBetweenSlices 1.2 mm: the value the shipped file states at the
  top level, moved where the Enhanced MR IOD keeps it) and ``PlaneOrientationSequence`` (sagittal:
  rows run anterior to posterior, columns head to feet, so no axis is the identity and a NIfTI's
  RAS/LPS flips land on in-plane axes).
- ``PerFrameFunctionalGroupsSequence``: per frame ``PlanePositionSequence`` (frame 1 at the patient's
  right, each next frame 1.2 mm to the left: frame order runs against the slice normal, so a reader that
  trusts frame order instead of positions gets the volume reversed) and ``FrameContentSequence``
  (StackID, InStackPositionNumber, DimensionIndexValues, with the matching DimensionIndexSequence).

Pixels, rows/columns, patient/study attributes and every other attribute are the shipped file's. The
derived object gets its own SOP Instance, Series and Frame of Reference UIDs (derived from the shipped
ones, so stable across runs): it is a different object and never meets the shipped one in a PACS.
Fixture: ``emri_with_geometry`` (session): the folder holding the derived ``emri_geometry.dcm``.
"""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import generate_uid

from tests.orthanc import emri_small_path

MR_PIXEL_SPACING_MM = 3.75
MR_SLICE_STEP_MM = 1.2
MR_ORIENTATION = [0.0, 1.0, 0.0, 0.0, 0.0, -1.0]  # sagittal: rows along +y (posterior), columns along -z
MR_FIRST_POSITION = [-5.4, -120.0, 120.0]  # frame 1's first voxel (LPS mm); frames step along +x


def write_emri_with_geometry(path: Path) -> Path:
    """Write ``emri_small.dcm`` with a scanner's multi-frame geometry added (see the module docstring)."""
    source = emri_small_path()
    if source is None:
        pytest.fail("emri_small.dcm not found: install the test extra (pydicom-data)", pytrace=False)
    ds = pydicom.dcmread(source)
    frames = int(ds.NumberOfFrames)
    for keyword in ("SOPInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID"):
        setattr(ds, keyword, generate_uid(entropy_srcs=[str(ds[keyword].value), "with scanner geometry"]))
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    spacing_between = ds.pop("SpacingBetweenSlices").value  # the shipped 1.2 mm, kept where the IOD wants it
    assert float(spacing_between) == MR_SLICE_STEP_MM

    measures = Dataset()
    measures.PixelSpacing = [MR_PIXEL_SPACING_MM, MR_PIXEL_SPACING_MM]
    measures.SliceThickness = MR_SLICE_STEP_MM
    measures.SpacingBetweenSlices = spacing_between
    orientation = Dataset()
    orientation.ImageOrientationPatient = MR_ORIENTATION
    shared = Dataset()
    shared.PixelMeasuresSequence = DicomSequence([measures])
    shared.PlaneOrientationSequence = DicomSequence([orientation])
    ds.SharedFunctionalGroupsSequence = DicomSequence([shared])

    dimension_uid = generate_uid(entropy_srcs=[ds.SOPInstanceUID, "dimensions"])
    organization = Dataset()
    organization.DimensionOrganizationUID = dimension_uid
    ds.DimensionOrganizationSequence = DicomSequence([organization])
    ds.DimensionIndexSequence = DicomSequence(
        [
            _dimension(dimension_uid, "StackID", 0x00209056),
            _dimension(dimension_uid, "InStackPositionNumber", 0x00209057),
        ]
    )
    per_frame = []
    for f in range(frames):
        position = Dataset()
        x = round(MR_FIRST_POSITION[0] + f * MR_SLICE_STEP_MM, 6)  # as a scanner writes DS: no float noise
        position.ImagePositionPatient = [x, MR_FIRST_POSITION[1], MR_FIRST_POSITION[2]]
        content = Dataset()
        content.StackID = "1"
        content.InStackPositionNumber = f + 1
        content.DimensionIndexValues = [1, f + 1]
        item = Dataset()
        item.PlanePositionSequence = DicomSequence([position])
        item.FrameContentSequence = DicomSequence([content])
        per_frame.append(item)
    ds.PerFrameFunctionalGroupsSequence = DicomSequence(per_frame)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def _dimension(organization_uid: str, description: str, pointer: int) -> Dataset:
    item = Dataset()
    item.DimensionOrganizationUID = organization_uid
    item.DimensionIndexPointer = pointer
    item.FunctionalGroupPointer = 0x00209111  # FrameContentSequence
    item.DimensionDescriptionLabel = description
    return item


@pytest.fixture(scope="session")
def emri_with_geometry(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding ``emri_geometry.dcm``: :func:`write_emri_with_geometry` of pydicom's MR."""
    folder = tmp_path_factory.mktemp("emri_geometry")
    write_emri_with_geometry(folder / "emri_geometry.dcm")
    return folder
