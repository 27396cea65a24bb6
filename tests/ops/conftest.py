"""Fixtures for the operations tests: an app on a temp SQLite database and local or S3 (rclone) storage.

``ops`` is an :class:`OpsEnv`: the running app (TestClient), its settings, tokens, a helper that
uploads a whole group through the real flow (sign, PUT to storage, complete), helpers that change
storage behind the server's back (to break things on purpose), and the environment the
``pacs-mask-server`` CLI needs to reach the same database and storage.

Parametrise ``storage_kind`` with ``STORAGES`` to run a test on both backends (``s3`` is a fresh
bucket on the session's real ``rclone serve s3``, see ``tests/s3_server.py``) and ``db_kind`` with
``DATABASES`` for SQLite and PostgreSQL.
"""

from __future__ import annotations

import base64
import hashlib
import io
import os
import shutil
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from litestar.testing import TestClient
from PIL import Image
from PIL.PngImagePlugin import PngInfo
from sqlalchemy import create_engine, select, text, update
from sqlalchemy.engine import make_url

from server.app import create_app
from server.db.migrate import upgrade
from server.db.models import AuditLog, MaskGroup
from server.services.tokens import issue_token
from server.settings import Settings
from tests.s3_server import RcloneS3, use_rclone_credentials

PUBLIC_URL = "http://testserver.local"
STORAGES = ["local", pytest.param("s3", marks=pytest.mark.s3)]
DATABASES = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
POSTGRES_URL_ENV = "PACS_MASK_TEST_POSTGRES_URL"
REQUIRE_POSTGRES_ENV = "PACS_MASK_REQUIRE_POSTGRES"
DEFAULT_POSTGRES_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


def md5_hex(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def md5_b64(data: bytes) -> str:
    return base64.b64encode(hashlib.md5(data, usedforsecurity=False).digest()).decode("ascii")


def slice_body(group_no: int, index: int) -> bytes:
    """A real empty 8x8 mask PNG, distinct per group and slice (a text chunk names them).

    ``validate`` decodes stored masks and compares them with what ``complete`` registered (8x8, no label).
    """
    info = PngInfo()
    info.add_text("slice", f"{group_no}:{index}")
    buffer = io.BytesIO()
    Image.new("L", (8, 8), 0).save(buffer, format="PNG", pnginfo=info)
    return buffer.getvalue()


@dataclass
class Uploaded:
    """A group uploaded through the API."""

    id: str
    annotation_id: int
    keys: list[str]
    bodies: list[bytes]


@dataclass
class OpsEnv:
    """The app under test and helpers around it."""

    settings: Settings
    client: TestClient
    admin: str
    env: dict[str, str]
    s3: RcloneS3 | None = None
    uploads: httpx.Client | None = None
    _groups: int = 0
    tokens: dict[str, str] = field(default_factory=dict)

    @property
    def parts(self) -> Any:
        return self.client.app.state.parts  # type: ignore[attr-defined]

    def token(self, role: str) -> str:
        """A token of ``role`` (made on first use)."""
        if role not in self.tokens:
            self.tokens[role] = issue_token(self.parts.db, f"ops-{role}", role)
        return self.tokens[role]

    def api(self, method: str, path: str, *, token: str | None = None, **kwargs: Any) -> httpx.Response:
        """Call the API as admin (or with ``token``)."""
        headers = {"Authorization": f"Bearer {token or self.admin}"}
        return self.client.request(method, path, headers=headers, **kwargs)

    def annotation(self) -> int:
        response = self.api(
            "POST",
            "/api/annotations",
            json={"study_instance_uid": "1.2.840.1", "series_instance_uid": "1.2.840.1.2"},
        )
        assert response.status_code == 201, response.text
        return int(response.json()["id"])

    def upload_group(
        self,
        slices: int = 3,
        *,
        annotation_id: int | None = None,
        complete: bool = True,
        upload: int | None = None,
    ) -> Uploaded:
        """Create a group, sign ``slices`` URLs, PUT ``upload`` of them (all by default), then complete."""
        self._groups += 1
        number = self._groups
        annotation_id = annotation_id or self.annotation()
        group = self.api(
            "POST",
            "/api/mask-group",
            json={
                "annotation_id": annotation_id,
                "model_name": "unet",
                "version": f"v{number}",
                "source": "ai",
                "expected_slices": slices,
            },
        )
        assert group.status_code == 201, group.text
        gid = group.json()["id"]
        bodies = [slice_body(number, i) for i in range(slices)]
        names = [f"slice_{i:04d}.png" for i in range(slices)]
        signed = self.api(
            "POST",
            f"/api/mask-group/{gid}/signed-url",
            json={
                "slices": [
                    {"filename": n, "size": len(b), "content_md5": md5_b64(b), "content_type": "image/png"}
                    for n, b in zip(names, bodies, strict=True)
                ]
            },
        )
        assert signed.status_code == 200, signed.text
        urls = signed.json()["urls"]
        sender = self.uploads or self.client
        for url, body in list(zip(urls, bodies, strict=True))[: slices if upload is None else upload]:
            put = sender.request(url["method"], url["url"], content=body, headers=url["headers"])
            assert put.status_code == 200, put.text
        if complete:
            done = self.api(
                "POST",
                f"/api/mask-group/{gid}/complete",
                json={
                    "slices": [
                        {"filename": n, "slice_index": i, "width": 8, "height": 8, "checksum": md5_hex(b)}
                        for i, (n, b) in enumerate(zip(names, bodies, strict=True))
                    ]
                },
            )
            assert done.status_code == 200, done.text
        return Uploaded(gid, annotation_id, [u["key"] for u in urls], bodies)

    # --- changing storage behind the server's back -------------------------------------------------

    def raw_put(self, key: str, data: bytes) -> None:
        """Write an object directly (no signature, no digest check)."""
        if self.s3 is None:
            path = self.settings.storage_root / key
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
            return
        client = self.s3.client()
        client.put_object(Bucket=self.settings.s3_bucket, Key=key, Body=data)
        client.close()

    def raw_delete(self, key: str) -> None:
        """Remove an object directly."""
        if self.s3 is None:
            (self.settings.storage_root / key).unlink()
            return
        client = self.s3.client()
        client.delete_object(Bucket=self.settings.s3_bucket, Key=key)
        client.close()

    def keys(self, prefix: str = "mask/") -> list[str]:
        """Every key stored under ``prefix``."""
        return sorted(info.key for info in self.parts.storage.list(prefix))


def backdate(ops: OpsEnv, group: Uploaded, age: timedelta, *, status: str | None = None) -> None:
    """Move a group's creation and its audit rows ``age`` into the past (optionally set its status)."""
    with ops.parts.db.session() as session:
        gid = uuid.UUID(group.id)
        row = session.get(MaskGroup, gid)
        values: dict[str, object] = {"created_at": row.created_at.replace(tzinfo=UTC) - age}
        if status:
            values["status"] = status
        session.execute(update(MaskGroup).where(MaskGroup.id == gid).values(**values))
        for audit in session.scalars(select(AuditLog).where(AuditLog.group_id == gid)):
            audit.at = audit.at.replace(tzinfo=UTC) - age


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """A developer's PACS_MASK_* settings and a multiprocess metrics dir must not leak into these tests;
    the CLI must not swap the root logger's handlers under pytest."""
    for name in list(os.environ):
        if name.startswith("PACS_MASK_") or name == "PROMETHEUS_MULTIPROC_DIR":
            monkeypatch.delenv(name)
    monkeypatch.setattr("server.logs.configure_logging", lambda *_args: None)


@pytest.fixture(scope="session")
def migrated_sqlite(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SQLite file migrated once per session; each test copies it."""
    path = tmp_path_factory.mktemp("ops-template") / "template.sqlite3"
    upgrade(f"sqlite:///{path}")
    return path


@pytest.fixture
def db_kind() -> str:
    """Override with ``@pytest.mark.parametrize("db_kind", DATABASES)``."""
    return "sqlite"


@pytest.fixture
def database_url(db_kind: str, migrated_sqlite: Path, tmp_path: Path) -> Iterator[str]:
    """A migrated, empty database of ``db_kind`` for this test only.

    PostgreSQL: a throwaway database on the server named by ``PACS_MASK_TEST_POSTGRES_URL``, dropped
    afterwards; unreachable means skipped, unless ``PACS_MASK_REQUIRE_POSTGRES=1`` (then it fails).
    """
    if db_kind == "sqlite":
        path = tmp_path / "ops.sqlite3"
        shutil.copyfile(migrated_sqlite, path)
        yield f"sqlite:///{path}"
        return
    base = make_url(os.environ.get(POSTGRES_URL_ENV) or DEFAULT_POSTGRES_URL)
    name = f"pacs_mask_ops_{uuid.uuid4().hex[:12]}"
    admin = create_engine(base, isolation_level="AUTOCOMMIT", connect_args={"connect_timeout": 5})
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:
        admin.dispose()
        reason = (
            f"PostgreSQL at {base.render_as_string(hide_password=True)} is not usable: {type(exc).__name__}"
        )
        if os.environ.get(REQUIRE_POSTGRES_ENV, "").strip().lower() in ("1", "true", "yes"):
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason)
    url = base.set(database=name).render_as_string(hide_password=False)
    try:
        upgrade(url)
        yield url
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture
def storage_kind() -> str:
    """Override with ``@pytest.mark.parametrize("storage_kind", STORAGES)``."""
    return "local"


@pytest.fixture
def ops(
    storage_kind: str,
    database_url: str,
    tmp_path: Path,
    request: pytest.FixtureRequest,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[OpsEnv]:
    """The app on a fresh database and storage of ``storage_kind``, entered (startup hooks ran)."""
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    env = {
        "PACS_MASK_DATA_DIR": str(data_dir),
        "PACS_MASK_DATABASE_URL": database_url,
        "PACS_MASK_PUBLIC_URL": PUBLIC_URL,
        "PACS_MASK_SIGNING_KEY": "k" * 40,
    }
    server: RcloneS3 | None = None
    if storage_kind == "s3":
        server = request.getfixturevalue("rclone_s3")
        use_rclone_credentials(monkeypatch, server)
        bucket = f"ops-{uuid.uuid4().hex[:20]}"
        admin = server.client()
        admin.create_bucket(Bucket=bucket)
        admin.close()
        env |= {
            "PACS_MASK_STORAGE": "s3",
            "PACS_MASK_S3_BUCKET": bucket,
            "PACS_MASK_S3_ENDPOINT_URL": server.endpoint_url,
            "PACS_MASK_S3_ADDRESSING_STYLE": "path",
            "PACS_MASK_S3_REGION": server.region,
        }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    settings = Settings.from_env()
    app = create_app(settings)
    uploads = httpx.Client(timeout=30) if server is not None else None
    with TestClient(app, base_url=PUBLIC_URL, timeout=30) as client:
        admin_token = issue_token(app.state.parts.db, "ops-admin", "admin")
        yield OpsEnv(settings=settings, client=client, admin=admin_token, env=env, s3=server, uploads=uploads)
    if uploads is not None:
        uploads.close()
    if server is not None:
        shutil.rmtree(server.root / settings.s3_bucket, ignore_errors=True)
