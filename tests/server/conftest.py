"""Fixtures for the server tests: databases, storage backends and an app with a TestClient.

The matrix is chosen per test by overriding two fixtures with ``pytest.mark.parametrize``:

- ``db_kind``: ``"sqlite"`` (default; a temp file copied from a migrated template) or ``"postgres"``
  (a uniquely named database created on the server named by ``PACS_MASK_TEST_POSTGRES_URL`` once per
  test module, migrated, emptied before each test and dropped afterwards). An unreachable PostgreSQL
  skips those tests with the reason, unless ``PACS_MASK_REQUIRE_POSTGRES=1`` (CI), which fails them.
- ``storage_kind``: ``"local"`` (default) or ``"s3"`` (a fresh bucket on the session's real
  ``rclone serve s3``, credentials through the standard ``AWS_*`` variables).

Use ``ALL_DBS`` / ``ALL_STORAGES`` as the parameter lists to get both, with the ``postgres`` / ``s3``
markers applied. Every response the TestClient sees is recorded; a test fails when any was a 500.
"""

from __future__ import annotations

import base64
import hashlib
import io
import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from litestar import Litestar
from litestar.testing import TestClient
from PIL import Image
from sqlalchemy import create_engine, func, select, text
from sqlalchemy.engine import make_url

from server.app import create_app
from server.db.migrate import upgrade
from server.db.models import AuditLog, Base, Mask, MaskGroup
from server.db.session import Database
from server.services.tokens import issue_token
from server.settings import Settings
from server.storage import Storage, create_storage
from server.storage.base import StorageError
from tests.s3_server import RcloneS3, use_rclone_credentials

POSTGRES_URL_ENV = "PACS_MASK_TEST_POSTGRES_URL"
REQUIRE_POSTGRES_ENV = "PACS_MASK_REQUIRE_POSTGRES"
DEFAULT_POSTGRES_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
PUBLIC_URL = "http://testserver.local"

ALL_DBS = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
ALL_STORAGES = ["local", pytest.param("s3", marks=pytest.mark.s3)]
ERROR_KEYS = {"error", "message", "details"}


# --- PostgreSQL --------------------------------------------------------------------------------------


def postgres_base_url() -> str:
    """The PostgreSQL server the tests may create databases on."""
    return os.environ.get(POSTGRES_URL_ENV) or DEFAULT_POSTGRES_URL


def postgres_required() -> bool:
    """True in CI: an unreachable PostgreSQL is a failure there, not a skip."""
    return os.environ.get(REQUIRE_POSTGRES_ENV, "").strip().lower() in ("1", "true", "yes")


def _admin_engine(base_url: str):  # type: ignore[no-untyped-def]
    return create_engine(base_url, isolation_level="AUTOCOMMIT", connect_args={"connect_timeout": 5})


def create_postgres_database(prefix: str = "pacs_mask_test") -> str:
    """Create a fresh, uniquely named database and return its URL; skips (or fails in CI) if unreachable."""
    base_url = postgres_base_url()
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    engine = _admin_engine(base_url)
    try:
        with engine.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:
        reason = (
            f"PostgreSQL at {make_url(base_url).render_as_string(hide_password=True)} is not usable: {exc}"
        )
        if postgres_required():
            pytest.fail(f"{REQUIRE_POSTGRES_ENV}=1 but {reason}", pytrace=False)
        pytest.skip(reason.splitlines()[0])
    finally:
        engine.dispose()
    return make_url(base_url).set(database=name).render_as_string(hide_password=False)


def drop_postgres_database(url: str) -> None:
    """Drop a database made by :func:`create_postgres_database`, even with connections still open."""
    name = make_url(url).database
    engine = _admin_engine(postgres_base_url())
    try:
        with engine.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        engine.dispose()


@pytest.fixture(scope="module")
def postgres_module_url() -> Iterator[str]:
    """One migrated PostgreSQL database for this test module, dropped when the module is done."""
    url = create_postgres_database()
    try:
        upgrade(url)
        yield url
    finally:
        drop_postgres_database(url)


def _empty_postgres(url: str) -> None:
    tables = ", ".join(t.name for t in Base.metadata.sorted_tables)
    engine = create_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))
    finally:
        engine.dispose()


# --- SQLite ------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SQLite file migrated to head once per session; each test gets a copy."""
    path = tmp_path_factory.mktemp("sqlite-template") / "template.sqlite3"
    upgrade(f"sqlite:///{path}")
    for suffix in ("-wal", "-shm"):
        assert not Path(f"{path}{suffix}").exists(), "the template must be checkpointed before copying"
    return path


# --- the matrix --------------------------------------------------------------------------------------


@pytest.fixture
def db_kind() -> str:
    """Override with ``@pytest.mark.parametrize("db_kind", ALL_DBS)`` to run on both databases."""
    return "sqlite"


@pytest.fixture
def storage_kind() -> str:
    """Override with ``@pytest.mark.parametrize("storage_kind", ALL_STORAGES)`` to run on both backends."""
    return "local"


@pytest.fixture
def db_url(db_kind: str, request: pytest.FixtureRequest, tmp_path: Path, sqlite_template: Path) -> str:
    """A migrated, empty database of ``db_kind`` that no other test sees."""
    if db_kind == "sqlite":
        path = tmp_path / "server.sqlite3"
        shutil.copyfile(sqlite_template, path)
        return f"sqlite:///{path}"
    if db_kind == "postgres":
        url = request.getfixturevalue("postgres_module_url")
        _empty_postgres(url)
        return url
    raise ValueError(f"unknown db_kind {db_kind!r}")


@dataclass(frozen=True)
class StorageConfig:
    """Settings fields for one backend, and how to inspect it from the test."""

    kind: str
    fields: dict[str, Any]
    s3: RcloneS3 | None = None


@pytest.fixture
def storage_config(
    storage_kind: str, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> Iterator[StorageConfig]:
    """``local`` (under the app's data dir) or ``s3`` (a fresh bucket on the real rclone server)."""
    if storage_kind == "local":
        yield StorageConfig("local", {"storage": "local"})
        return
    if storage_kind != "s3":
        raise ValueError(f"unknown storage_kind {storage_kind!r}")
    server: RcloneS3 = request.getfixturevalue("rclone_s3")
    use_rclone_credentials(monkeypatch, server)
    bucket = f"t-{uuid.uuid4().hex[:24]}"
    admin = server.client()
    admin.create_bucket(Bucket=bucket)
    admin.close()
    try:
        yield StorageConfig(
            "s3",
            {
                "storage": "s3",
                "s3_bucket": bucket,
                "s3_endpoint_url": server.endpoint_url,
                "s3_addressing_style": "path",
                "s3_region": server.region,
            },
            s3=server,
        )
    finally:
        shutil.rmtree(server.root / bucket, ignore_errors=True)


@pytest.fixture(autouse=True)
def _clean_server_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Settings are built from explicit values here; a developer's PACS_MASK_* must not leak in."""
    for name in list(os.environ):
        if name.startswith("PACS_MASK_") and name.removeprefix("PACS_MASK_").lower() in Settings.model_fields:
            monkeypatch.delenv(name)


# --- the app -----------------------------------------------------------------------------------------


@dataclass
class Server:
    """An app under test: its TestClient, settings, storage, database and token helpers."""

    app: Litestar
    client: TestClient
    settings: Settings
    db_kind: str
    storage_kind: str
    admin_token: str
    uploads: httpx.Client | TestClient
    tokens: dict[str, str] = field(default_factory=dict)

    @property
    def db(self) -> Database:
        return self.app.state.parts.db

    @property
    def storage(self) -> Storage:
        return self.app.state.parts.storage

    def token(self, role: str, name: str | None = None) -> str:
        """A token of ``role`` (one per role and name, made on first use)."""
        name = name or f"test-{role}"
        if name not in self.tokens:
            self.tokens[name] = issue_token(self.db, name, role)
        return self.tokens[name]

    def api(self, method: str, path: str, *, token: str | None = None, role: str = "admin", **kwargs: Any):
        """Call the API as ``role`` (or with ``token``; ``token=""`` sends no Authorization header)."""
        if token is None:
            token = self.admin_token if role == "admin" else self.token(role)
        headers = dict(kwargs.pop("headers", None) or {})
        if token:
            headers["Authorization"] = f"Bearer {token}"
        return self.client.request(method, path, headers=headers, **kwargs)

    def put_signed(self, signed: dict[str, Any], body: bytes, **changes: Any) -> httpx.Response:
        """PUT ``body`` to a signed URL with exactly its headers, through the right client.

        ``changes`` may replace ``url``, ``method`` or ``headers`` to tamper with the request.
        """
        url = changes.get("url", signed["url"])
        method = changes.get("method", signed["method"])
        headers = changes.get("headers", signed["headers"])
        return self.uploads.request(method, url, content=body, headers=headers)

    # --- inspecting what was written ----------------------------------------------------------------

    def row_counts(self) -> dict[str, int]:
        """Rows per table (tokens excluded: tests make them on demand)."""
        with self.db.session() as session:
            return {
                model.__tablename__: session.scalar(select(func.count()).select_from(model)) or 0
                for model in (MaskGroup, Mask, AuditLog)
            } | {"annotation": session.scalar(text("SELECT count(*) FROM annotation")) or 0}

    def objects(self, prefix: str = "mask/") -> list[str]:
        """Keys stored under ``prefix``."""
        return sorted(info.key for info in self.storage.list(prefix))

    def snapshot(self) -> tuple[dict[str, int], list[str]]:
        """Everything a rejected request must leave unchanged."""
        return self.row_counts(), self.objects()


ServerFactory = Callable[..., Server]


@pytest.fixture
def server_factory(
    db_url: str, db_kind: str, storage_config: StorageConfig, tmp_path: Path
) -> Iterator[ServerFactory]:
    """Build apps on this test's database and storage: ``server_factory(storage_hook=..., **settings)``.

    ``storage_hook(storage) -> storage`` may wrap or alter the backend before the app gets it.
    """
    stack: list[tuple[TestClient, httpx.Client | None]] = []
    seen: list[tuple[str, str, int, str]] = []

    def record(response: httpx.Response) -> None:
        if response.status_code == 500:
            response.read()
            seen.append((response.request.method, str(response.request.url), 500, response.text[:500]))

    def build(*, storage_hook: Callable[[Storage], Storage] | None = None, **overrides: Any) -> Server:
        data_dir = tmp_path / f"data-{len(stack)}"
        values: dict[str, Any] = {
            "data_dir": data_dir,
            "database_url": db_url,
            "public_url": PUBLIC_URL,
            "signing_key": "k" * 40,
            **storage_config.fields,
            **overrides,
        }
        settings = Settings(**values)
        storage = create_storage(settings, public_url=PUBLIC_URL, signing_key=settings.signing_key.encode())
        if storage_hook is not None:
            storage = storage_hook(storage)
        app = create_app(settings, storage=storage)
        client = TestClient(app, base_url=PUBLIC_URL, timeout=30)
        client.event_hooks["response"].append(record)
        client.__enter__()
        uploads: httpx.Client | TestClient
        s3_client = None
        if storage_config.kind == "s3":
            s3_client = httpx.Client(timeout=30, event_hooks={"response": [record]})
            uploads = s3_client
        else:
            uploads = client
        stack.append((client, s3_client))
        admin = issue_token(app.state.parts.db, "test-admin", "admin")
        return Server(
            app=app,
            client=client,
            settings=settings,
            db_kind=db_kind,
            storage_kind=storage_config.kind,
            admin_token=admin,
            uploads=uploads,
            tokens={"test-admin": admin},
        )

    yield build
    for client, s3_client in reversed(stack):
        if s3_client is not None:
            s3_client.close()
        client.__exit__(None, None, None)
    assert not seen, f"responses with status 500: {seen}"


@pytest.fixture
def app_client(server_factory: ServerFactory) -> Server:
    """The app on this test's database and storage, with an admin token (``app_client.admin_token``)."""
    return server_factory()


# --- data helpers ------------------------------------------------------------------------------------


def png_bytes(index: int, size: int = 16) -> bytes:
    """A small real PNG, different for every ``index``."""
    image = Image.new("L", (size, size), 0)
    image.putpixel((index % size, (index // size) % size), 255)
    image.putpixel(((index * 7) % size, (index * 3) % size), 1 + index % 254)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def png(array: np.ndarray) -> bytes:
    """The PNG of a 2-D label array (8-bit grey), as a segmentation tool would write it."""
    buffer = io.BytesIO()
    Image.fromarray(array.astype(np.uint8), mode="L").save(buffer, format="PNG")
    return buffer.getvalue()


def md5_hex(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def md5_b64(data: bytes) -> str:
    return base64.b64encode(hashlib.md5(data, usedforsecurity=False).digest()).decode("ascii")


@dataclass(frozen=True)
class Slice:
    """One mask slice: its file name, index and bytes."""

    filename: str
    index: int
    body: bytes

    def to_sign(self) -> dict[str, Any]:
        return {
            "filename": self.filename,
            "size": len(self.body),
            "content_md5": md5_b64(self.body),
            "content_type": "image/png",
        }

    def to_complete(self) -> dict[str, Any]:
        return {
            "filename": self.filename,
            "slice_index": self.index,
            "width": 16,
            "height": 16,
            "checksum": md5_hex(self.body),
            "sop_instance_uid": f"1.2.826.0.1.3680043.8.498.{self.index + 1}",
            "label": "liver",
        }


def make_slices(count: int, start: int = 0) -> list[Slice]:
    return [Slice(f"slice_{i:04d}.png", i, png_bytes(i)) for i in range(start, start + count)]


def assert_error(response: httpx.Response, status: int, code: str | None = None) -> dict[str, Any]:
    """The response is ``status`` with the one error shape (and ``code`` when given); returns the body."""
    assert response.status_code == status, f"expected {status}, got {response.status_code}: {response.text}"
    body = response.json()
    assert set(body) == ERROR_KEYS, body
    assert isinstance(body["message"], str), body
    assert body["message"], body
    assert isinstance(body["details"], dict), body
    if code is not None:
        assert body["error"] == code, body
    return body


def create_annotation(server: Server, role: str = "uploader") -> int:
    response = server.api(
        "POST",
        "/api/annotations",
        role=role,
        json={"study_instance_uid": "1.2.3.4", "series_instance_uid": "1.2.3.4.5", "patient_id": "P-1"},
    )
    assert response.status_code == 201, response.text
    return int(response.json()["id"])


def create_group(server: Server, annotation_id: int, role: str = "uploader", **fields: Any) -> dict[str, Any]:
    body = {
        "annotation_id": annotation_id,
        "model_name": "liver-seg",
        "version": "1.0",
        "source": "ai",
    } | fields
    response = server.api("POST", "/api/mask-group", role=role, json=body)
    assert response.status_code == 201, response.text
    return response.json()


def sign(server: Server, group_id: str, slices: list[Slice], role: str = "uploader") -> list[dict[str, Any]]:
    response = server.api(
        "POST",
        f"/api/mask-group/{group_id}/signed-url",
        role=role,
        json={"slices": [s.to_sign() for s in slices]},
    )
    assert response.status_code == 200, response.text
    return response.json()["urls"]


def upload(server: Server, group_id: str, slices: list[Slice]) -> list[dict[str, Any]]:
    """Sign and PUT every slice with exactly the returned headers."""
    urls = sign(server, group_id, slices)
    for signed, piece in zip(urls, slices, strict=True):
        response = server.put_signed(signed, piece.body)
        assert response.status_code == 200, response.text
    return urls


def complete(server: Server, group_id: str, slices: list[Slice], role: str = "uploader") -> httpx.Response:
    return server.api(
        "POST",
        f"/api/mask-group/{group_id}/complete",
        role=role,
        json={"slices": [s.to_complete() for s in slices]},
    )


def uploaded_group(server: Server, count: int = 3, **fields: Any) -> tuple[int, dict[str, Any], list[Slice]]:
    """An annotation with a pending group whose ``count`` slices are uploaded (not completed)."""
    annotation_id = create_annotation(server)
    group = create_group(server, annotation_id, **fields)
    slices = make_slices(count)
    upload(server, group["id"], slices)
    return annotation_id, group, slices


def object_under(server: Server, key: str) -> bytes:
    """Read one stored object straight from the backend (not through the API)."""
    return b"".join(server.storage.open(key))


def overwrite_object(server: Server, key: str, body: bytes) -> None:
    """Replace a stored object behind the API's back (bit rot, a rogue writer)."""
    storage: Any = server.storage
    if server.storage_kind == "local":
        storage.path_for(key).write_bytes(body)  # storage.write is create-only: go round it, like bit rot
    else:
        storage._client.put_object(Bucket=storage.bucket, Key=key, Body=body)


class FlakyDelete:
    """Mixin for a storage backend whose ``delete_prefix`` deletes ``keep_going`` objects then fails."""

    fail_deletes: bool = True
    delete_before_failing: int = 2

    def delete_prefix(self, prefix: str) -> int:
        if not self.fail_deletes:
            return super().delete_prefix(prefix)  # type: ignore[misc]
        keys = [info.key for info in self.list(prefix)]  # type: ignore[attr-defined]
        for key in keys[: self.delete_before_failing]:
            if isinstance(self, _local_class()):
                self.path_for(key).unlink()  # type: ignore[attr-defined]
            else:
                self._client.delete_object(Bucket=self.bucket, Key=key)  # type: ignore[attr-defined]
        raise StorageError("injected failure: storage went away in the middle of deleting")


def _local_class() -> type:
    from server.storage.local import LocalStorage

    return LocalStorage


def with_mixin(storage: Storage, mixin: type, **attributes: Any) -> Storage:
    """A copy of the backend (same client, same root) that also behaves as ``mixin`` says.

    The copy is still an instance of the backend's class, so the app's type checks (the local
    ``/storage`` route needs a ``LocalStorage``) keep working.
    """
    cls = type(f"{mixin.__name__}{type(storage).__name__}", (mixin, type(storage)), {})
    wrapped = object.__new__(cls)
    wrapped.__dict__.update(vars(storage))
    wrapped.__dict__.update(attributes)
    return wrapped
