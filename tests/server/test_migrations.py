"""Alembic migrations: up, down and up again on SQLite and PostgreSQL; schema.sql and models in step."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect

from server.db.migrate import (
    SCHEMA_SQL,
    current_revision,
    downgrade,
    head_revision,
    offline_sql,
    upgrade,
    write_schema_sql,
)
from server.db.models import Base
from server.db.session import make_engine
from tests.server.conftest import ALL_DBS, create_postgres_database, drop_postgres_database

TABLES = {
    "annotation",
    "annotation_instance",
    "annotation_mask_group",
    "annotation_mask",
    "annotation_mask_upload",
    "audit_log",
    "api_token",
}


@pytest.fixture
def empty_db_url(db_kind: str, tmp_path) -> Iterator[str]:  # type: ignore[no-untyped-def]
    """A database that was never migrated (its own, dropped afterwards)."""
    if db_kind == "sqlite":
        yield f"sqlite:///{tmp_path / 'migrations.sqlite3'}"
        return
    url = create_postgres_database("pacs_mask_migrations")
    try:
        yield url
    finally:
        drop_postgres_database(url)


def tables(url: str) -> set[str]:
    engine = make_engine(url)
    try:
        return set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


def model_diff(url: str) -> list:
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={"compare_type": True})
            return compare_metadata(context, Base.metadata)
    finally:
        engine.dispose()


@pytest.mark.parametrize("db_kind", ALL_DBS)
def test_upgrade_downgrade_upgrade(empty_db_url: str) -> None:
    assert current_revision(empty_db_url) is None

    upgrade(empty_db_url)
    assert tables(empty_db_url) >= TABLES
    assert current_revision(empty_db_url) == head_revision()

    downgrade(empty_db_url, "base")
    assert tables(empty_db_url) & TABLES == set()
    assert current_revision(empty_db_url) is None

    upgrade(empty_db_url)
    assert tables(empty_db_url) >= TABLES
    assert current_revision(empty_db_url) == head_revision()


@pytest.mark.parametrize("db_kind", ALL_DBS)
def test_models_match_the_migrations(empty_db_url: str) -> None:
    """Autogenerate finds nothing to do: the models and the migrated schema agree."""
    upgrade(empty_db_url)
    assert model_diff(empty_db_url) == []


def test_schema_sql_is_generated_from_the_migrations(tmp_path) -> None:  # type: ignore[no-untyped-def]
    regenerated = write_schema_sql(tmp_path / "schema.sql")
    assert regenerated.read_bytes() == SCHEMA_SQL.read_bytes(), (
        "server/db/schema.sql is out of date with the migrations; regenerate it with "
        "`python -m server.db.migrate`"
    )
    text = offline_sql()
    for table in TABLES:
        assert f"CREATE TABLE {table} " in text


def test_schema_sql_test_notices_drift(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The comparison above is bytes-exact: one changed column would fail it."""
    regenerated = write_schema_sql(tmp_path / "schema.sql").read_text(encoding="utf-8")
    drifted = regenerated.replace("VARCHAR(128)", "VARCHAR(129)", 1)
    assert drifted != regenerated
    assert drifted.encode() != SCHEMA_SQL.read_bytes()


def test_model_comparison_notices_drift(tmp_path) -> None:  # type: ignore[no-untyped-def]
    url = f"sqlite:///{tmp_path / 'drift.sqlite3'}"
    upgrade(url)
    engine = make_engine(url)
    try:
        with engine.begin() as conn:
            conn.exec_driver_sql("DROP INDEX ix_audit_log_group")
    finally:
        engine.dispose()
    assert [diff[0] for diff in model_diff(url)] == ["add_index"]
