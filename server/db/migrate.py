"""Run Alembic migrations from code: upgrade, downgrade, current revision and offline SQL.

The server ships its migrations inside the package (no alembic.ini needed), so the same calls work
from a source checkout, an installed wheel and the frozen desktop build.
"""

from __future__ import annotations

import io
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

from server.db.session import make_engine

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
SCHEMA_SQL = Path(__file__).resolve().parent / "schema.sql"


def alembic_config(url: str, output: io.StringIO | None = None) -> Config:
    """An Alembic config pointing at the packaged migrations and ``url``."""
    cfg = Config(output_buffer=output) if output is not None else Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    cfg.set_main_option("file_template", "%%(year)d_%%(month).2d_%%(day).2d_%%(rev)s_%%(slug)s")
    return cfg


def upgrade(url: str, revision: str = "head") -> None:
    """Bring the database at ``url`` up to ``revision``."""
    command.upgrade(alembic_config(url), revision)


def downgrade(url: str, revision: str) -> None:
    """Take the database at ``url`` down to ``revision`` (``base`` removes every table)."""
    command.downgrade(alembic_config(url), revision)


def head_revision() -> str:
    """The newest revision shipped with this server."""
    head = ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()
    assert head is not None
    return head


def current_revision(url: str) -> str | None:
    """The revision the database at ``url`` is at, or ``None`` when it was never migrated."""
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()
    finally:
        engine.dispose()


def offline_sql(dialect: str = "postgresql") -> str:
    """The DDL the migrations emit for ``dialect``: the plain-SQL schema for DBAs (``schema.sql``)."""
    buffer = io.StringIO()
    url = {"postgresql": "postgresql+psycopg://", "sqlite": "sqlite://"}[dialect]
    command.upgrade(alembic_config(url, buffer), "head", sql=True)
    return buffer.getvalue()


def write_schema_sql(path: Path = SCHEMA_SQL) -> Path:
    """Regenerate ``schema.sql`` from the migrations (run after adding a revision)."""
    header = (
        "-- PACS Mask Upload v2: database schema (PostgreSQL).\n"
        "-- Generated from the Alembic migrations by `python -m server.db.migrate`; do not edit by hand.\n"
        "-- Apply migrations with `pacs-mask-server migrate`; this file is for reading and review.\n\n"
    )
    path.write_text(header + offline_sql("postgresql"), encoding="utf-8")
    return path


if __name__ == "__main__":
    print(write_schema_sql())
