"""Local storage writes without fsync and makes a group durable in one pass at ``complete``."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from server.storage.base import ObjectExists
from server.storage.local import LocalStorage


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="names fsynced descriptors through /proc")
def test_make_durable_fsyncs_every_object_and_its_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    storage = LocalStorage(tmp_path / "root", public_url="http://x", signing_key=b"k" * 32)
    keys = [f"mask/1/g/{i:03d}.png" for i in range(20)]
    for key in keys:
        storage.write(key, [key.encode()])
    synced: list[str] = []
    real_fsync = os.fsync

    def recording_fsync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr("server.storage.local.os.fsync", recording_fsync)

    storage.make_durable(keys)

    folders = [
        storage.root / "mask" / "1" / "g",
        storage.root / "mask" / "1",
        storage.root / "mask",
        storage.root,
    ]
    assert sorted(synced) == sorted([str(storage.root / key) for key in keys] + [str(f) for f in folders])


def test_make_durable_that_fails_removes_the_objects_and_says_so(tmp_path: Path) -> None:
    from server.storage.base import StorageError

    storage = LocalStorage(tmp_path / "root", public_url="http://x", signing_key=b"k" * 32)
    storage.write("mask/1/g/a.png", [b"a"])
    with pytest.raises(StorageError, match="durable"):
        storage.make_durable(["mask/1/g/a.png", "mask/1/g/gone.png"])
    # What could not be made durable is removed, so a retried complete reports it missing (the client
    # sends it again) instead of trusting bytes that may never have reached the disk.
    assert storage.stat("mask/1/g/a.png") is None


def test_writes_are_create_only_and_leave_no_temporary_files(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "root", public_url="http://x", signing_key=b"k" * 32)
    first = storage.write("mask/1/g/a.png", [b"first"])
    # The same bytes again (a re-sent PUT whose answer was lost): the same object, nothing changes.
    assert storage.write("mask/1/g/a.png", [b"fir", b"st"]) == first
    # Other bytes: refused, the stored object stays as it was.
    with pytest.raises(ObjectExists) as refused:
        storage.write("mask/1/g/a.png", [b"sec", b"ond"])
    assert refused.value.stored == first
    assert (storage.root / "mask/1/g/a.png").read_bytes() == b"first"
    assert sorted(p.name for p in (storage.root / "mask/1/g").iterdir()) == ["a.png"]


@pytest.mark.skipif(os.name == "nt", reason="POSIX permission bits")
def test_objects_are_0600_and_every_folder_0700_whatever_the_umask(tmp_path: Path) -> None:
    """Objects hold patient data (a SEG names the patient): only the server's user may read them."""
    import stat

    previous = os.umask(0o022)  # the usual umask, which gives 0644 files and 0755 folders by default
    try:
        storage = LocalStorage(tmp_path / "data" / "objects", public_url="http://x", signing_key=b"k" * 32)
        storage.put("mask/7/group-1/seg-1.2.3.dcm", b"DICM", content_type="application/dicom")
        storage.write("mask/7/group-1/mask_0001.png", [b"png"])
    finally:
        os.umask(previous)
    mode = lambda path: stat.S_IMODE(path.stat().st_mode)  # noqa: E731
    root = tmp_path / "data" / "objects"
    assert mode(root) == 0o700
    assert [mode(root / p) for p in ("mask", "mask/7", "mask/7/group-1")] == [0o700] * 3
    assert mode(root / "mask/7/group-1/seg-1.2.3.dcm") == 0o600
    assert mode(root / "mask/7/group-1/mask_0001.png") == 0o600


@pytest.mark.skipif(os.name == "nt", reason="POSIX permission bits")
def test_the_embedded_server_data_folder_is_0700(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import stat
    import subprocess

    from pacs_mask_desktop.core.embedded import EmbeddedServer, EmbeddedServerError

    def no_child(*_args: object, **_kwargs: object) -> None:
        raise OSError("not started in this test")

    monkeypatch.setattr(subprocess, "Popen", no_child)
    old = tmp_path / "old"
    old.mkdir(mode=0o755)  # made by an earlier version
    old.chmod(0o755)
    for folder in (tmp_path / "new" / "data", old):
        server = EmbeddedServer(folder, log_path=tmp_path / "log" / "server.log")
        with pytest.raises(EmbeddedServerError):
            server._spawn(1)
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700
