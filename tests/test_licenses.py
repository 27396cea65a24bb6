"""The installer of a proprietary product bundles no GPL/AGPL software, and ships a notice naming every
bundled distribution with its licence text (scripts/third_party_licenses.py, run by build.spec)."""

from __future__ import annotations

import runpy
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "third_party_licenses.py"
licenses = runpy.run_path(str(SCRIPT))


def test_no_runtime_dependency_is_gpl_or_agpl() -> None:
    bundled = licenses["bundled_distributions"]()
    copyleft = {name: b.license for name, b in bundled.items() if licenses["is_strong_copyleft"](b.license)}
    assert not copyleft, f"GPL/AGPL runtime dependencies may not go into the installer: {copyleft}"
    # the closure is the real one: declared packages and what they pull in
    assert {"litestar", "pydicom", "pyside6-essentials", "imagecodecs", "anyio"} <= set(bundled)
    assert "pylibjpeg-libjpeg" not in bundled  # GPL-3.0: replaced by pyjpegls and imagecodecs
    assert "python-gdcm" not in bundled  # the tests' referee only (core/jpeg_lossless.py decodes)
    assert "pytest" not in bundled  # test tools are not bundled
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--check"], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize(
    ("license", "strong"),
    [
        ("GPL V3.0", True),  # pylibjpeg-libjpeg's own wording
        ("GPL-3.0-only", True),
        ("AGPL-3.0-or-later", True),
        ("GNU General Public License v3 (GPLv3)", True),
        ("Apache-2.0 AND GPL-3.0-only", True),
        ("LGPL-3.0-only OR GPL-2.0-only OR GPL-3.0-only", False),  # PySide6: LGPL is the option taken
        ("LGPL-3.0-only", False),  # psycopg: dynamically linked, replaceable in the one-folder build
        ("GNU Lesser General Public License v3 (LGPLv3)", False),
        ("LGPL-2.1-only OR MIT", False),
        ("GPL-2.0-only OR MIT", False),
        ("BSD-3-Clause AND 0BSD AND MIT", False),
        ("MIT", False),
    ],
)
def test_what_counts_as_gpl(license: str, strong: bool) -> None:
    assert licenses["is_strong_copyleft"](license) is strong


def test_a_gpl_dependency_fails_the_check_and_the_build(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A GPL package in the closure (an installed distribution injected for the test) is refused."""
    info = tmp_path / "gplthing-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: gplthing\nVersion: 1.0\nLicense: GPL V3.0\n")
    (info / "COPYING").write_text("GNU GENERAL PUBLIC LICENSE\nVersion 3, 29 June 2007\n")
    (info / "RECORD").write_text("gplthing-1.0.dist-info/METADATA,,\ngplthing-1.0.dist-info/COPYING,,\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    found = licenses["bundled_distributions"]([Requirement("gplthing"), Requirement("pydicom")])
    assert found["gplthing"].license == "GPL V3.0"
    assert licenses["is_strong_copyleft"](found["gplthing"].license)
    assert "GNU GENERAL PUBLIC LICENSE" in found["gplthing"].texts["gplthing-1.0.dist-info/COPYING"]
    monkeypatch.setitem(licenses["write"].__globals__, "bundled_distributions", lambda: found)
    with pytest.raises(SystemExit, match="gplthing"):
        licenses["write"](tmp_path / "THIRD_PARTY_LICENSES")
    assert not (tmp_path / "THIRD_PARTY_LICENSES").exists()


def test_the_notice_lists_every_bundled_distribution_with_its_licence_text(tmp_path: Path) -> None:
    notice = tmp_path / "THIRD_PARTY_LICENSES"
    bundled = licenses["write"](notice, modules=["imagecodecs", "PySide6.QtCore", "os", "jpeg_ls"])
    text = notice.read_text(encoding="utf-8")
    for b in bundled.values():
        assert f"{b.name} {b.version}" in text
        assert f"License: {b.license}" in text
    assert "Permission is hereby granted" in text  # MIT texts
    assert "Apache License" in text  # boto3, cryptography ...
    assert "GNU LESSER GENERAL PUBLIC LICENSE" in text.upper()  # psycopg: LGPL needs its text shipped
    assert "Independent JPEG Group" in text  # the acknowledgement libjpeg's licence requires (imagecodecs)
    unknown = [b.name for b in bundled.values() if b.license.startswith("UNKNOWN") and not b.texts]
    assert not unknown, f"no licence name or text for {unknown}"


def test_build_spec_bundles_the_generated_notice() -> None:
    spec = (ROOT / "build.spec").read_text(encoding="utf-8")
    assert "third_party_licenses.py" in spec
    assert '("THIRD_PARTY_LICENSES", str(_notice), "DATA")' in spec
    assert "pylibjpeg-libjpeg" not in spec  # the GPL decoder is gone
    assert '"libjpeg"' not in spec
