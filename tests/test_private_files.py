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

import pytest


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


def test_the_servers_own_files_are_private_whatever_the_umask(tmp_path: Path) -> None:
    """The standalone server (no desktop app setting umask 077 for it) creates its data folder (here
    through the signing key, the first file a fresh server writes), the key, and its local object
    folders and files 0700/0600 even under umask 022."""
    from server.private_files import private_folder
    from server.settings import Settings
    from server.storage.local import LocalStorage
    from server.storage.signing_key import load_signing_key

    before = os.umask(0o022)
    try:
        key_dir = tmp_path / "first-the-key" / "data"
        load_signing_key(Settings(data_dir=key_dir, signing_key=None))
        storage_root = tmp_path / "objects"
        LocalStorage(storage_root, public_url="http://127.0.0.1", signing_key=b"k" * 32).write(
            "mask/1/group/mask_0000.png", [b"png bytes"]
        )
        made = tmp_path / "made"
        private_folder(made)
        existing = tmp_path / "existing"
        existing.mkdir(mode=0o750)
        private_folder(existing)  # an operator's own folder keeps the mode it was given
    finally:
        os.umask(before)

    def mode(path: Path) -> int:
        return stat.S_IMODE(path.stat().st_mode)

    if os.name == "nt":
        return
    assert (mode(key_dir), mode(key_dir / "signing.key")) == (0o700, 0o600)
    objects = [storage_root, *storage_root.rglob("*")]
    assert {str(p.relative_to(tmp_path)): oct(mode(p)) for p in objects} == {
        str(p.relative_to(tmp_path)): oct(0o700 if p.is_dir() else 0o600) for p in objects
    }
    assert (mode(made), mode(existing)) == (0o700, 0o750)
    (tmp_path / "a-file").write_text("not a folder")
    with pytest.raises(NotADirectoryError, match="a-file exists and is not a folder"):
        private_folder(tmp_path / "a-file")
