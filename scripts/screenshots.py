"""Make the README's screenshots from the real app: ``python scripts/screenshots.py``.

Runs the desktop app in this process (offscreen by default; ``--platform xcb`` under ``xvfb-run``)
with a temporary data dir, so the window starts its own bundled server exactly as a user's does, and
opens the demo (120 slices of 512x512). It then drives the window like a user and saves, at 1600x1000:

- ``main-window-overlay.png``: the demo series with its masks overlaid and the matching table;
- ``upload-in-progress.png``: an upload paused about halfway (per-slice table, bar, speed);
- ``group-browser.png``: two groups of the annotation (one approved), one shown on the series;
- ``review-view.png``: the QA review of a group, on a slice with both labels;
- ``group-seg-export.png``: the approved group exported as DICOM SEG (Export / Send to PACS, where it went);
- ``review-queue.png``: Review ▸ Queue with groups of several uploaders waiting, the oldest one opened;
- ``review-finding.png``: a group rejected with two findings: ticks on the slice slider, the findings list
  and the review history, "Next in queue" offered;
- ``compare-view.png``: the AI group compared with a radiologist's correction (filled vs. outline, the
  per-slice Dice band under the slider, the per-label Dice and volume table), on a disagreeing slice;
- ``pacs-browser.png``: File ▸ Open from PACS on a real Orthanc holding the demo CT, a sagittal reformat
  of it and pydicom's multi-frame MR (skipped with a message where Orthanc is not installed);
- ``pacs-series-markers.png``: the sagittal reformat opened from that PACS, with its orientation markers.

Nothing outside the temporary folder and ``docs/screenshots/`` is touched.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # the PACS shots start Orthanc with the tests' helper
    sys.path.insert(0, str(ROOT))
OUT = ROOT / "docs" / "screenshots"
SIZE = (1600, 1000)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--platform", default="offscreen", help="Qt platform plugin (offscreen, or xcb under Xvfb)"
    )
    parser.add_argument("--out", type=Path, default=OUT, help="folder for the PNGs")
    parser.add_argument(
        "--only",
        default="",
        help="comma-separated PNG names to write (e.g. review-queue.png,compare-view.png); default: all",
    )
    args = parser.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="pacs-mask-shots-"))
    os.environ["PACS_MASK_DATA_DIR"] = str(work / "data")
    os.environ.pop("PACS_MASK_SERVER", None)
    os.environ.pop("PACS_MASK_TOKEN", None)
    os.environ["QT_QPA_PLATFORM"] = args.platform
    try:
        return _run(args.out, work, {name.strip() for name in args.only.split(",") if name.strip()})
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _run(out: Path, work: Path, only: set[str]) -> int:
    from PySide6.QtCore import QEventLoop, QSettings
    from PySide6.QtWidgets import QAbstractItemView, QApplication

    from pacs_mask_desktop.core.events import GroupEvent, SliceEvent, SliceState
    from pacs_mask_desktop.core.plan import prepare
    from pacs_mask_desktop.core.upload import UploadEngine
    from pacs_mask_desktop.ui.main_window import TAB_GROUPS, TAB_MASKS, TAB_REVIEW, TAB_UPLOAD, MainWindow
    from pacs_mask_desktop.ui.resources import apply_theme
    from pacs_mask_desktop.ui.settings import ServerConfig

    QSettings.setPath(QSettings.Format.IniFormat, QSettings.Scope.UserScope, str(work / "settings"))
    app = QApplication(["pacs-mask-desktop"])
    apply_theme(app)

    def wait_until(condition: Callable[[], bool], timeout: float = 60.0, what: str = "") -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                raise TimeoutError(f"timed out waiting for {what or condition}")
            app.processEvents(QEventLoop.ProcessEventsFlag.AllEvents, 50)
            time.sleep(0.005)

    def settle(seconds: float = 0.6) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            app.processEvents(QEventLoop.ProcessEventsFlag.AllEvents, 50)
            time.sleep(0.01)

    def shoot(name: str) -> None:
        if only and name not in only:
            return
        settle()
        path = out / name
        if not window.grab().save(str(path)):
            raise OSError(f"could not write {path}")
        print(f"wrote {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")

    out.mkdir(parents=True, exist_ok=True)
    window = MainWindow(ServerConfig())  # empty URL: the window starts its own bundled server
    window.confirm_quit_during_upload = False
    window.resize(*SIZE)
    window.show()
    state: dict[str, Any] = {}
    window.connected.connect(lambda url: state.setdefault("url", url))
    window.demoReady.connect(lambda demo: state.setdefault("demo", demo))
    window.start()
    wait_until(lambda: "url" in state, what="the bundled server")
    _example_annotations(window.api)
    window.load_demo()
    wait_until(lambda: "demo" in state, 120, "the demo data")
    view = window.viewer.view
    wait_until(lambda: view.shown_index() == view.index, what="the first slice")

    # 1. The demo: series, overlay and the matching table.
    window.tabs.setCurrentIndex(TAB_MASKS)
    shoot("main-window-overlay.png")

    # 2. An upload held at about half way (the engine's threads wait in the event tap).
    total = len(window.masks.model.items)
    gate = threading.Event()
    done = {"n": 0}
    lock = threading.Lock()

    def hold_halfway(event: SliceEvent | GroupEvent) -> None:
        if isinstance(event, SliceEvent) and event.state is SliceState.DONE:
            with lock:
                done["n"] += 1
                hold = done["n"] > total // 2
            if hold:
                gate.wait(60)

    window.upload.event_tap = hold_halfway
    results: list[Any] = []
    window.upload.uploadFinished.connect(results.append)
    window.upload.set_fields("demo-liver-seg", "1.0", "manual")
    window.start_upload()
    wait_until(lambda: window.upload.bar.value() >= total // 2, what="half of the upload")
    window.tabs.setCurrentIndex(TAB_UPLOAD)
    window.upload.table.scrollTo(
        window.upload.model.index(total // 2 + 2, 0), QAbstractItemView.ScrollHint.PositionAtCenter
    )
    shoot("upload-in-progress.png")
    gate.set()
    wait_until(lambda: bool(results), what="the upload to finish")
    window.upload.event_tap = None
    manual_group = results[0].group_id

    # 3. A second group as an AI worker would send it, and the manual one approved.
    api, annotation = window.api, window.annotation
    assert api is not None
    assert annotation is not None
    assert manual_group is not None
    prepared = prepare(
        state["demo"].masks_dir,
        annotation_id=annotation.id,
        model_name="liver-net",
        version="2.1",
        source="ai",
        confidence=0.91,
        series=window.series,
    )
    assert prepared.plan is not None
    engine = UploadEngine(api)
    try:
        ai_group = engine.run(prepared.plan).group_id
    finally:
        engine.close()
    assert ai_group is not None
    people = _example_people(window)  # four eyes: another person approves the window's own upload
    people["qa-reviewer"].review(
        manual_group, "approved", "Checked slice by slice; liver and lesion outlines are right."
    )
    window.groups.refresh(select=ai_group)
    window.picker.refresh()
    wait_until(lambda: window.groups.groups.row_of(ai_group) is not None, what="the group list")
    wait_until(lambda: window.groups.slice_model.rowCount() == total, what="the group's slices")
    window.tabs.setCurrentIndex(TAB_GROUPS)
    window.groups.show_selected()
    wait_until(lambda: view.overlay is not None and view.overlay.kind == "group", what="the group overlay")
    wait_until(lambda: view.shown_index() == view.index, what="the group slice")
    shoot("group-browser.png")

    # 4. QA review of the AI group on a slice with liver and lesion.
    window.groups.review_selected()
    wait_until(lambda: window.review.group is not None and window.review.group.id == ai_group, what="review")
    review = window.review
    lesion = [i for i, s in enumerate(review.slices) if "2" in (s.label or "").split(",")]
    review.go_to(lesion[len(lesion) // 2])
    review.comment.setPlainText("Lesion boundary looks tight on the upper slices; please double-check.")
    window.tabs.setCurrentIndex(TAB_REVIEW)
    wait_until(lambda: view.shown_index() == view.index, what="the review slice")
    shoot("review-view.png")

    # 4b. The approved group exported as DICOM SEG (Send stays off: this bundled server has no PACS).
    groups = window.groups
    exported: list[Any] = []
    groups.segExported.connect(lambda _path, meta: exported.append(meta))
    window.tabs.setCurrentIndex(TAB_GROUPS)
    wait_until(lambda: groups.select_group(manual_group), what="the approved group")
    wait_until(lambda: groups.export_button.isEnabled(), what="the export button")
    groups.export_selected(work / "demo-liver-seg.dcm")
    wait_until(lambda: bool(exported), 120, "the DICOM SEG export")
    wait_until(lambda: "DICOM SEG built" in groups.seg_label.text(), what="the group's SEG state")
    shoot("group-seg-export.png")

    # 5. The review queue, a finding on the slider, two groups compared.
    _review_shots(window, work, state["demo"], people, shoot, wait_until, settle)

    # 6. The PACS browser and a PACS series with its orientation markers.
    if not only or only & {"pacs-browser.png", "pacs-series-markers.png"}:
        _pacs_shots(window, work, out, state["demo"].series_dir, shoot, wait_until)
    for person in people.values():
        person.close()

    window.close()
    app.processEvents()
    return 0


def _pacs_shots(
    window: Any,
    work: Path,
    out: Path,
    demo_series: Path,
    shoot: Callable[[str], None],
    wait_until: Callable[..., None],
) -> None:
    """Put the demo CT, a sagittal reformat of it and pydicom's MR into a real Orthanc, browse, open one."""
    import contextlib

    import pydicom

    from pacs_mask_desktop.core.dicom_cache import DicomCache
    from pacs_mask_desktop.core.pacs import PacsClient
    from tests.orthanc import emri_small_path, running_orthanc

    with contextlib.ExitStack() as stack:
        try:
            orthanc = stack.enter_context(running_orthanc(work / "orthanc", "shots", "shots-password"))
        except RuntimeError as exc:
            print(f"skipped the PACS screenshots: {exc}")
            return
        axial = _sorted_axial(demo_series)
        sagittal = _sagittal_reformat(axial, every=8)
        mr_path = emri_small_path()
        orthanc.stow(axial[::3] + sagittal + ([pydicom.dcmread(mr_path)] if mr_path else []))
        window.use_pacs_client(
            PacsClient(
                orthanc.dicomweb_url, (orthanc.user, orthanc.password), cache=DicomCache(work / "cache")
            )
        )
        browser = window.open_pacs_browser()
        browser.resize(1180, 640)
        listed: list[bool] = []
        browser.seriesListed.connect(lambda: listed.append(True))
        browser.search()
        wait_until(lambda: browser.studies.rowCount() >= 2, what="the PACS studies")
        row = next(
            i
            for i, s in enumerate(browser.studies.items)
            if s.study_instance_uid == axial[0].StudyInstanceUID
        )
        browser.study_table.selectRow(row)
        browser.study_table.clicked.emit(browser.studies.index(row, 0))
        wait_until(lambda: bool(listed), what="the study's series")
        browser.select_series(sagittal[0].SeriesInstanceUID)
        time.sleep(0.3)
        path = out / "pacs-browser.png"
        if not browser.grab().save(str(path)):
            raise OSError(f"could not write {path}")
        print(f"wrote {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")
        done: list[object] = []
        window.seriesComplete.connect(done.append)
        browser.open_selected()
        wait_until(lambda: bool(done), what="the PACS series")
        view = window.viewer.view
        view.set_index(len(window.series) // 2)
        window.tabs.setCurrentIndex(0)  # the masks tab: the review of the demo group was cleared with it
        wait_until(lambda: view.shown_index() == view.index, what="the PACS slice")
        shoot("pacs-series-markers.png")


def _sorted_axial(folder: Path) -> list[Any]:
    """The demo CT's datasets, lowest slice first (the project's slice order)."""
    import pydicom

    datasets = [pydicom.dcmread(p) for p in sorted(folder.iterdir())]
    return sorted(datasets, key=lambda ds: float(ds.ImagePositionPatient[2]))


def _sagittal_reformat(axial: list[Any], every: int) -> list[Any]:
    """Sagittal slices of the axial CT (every ``every``-th column), head at the top, anterior on the left."""
    import copy

    import numpy as np
    from pydicom.uid import generate_uid

    volume = np.stack([ds.pixel_array for ds in axial])  # [z, y, x], z ascending (feet first)
    first = axial[0]
    row_mm, col_mm = (float(v) for v in first.PixelSpacing)
    z_mm = abs(float(axial[1].ImagePositionPatient[2]) - float(first.ImagePositionPatient[2]))
    x0, y0, _z = (float(v) for v in first.ImagePositionPatient)
    top_z = float(axial[-1].ImagePositionPatient[2])
    series_uid = generate_uid()
    out = []
    for number, column in enumerate(range(every // 2, volume.shape[2], every), start=1):
        image = np.ascontiguousarray(
            volume[::-1, :, column]
        )  # rows: head to feet; columns: anterior to posterior
        ds = copy.deepcopy(first)
        ds.SOPInstanceUID, ds.SeriesInstanceUID = generate_uid(), series_uid
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.SeriesDescription, ds.SeriesNumber, ds.InstanceNumber = "Sagittal reformat", 2, number
        ds.ImageOrientationPatient = [0, 1, 0, 0, 0, -1]
        ds.ImagePositionPatient = [x0 + column * col_mm, y0, top_z]
        ds.PixelSpacing = [z_mm, row_mm]
        ds.SliceThickness = col_mm * every
        ds.Rows, ds.Columns = image.shape
        ds.PixelData = image.astype(first.pixel_array.dtype).tobytes()
        out.append(ds)
    return out


def _example_people(window: Any) -> dict[str, Any]:
    """API clients of a QA reviewer, a radiologist and an AI worker (tokens made by the window's admin)."""
    import httpx

    from pacs_mask_desktop.core.api_client import ApiClient

    url, token = window.connection.target.url, window.connection.target.token
    people: dict[str, Any] = {}
    for name, role in (("qa-reviewer", "reviewer"), ("dr-kim", "uploader"), ("ai-worker", "uploader")):
        answer = httpx.post(
            f"{url}/api/tokens",
            json={"name": name, "role": role},
            headers={"Authorization": f"Bearer {token}"},
            timeout=30,
        )
        answer.raise_for_status()
        people[name] = ApiClient(url, answer.json()["token"])
    return people


def _upload_as(
    api: Any, window: Any, masks: Path, model: str, version: str, source: Literal["manual", "ai"]
) -> str:
    from pacs_mask_desktop.core.plan import prepare
    from pacs_mask_desktop.core.upload import UploadEngine

    prepared = prepare(
        masks,
        annotation_id=window.annotation.id,
        model_name=model,
        version=version,
        source=source,
        series=window.series,
    )
    assert prepared.plan is not None, prepared.problems
    engine = UploadEngine(api)
    try:
        result = engine.run(prepared.plan)
    finally:
        engine.close()
    if not result.ok or result.group_id is None:
        raise SystemExit(f"the example upload as {model} {version} did not complete: {result.message}")
    return result.group_id


def _corrected_masks(masks: Path, folder: Path) -> Path:
    """A radiologist's correction of the demo masks: the liver trimmed on the middle third of its slices,
    the lesion grown on the second half of its slices (real disagreements for the compare view)."""
    import numpy as np
    from PIL import Image

    shutil.copytree(masks, folder)
    paths = sorted(folder.glob("mask_*.png"))
    arrays = [np.asarray(Image.open(path)).copy() for path in paths]
    liver = [i for i, a in enumerate(arrays) if (a == 1).any()]
    lesion = [i for i, a in enumerate(arrays) if (a == 2).any()]
    third = len(liver) // 3
    for i in liver[third : 2 * third]:  # the liver's lateral edge drawn tighter
        columns = np.nonzero(arrays[i] == 1)[1]
        part = arrays[i][:, int(np.percentile(columns, 60)) :]
        part[part == 1] = 0
    for i in lesion[len(lesion) // 2 :]:  # the lesion drawn larger, inside the liver
        grown = arrays[i] == 2
        for _ in range(5):  # a 4-neighbour dilation
            step = grown.copy()
            step[1:] |= grown[:-1]
            step[:-1] |= grown[1:]
            step[:, 1:] |= grown[:, :-1]
            step[:, :-1] |= grown[:, 1:]
            grown = step
        arrays[i][grown & (arrays[i] > 0)] = 2
    for path, array in zip(paths, arrays, strict=True):
        Image.fromarray(array, mode="L").save(path)
    return folder


def _review_shots(
    window: Any,
    work: Path,
    demo: Any,
    people: dict[str, Any],
    shoot: Callable[[str], None],
    wait_until: Callable[..., None],
    settle: Callable[..., None],
) -> None:
    """Groups of three uploaders waiting in the queue; one opened, rejected with findings; a compare."""
    from PySide6.QtCore import Qt

    from pacs_mask_desktop.ui.main_window import TAB_COMPARE

    corrected = _corrected_masks(demo.masks_dir, work / "corrected")
    ai_group = _upload_as(people["ai-worker"], window, demo.masks_dir, "liver-net", "2.2", "ai")
    _upload_as(people["dr-kim"], window, corrected, "liver-net", "2.2-corrected", "manual")
    _upload_as(people["ai-worker"], window, demo.masks_dir, "liver-net", "2.3-rc1", "ai")

    queue = window.queue
    loaded: list[int] = []
    queue.panel.loaded.connect(loaded.append)
    queue.show_panel()
    wait_until(lambda: bool(loaded), what="the review queue")
    window.resizeDocks([queue.dock], [260], Qt.Orientation.Vertical)
    opened: list[Any] = []
    queue.opened.connect(opened.append)
    assert queue.panel.select(ai_group)
    queue.panel.open_selected()
    wait_until(lambda: bool(opened), what="the queue item to open")
    view = window.viewer.view
    wait_until(lambda: view.shown_index() == view.index, what="the queue item's first slice")
    shoot("review-queue.png")

    review = window.review
    lesion = [s.slice_index for s in review.slices if "2" in (s.label or "").split(",")]
    for index, label, comment in (
        (lesion[len(lesion) // 3], 2, "Lesion boundary misses the posterior rim"),
        (lesion[-1], 2, "Lesion still visible here but not segmented on the next slice"),
        (lesion[0] - 12, 1, "Liver includes part of the right kidney"),
    ):
        view.set_index(index)
        review.finding_label.setCurrentIndex(review.finding_label.findData(label))
        review.finding_comment.setText(comment)
        review.add_finding()
    review.comment.setPlainText("Lesion outlines need rework on the slices noted.")
    decided: list[Any] = []
    review.reviewRecorded.connect(decided.append)
    review.reject()
    wait_until(lambda: bool(decided), what="the rejection")
    view.set_index(lesion[len(lesion) // 3])
    wait_until(lambda: view.shown_index() == view.index, what="the finding's slice")
    shoot("review-finding.png")

    # Compare the AI group with the radiologist's correction of it.
    queue.dock.hide()
    groups = window.groups
    compared: list[Any] = []
    window.compare.compared.connect(compared.append)
    groups.refresh(select=ai_group)
    wait_until(lambda: groups.selected is not None and groups.selected.id == ai_group, what="the AI group")
    wait_until(lambda: groups.compare_button.isEnabled(), what="the compare button")
    other = next(g for g in groups.compare_candidates() if g.version == "2.2-corrected")
    groups.compare_with(other.id)
    wait_until(lambda: bool(compared), 120, "the comparison")
    window.tabs.setCurrentIndex(TAB_COMPARE)
    view.set_index(0)
    window.compare.next_disagreement()
    wait_until(lambda: view.shown_index() == view.index, what="the disagreeing slice")
    settle()
    shoot("compare-view.png")


def _example_annotations(api: Any) -> None:
    """A few other annotations, so the picker looks like a server in use (synthetic UIDs, no data)."""
    from pydicom.uid import generate_uid

    for patient, description in (
        ("DEMO-0101", "CT chest, lung nodule follow-up (example)"),
        ("DEMO-0102", "CT abdomen portal venous (example)"),
        ("DEMO-0103", "MR brain T1 post-contrast (example)"),
        ("DEMO-0104", "CT pelvis, bone window (example)"),
    ):
        api.create_annotation(generate_uid(), generate_uid(), patient_id=patient, description=description)


if __name__ == "__main__":
    sys.exit(main())
