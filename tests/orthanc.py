"""Pytest plugin: a REAL PACS (Orthanc with its DICOMweb plugin) for the PACS tests.

Registered in ``tests/conftest.py`` (``pytest_plugins``). Fixtures:

- ``orthanc`` (session): starts ``Orthanc CONFIG.json`` with its own config (free loopback HTTP and
  DICOM ports, storage and index in a temp dir, remote access off, HTTP authentication on with a random
  user and password, the DICOMweb plugin at ``/dicom-web/``), waits for ``GET /system`` and yields an
  :class:`Orthanc`; stopped at the end of the session. Where Orthanc or its DICOMweb plugin is not
  installed the tests using it are skipped with the reason, unless ``PACS_MASK_REQUIRE_ORTHANC=1``
  (CI), which fails them.
- ``pacs_ct`` (session): a generated 200-slice CT (:func:`pacs_mask_desktop.core.demo.write_synthetic_ct`,
  InstanceNumber descending with position) STOWed into that Orthanc in shuffled order.
- ``pacs_mr`` (session): pydicom's multi-frame Enhanced MR ``emri_small.dcm`` STOWed into it.
- ``garbage_pacs`` (session): a tiny local HTTP server that answers every request ``200`` with a body
  that is not DICOMweb JSON: the fault injector for "malformed answer".
- ``silent_pacs`` (session): a socket that accepts connections and never answers ("slow PACS").
- ``dead_pacs_url``: a loopback URL where nothing listens ("PACS down").

Both series are stored once per session; tests must not delete them.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pydicom
import pytest
from pydicom.dataset import Dataset

from pacs_mask_desktop.core.demo import write_synthetic_ct
from tests.live_server import free_port
from tests.processes import stop_process

REQUIRE_ORTHANC_ENV = "PACS_MASK_REQUIRE_ORTHANC"
PLUGIN_ENV = "PACS_MASK_ORTHANC_DICOMWEB_PLUGIN"
_START_TIMEOUT = 60.0
CT_SLICES = 200
CT_SIZE = 64
CT_SEED = 29
STOW_BATCH = 50


@dataclass(frozen=True)
class StoredSeries:
    """A series put into the test PACS, and what the tests know about it."""

    study_instance_uid: str
    series_instance_uid: str
    patient_id: str
    accession_number: str
    modality: str
    rows: int
    columns: int
    #: SOP Instance UIDs in geometry order (slice index 0 = lowest position along the normal)
    sop_uids_in_order: tuple[str, ...]
    #: InstanceNumber of each slice, in geometry order
    instance_numbers: tuple[int, ...]
    #: the files as written (for a local-folder comparison)
    folder: Path | None = None

    @property
    def count(self) -> int:
        """Number of slices (frames for a multi-frame instance)."""
        return len(self.instance_numbers)


@dataclass(frozen=True)
class Orthanc:
    """A running Orthanc: where its REST API and DICOMweb root are and the credentials they want."""

    url: str
    user: str
    password: str
    base: Path
    proc: subprocess.Popen[bytes]

    @property
    def dicomweb_url(self) -> str:
        """The DICOMweb root (QIDO-RS, WADO-RS, STOW-RS)."""
        return f"{self.url}/dicom-web"

    def env(self) -> dict[str, str]:
        """The ``PACS_MASK_DICOMWEB_*`` settings pointing a server or client at this PACS."""
        return {
            "PACS_MASK_DICOMWEB_URL": self.dicomweb_url,
            "PACS_MASK_DICOMWEB_USER": self.user,
            "PACS_MASK_DICOMWEB_PASSWORD": self.password,
        }

    def stow(self, datasets: list[Dataset]) -> None:
        """Store ``datasets`` over STOW-RS, in the order given, ``STOW_BATCH`` per request."""
        from dicomweb_client.api import DICOMwebClient
        from dicomweb_client.session_utils import create_session_from_user_pass

        client = DICOMwebClient(
            self.dicomweb_url, session=create_session_from_user_pass(self.user, self.password)
        )
        for start in range(0, len(datasets), STOW_BATCH):
            client.store_instances(datasets[start : start + STOW_BATCH])

    def delete_series(self, study_uid: str, *, modality: str) -> None:
        """Delete the ``modality`` series of a study through Orthanc's REST API (test clean-up)."""
        auth = (self.user, self.password)
        query = {"Level": "Series", "Query": {"StudyInstanceUID": study_uid, "Modality": modality}}
        found = httpx.post(f"{self.url}/tools/find", json=query, auth=auth, timeout=30)
        found.raise_for_status()
        for orthanc_id in found.json():
            httpx.delete(f"{self.url}/series/{orthanc_id}", auth=auth, timeout=30).raise_for_status()

    def log_tail(self, lines: int = 30) -> str:
        """The end of Orthanc's log, for failure messages."""
        try:
            return "\n".join((self.base / "orthanc.log").read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


def _orthanc_required() -> bool:
    return os.environ.get(REQUIRE_ORTHANC_ENV, "").strip().lower() in ("1", "true", "yes")


def _unavailable(reason: str) -> None:
    if _orthanc_required():
        pytest.fail(f"{REQUIRE_ORTHANC_ENV}=1 but {reason}", pytrace=False)
    pytest.skip(reason)


def find_dicomweb_plugin() -> Path | None:
    """The DICOMweb plugin's shared library: ``PACS_MASK_ORTHANC_DICOMWEB_PLUGIN``, else the Debian package's."""
    configured = os.environ.get(PLUGIN_ENV)
    if configured:
        return Path(configured) if Path(configured).is_file() else None
    if shutil.which("dpkg") is None:
        return None
    listed = subprocess.run(
        ["dpkg", "-L", "orthanc-dicomweb"], capture_output=True, text=True, check=False
    ).stdout.splitlines()
    # Prefer the copy in Orthanc's plugins folder (the symlink Debian puts there), else the library itself.
    libraries = [Path(p) for p in listed if "DicomWeb" in p and ".so" in Path(p).name]
    libraries.sort(key=lambda p: (p.parent.name != "plugins", len(p.name)))
    return next((p for p in libraries if p.is_file()), None)


def _config(base: Path, http_port: int, dicom_port: int, user: str, password: str, plugin: Path) -> Path:
    config = {
        "Name": "pacs-mask-test",
        "HttpPort": http_port,
        "DicomPort": dicom_port,
        "DicomAet": "PACSMASKTEST",
        "StorageDirectory": str(base / "storage"),
        "IndexDirectory": str(base / "index"),
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": True,
        "RegisteredUsers": {user: password},
        "HttpsVerifyPeers": True,
        "SaveJobs": False,
        "ConcurrentJobs": 1,
        "StorageCompression": False,
        "Plugins": [str(plugin)],
        "DicomWeb": {
            "Enable": True,
            "Root": "/dicom-web/",
            "EnableWado": False,
            "StudiesMetadata": "Full",
            "SeriesMetadata": "Full",
        },
    }
    path = base / "orthanc.json"
    path.write_text(json.dumps(config, indent=2), encoding="utf-8")
    path.chmod(0o600)  # it holds the test password
    return path


def _wait_until_up(proc: subprocess.Popen[bytes], url: str, auth: tuple[str, str]) -> bool:
    deadline = time.monotonic() + _START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        try:
            if httpx.get(url + "/system", auth=auth, timeout=2.0).status_code == 200:
                return True
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"Orthanc did not answer GET /system within {_START_TIMEOUT:.0f}s")


@pytest.fixture(scope="session")
def orthanc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Orthanc]:
    """A running Orthanc with DICOMweb on loopback; skipped (or failed in CI) where it is not installed."""
    binary = shutil.which("Orthanc")
    if binary is None:
        _unavailable("Orthanc is not installed (Debian: apt-get install orthanc orthanc-dicomweb)")
    plugin = find_dicomweb_plugin()
    if plugin is None:
        _unavailable("Orthanc's DICOMweb plugin is not installed (Debian: apt-get install orthanc-dicomweb)")
    assert binary is not None
    assert plugin is not None
    base = tmp_path_factory.mktemp("orthanc")
    base.chmod(0o700)
    user = "pacsmask"
    password = os.urandom(12).hex()
    for _attempt in range(3):  # a free port can be taken between probing and binding
        http_port, dicom_port = free_port(), free_port()
        config = _config(base, http_port, dicom_port, user, password, plugin)
        url = f"http://127.0.0.1:{http_port}"
        with (base / "orthanc.log").open("ab") as log:
            proc = subprocess.Popen(
                [binary, str(config)],
                cwd=base,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        try:
            up = _wait_until_up(proc, url, (user, password))
        except BaseException:
            stop_process(proc, grace=10)
            raise
        if up:
            break
    else:
        tail = "\n".join((base / "orthanc.log").read_text(errors="replace").splitlines()[-20:])
        raise RuntimeError(f"Orthanc failed to start:\n{tail}")
    server = Orthanc(url=url, user=user, password=password, base=base, proc=proc)
    try:
        yield server
    finally:
        stop_process(proc, grace=15)


@contextlib.contextmanager
def running_orthanc(base: Path, user: str, password: str) -> Iterator[Orthanc]:
    """Orthanc with the tests' config and storage in ``base``, for scripts and benchmarks (not a fixture).

    Storage stays in ``base`` after it stops, so a benchmark can reuse what it stored. ``RuntimeError``
    when Orthanc or its DICOMweb plugin is missing or it does not start.
    """
    binary, plugin = shutil.which("Orthanc"), find_dicomweb_plugin()
    if binary is None or plugin is None:
        raise RuntimeError(
            "Orthanc and its DICOMweb plugin are needed (Debian: apt-get install orthanc orthanc-dicomweb)"
        )
    base.mkdir(mode=0o700, parents=True, exist_ok=True)
    http_port = free_port()
    config = _config(base, http_port, free_port(), user, password, plugin)
    url = f"http://127.0.0.1:{http_port}"
    with (base / "orthanc.log").open("ab") as log:
        proc = subprocess.Popen(
            [binary, str(config)], cwd=base, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
        )
    try:
        if not _wait_until_up(proc, url, (user, password)):
            tail = "\n".join((base / "orthanc.log").read_text(errors="replace").splitlines()[-20:])
            raise RuntimeError(f"Orthanc failed to start:\n{tail}")
        yield Orthanc(url=url, user=user, password=password, base=base, proc=proc)
    finally:
        stop_process(proc, grace=15)


def _read_back(paths: list[Path]) -> list[Dataset]:
    return [pydicom.dcmread(p) for p in paths]


@pytest.fixture(scope="session")
def pacs_ct(orthanc: Orthanc, tmp_path_factory: pytest.TempPathFactory) -> StoredSeries:
    """A 200-slice 64x64 CT in the PACS, sent in shuffled order, InstanceNumber descending with position.

    Read-only for the tests: one that stores a DICOM SEG in its study uses :func:`pacs_ct_for_seg`.
    """
    folder = tmp_path_factory.mktemp("pacs-ct")
    paths = write_synthetic_ct(folder, slices=CT_SLICES, size=CT_SIZE, seed=CT_SEED)  # in geometry order
    datasets = _read_back(paths)
    first = datasets[0]
    shuffled = list(datasets)
    random.Random(CT_SEED).shuffle(shuffled)
    orthanc.stow(shuffled)
    return StoredSeries(
        study_instance_uid=first.StudyInstanceUID,
        series_instance_uid=first.SeriesInstanceUID,
        patient_id=str(first.PatientID),
        accession_number=str(first.AccessionNumber),
        modality="CT",
        rows=int(first.Rows),
        columns=int(first.Columns),
        sop_uids_in_order=tuple(ds.SOPInstanceUID for ds in datasets),
        instance_numbers=tuple(int(ds.InstanceNumber) for ds in datasets),
        folder=folder,
    )


@pytest.fixture
def pacs_ct_for_seg(orthanc: Orthanc, pacs_ct: StoredSeries) -> Iterator[StoredSeries]:
    """:func:`pacs_ct` for a test that stores DICOM SEGs in its study: they are deleted afterwards, so
    the study holds exactly the CT series again whatever order the tests run in."""
    try:
        yield pacs_ct
    finally:
        orthanc.delete_series(pacs_ct.study_instance_uid, modality="SEG")


def emri_small_path() -> Path | None:
    """pydicom's multi-frame Enhanced MR test file (shipped by the ``pydicom-data`` package), if installed."""
    try:
        import data_store  # the module of the pydicom-data package
    except ImportError:
        return None
    path = Path(data_store.__file__).parent / "data" / "emri_small.dcm"
    return path if path.is_file() else None


@pytest.fixture(scope="session")
def pacs_mr(orthanc: Orthanc) -> StoredSeries:
    """pydicom's 10-frame 64x64 Enhanced MR (``emri_small.dcm``) in the PACS."""
    path = emri_small_path()
    if path is None:
        pytest.fail("emri_small.dcm not found: install the test extra (pydicom-data)", pytrace=False)
    ds = pydicom.dcmread(path)
    orthanc.stow([ds])
    frames = int(ds.NumberOfFrames)
    return StoredSeries(
        study_instance_uid=ds.StudyInstanceUID,
        series_instance_uid=ds.SeriesInstanceUID,
        patient_id=str(ds.get("PatientID", "")),
        accession_number=str(ds.get("AccessionNumber", "")),
        modality="MR",
        rows=int(ds.Rows),
        columns=int(ds.Columns),
        sop_uids_in_order=(ds.SOPInstanceUID,) * frames,
        instance_numbers=(int(ds.InstanceNumber),) * frames,
    )


class _GarbageHandler(BaseHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # the base class names it `format`
        pass

    def _answer(self) -> None:
        body = b"<html>this is not a PACS</html>\x00\xff"
        self.send_response(200)
        self.send_header("Content-Type", "application/dicom+json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = _answer


@pytest.fixture(scope="session")
def garbage_pacs() -> Iterator[str]:
    """The base URL of a local HTTP server that answers every request 200 with a non-JSON body."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _GarbageHandler)
    thread = threading.Thread(target=server.serve_forever, name="garbage-pacs", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/dicom-web"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.fixture(scope="session")
def silent_pacs() -> Iterator[str]:
    """A DICOMweb URL whose server accepts the connection (kernel backlog) and never answers."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(64)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}/dicom-web"


@pytest.fixture
def dead_pacs_url() -> str:
    """A DICOMweb URL on a loopback port where nothing listens."""
    return f"http://127.0.0.1:{free_port()}/dicom-web"
