"""The frozen build: PyInstaller builds the one-folder app and its headless self-test passes.

Slow (a few minutes: it bundles Qt), but it runs in CI like every other test: it is the only proof
that the installer a clinic gets starts its embedded server, migrates, and uploads.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_frozen_build_passes_its_self_test(tmp_path: Path) -> None:
    pytest.importorskip("PyInstaller", reason="PyInstaller is part of the test extras")
    dist, work = tmp_path / "dist", tmp_path / "build"
    build = subprocess.run(
        [sys.executable, "-m", "PyInstaller", str(ROOT / "build.spec"), "--noconfirm", "--log-level", "WARN",
         "--distpath", str(dist), "--workpath", str(work)],
        cwd=ROOT, capture_output=True, text=True, timeout=1400,
    )  # fmt: skip
    assert build.returncode == 0, build.stderr[-4000:]
    exe = dist / "pacs-mask-desktop" / ("pacs-mask-desktop.exe" if os.name == "nt" else "pacs-mask-desktop")
    assert exe.is_file()
    notices = list((dist / "pacs-mask-desktop").rglob("THIRD_PARTY_LICENSES"))
    assert notices, "the installer must ship its third-party licence notice"
    notice = notices[0].read_text(encoding="utf-8")
    assert "imagecodecs" in notice  # the lossless and 12-bit JPEG decoder
    assert "python-gdcm" not in notice  # the tests' referee, not bundled
    internal = dist / "pacs-mask-desktop" / "_internal"
    assert not list(internal.glob("_gdcm*")), "GDCM must not be bundled (core/jpeg_lossless.py decodes)"
    # build.spec gzips botocore's endpoint table (tests/test_build_trims.py: botocore reads it so) and
    # removes the links to libraries it trimmed
    assert (internal / "botocore" / "data" / "endpoints.json.gz").is_file()
    assert not (internal / "botocore" / "data" / "endpoints.json").exists()
    dangling = [p.name for p in (dist / "pacs-mask-desktop").rglob("*") if p.is_symlink() and not p.exists()]
    assert not dangling, f"links to removed files: {dangling}"
    # where importlib.resources finds them (pacs_mask_desktop/ui/resources.py), as in the wheel
    shipped = internal / "pacs_mask_desktop" / "resources"
    assert (shipped / "styles" / "dark.qss").is_file()
    assert (shipped / "icons" / "app.png").is_file()

    env = {k: v for k, v in os.environ.items() if not k.startswith(("PACS_MASK_", "PYTHON"))}
    env["PACS_MASK_DATA_DIR"] = str(tmp_path / "data")
    env["QT_QPA_PLATFORM"] = "offscreen"
    # No Python on PATH: the frozen app must start its server child from its own executable.
    env["PATH"] = "/usr/bin:/bin" if os.name != "nt" else env.get("PATH", "")
    run = subprocess.run(
        [str(exe), "--self-test"], capture_output=True, text=True, timeout=180, env=env, cwd=tmp_path
    )
    assert run.returncode == 0, f"stdout:\n{run.stdout[-3000:]}\nstderr:\n{run.stderr[-3000:]}"
    report = json.loads(run.stdout[run.stdout.index("{") :])
    assert report["ok"] is True
    assert report["frozen"] is True
    assert report["steps"]["upload"]["verified"] is True
    assert set(report["steps"]["dicom_decoders"].values()) == {"ok"}
