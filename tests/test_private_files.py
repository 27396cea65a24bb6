"""What the desktop app writes holds patient data: readable by its user only, whatever the umask.

Runs the real entry point (``python -m pacs_mask_desktop --demo --screenshot``, offscreen) with an open
umask (022) and private folders for data, logs, cache and settings, then checks every file it and its
bundled server left: folders 0700, files 0600.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path


def test_the_app_and_its_bundled_server_write_only_private_files(tmp_path: Path) -> None:
    home = tmp_path / "home"
    data = tmp_path / "data"
    env = {
        **os.environ,
        "HOME": str(home),
        "XDG_STATE_HOME": str(home / "state"),
        "XDG_CACHE_HOME": str(home / "cache"),
        "XDG_CONFIG_HOME": str(home / "config"),
        "PACS_MASK_DATA_DIR": str(data),
        "QT_QPA_PLATFORM": "offscreen",
    }
    env.pop("PACS_MASK_SERVER", None)
    env.pop("PACS_MASK_TOKEN", None)
    shot = tmp_path / "shot.png"
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            "import os, sys; os.umask(0o022); from pacs_mask_desktop.app import main; "
            f"sys.exit(main(['--demo', '--screenshot', {str(shot)!r}]))",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert shot.is_file()

    written = [p for root in (data, home / "state") for p in root.rglob("*")]
    names = {p.name for p in written}
    assert {"desktop.log", "embedded-server.log"} <= names, names
    assert any(name.endswith(".sqlite3") for name in names), names
    loose = {
        str(p.relative_to(tmp_path)): oct(stat.S_IMODE(p.stat().st_mode))
        for p in written
        if stat.S_IMODE(p.stat().st_mode) != (0o700 if p.is_dir() else 0o600)
    }
    assert not loose, loose
