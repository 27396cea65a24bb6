"""The documentation keeps up with the code.

- Every route of ``create_app(...)`` (each method, OPTIONS aside) is described in the spec as
  ``METHOD /path`` in backticks, and every such endpoint the spec names exists.
- Every error code the server can answer with appears in the spec's error table.
- Every ``PACS_MASK_*`` environment variable the code reads (the settings' fields, and any name
  written in the sources) appears in the environment table of ``README.md``.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from server.app import _HTTP_CODES, create_app
from server.errors import ApiError
from server.settings import ENV_PREFIX, Settings

ROOT = Path(__file__).resolve().parents[2]
SPEC = ROOT / "docs" / "specs" / "pacs_mask_upload_v2.md"
OPERATIONS = ROOT / "docs" / "operations.md"
README = ROOT / "README.md"
SOURCES = ("server", "pacs_mask_desktop", "tests", "benchmarks")
# A name is letters, digits and underscores, ending in a letter or digit and not followed by "*"
# (so "PREFIX_S3_*" in prose is a wildcard, not a variable).
ENV_NAME = re.compile(ENV_PREFIX + r"[A-Z0-9_]*[A-Z0-9](?![A-Z0-9_*])")
ENDPOINT = re.compile(r"`(GET|POST|PUT|DELETE|PATCH) (/[^`\s?]*)`")


def _normalise(path: str) -> str:
    """``/api/x/{group_id:str}`` -> ``/api/x/{group_id}``."""
    return re.sub(r"\{(\w+):[^}]+\}", r"{\1}", path)


def app_endpoints(tmp_path: Path) -> set[tuple[str, str]]:
    app = create_app(Settings(data_dir=tmp_path))
    try:
        return {
            (method, _normalise(route.path))
            for route in app.routes
            for method in route.methods  # type: ignore[attr-defined]
            if method not in ("OPTIONS", "HEAD")
        }
    finally:
        app.state.parts.db.close()


def test_every_route_is_in_the_spec_and_every_spec_endpoint_exists(tmp_path: Path) -> None:
    spec = SPEC.read_text(encoding="utf-8")
    endpoints = app_endpoints(tmp_path)
    assert ("POST", "/api/mask-group") in endpoints
    missing = sorted(f"{m} {p}" for m, p in endpoints if f"`{m} {p}`" not in spec)
    assert not missing, f"routes the spec does not describe (write them as `METHOD /path`): {missing}"
    # Examples with real ids (`GET /api/mask/31db…`) count when a route's template matches them.
    patterns = {(m, re.compile(re.sub(r"\\\{\w+\\\}", "[^/]+", re.escape(p)) + "$")) for m, p in endpoints}
    documented = set(ENDPOINT.findall(spec))
    stale = sorted(
        f"{m} {p}" for m, p in documented if not any(m == pm and rx.match(p) for pm, rx in patterns)
    )
    assert not stale, f"the spec describes endpoints the server does not have: {stale}"


def test_the_spec_holds_the_current_ddl() -> None:
    """Every CREATE statement of ``server/db/schema.sql`` is in the spec (whitespace aside)."""
    squash = lambda text: " ".join(text.split())  # noqa: E731
    spec = squash(SPEC.read_text(encoding="utf-8"))
    schema = (ROOT / "server" / "db" / "schema.sql").read_text(encoding="utf-8")
    statements = [s for s in schema.split(";") if "CREATE " in s and "alembic_version" not in s]
    assert statements
    for statement in statements:
        body = squash("\n".join(line for line in statement.splitlines() if not line.startswith("--")))
        assert body in spec, f"the spec's DDL is out of date (run the migration SQL again): {body[:80]}…"


def _error_codes() -> set[str]:
    codes = set(_HTTP_CODES.values()) | {"malformed_json", "invalid_request", "internal_error", "http_error"}
    for path in (ROOT / "server").rglob("*.py"):
        codes |= set(re.findall(r'code="([a-z_]+)"', path.read_text(encoding="utf-8")))

    def walk(cls: type[ApiError]) -> None:
        codes.add(cls.code)
        for sub in cls.__subclasses__():
            walk(sub)

    walk(ApiError)
    return codes


def test_every_error_code_is_in_the_spec() -> None:
    spec = SPEC.read_text(encoding="utf-8")
    missing = sorted(code for code in _error_codes() if f"`{code}`" not in spec)
    assert not missing, f"error codes the spec's error table does not list: {missing}"


def env_vars_read() -> set[str]:
    """Every PACS_MASK_* name: the settings' fields and every name written in the sources."""
    names = {ENV_PREFIX + field.upper() for field in Settings.model_fields}
    for folder in SOURCES:
        for path in (ROOT / folder).rglob("*.py"):
            names |= set(ENV_NAME.findall(path.read_text(encoding="utf-8")))
    return names


def readme_env_table() -> set[str]:
    """Names in the first cell of the README's markdown table rows."""
    if not README.exists():
        pytest.fail(
            "README.md does not exist yet: it must have an environment table (one row per variable, "
            f"the name in the first cell) listing {sorted(env_vars_read())}",
            pytrace=False,
        )
    names: set[str] = set()
    for line in README.read_text(encoding="utf-8").splitlines():
        if line.lstrip().startswith("|"):
            first = line.strip().strip("|").split("|")[0]
            names |= set(ENV_NAME.findall(first))
    return names


def test_every_environment_variable_is_in_the_readme_table() -> None:
    read = env_vars_read()
    assert ENV_PREFIX + "STORAGE" in read
    missing = sorted(read - readme_env_table())
    assert not missing, (
        f"environment variables read by the code but missing from README.md's table: {missing}"
    )


def test_operations_manual_covers_its_topics() -> None:
    text = OPERATIONS.read_text(encoding="utf-8").lower()
    for topic in (
        "postgresql",
        "minio",
        "reverse proxy",
        "tls",
        "alembic",
        "backup",
        "restore",
        "alerts",
        "expired",
        "partial upload",
        "stuck delete",
        "orphan",
        "logs",
        "change the s3 policy",
    ):
        assert topic in text, f"docs/operations.md does not cover {topic!r}"
    alerts = re.findall(r"alert: (\w+)", (ROOT / "deploy/prometheus/pacs-masks-alerts.yml").read_text())
    undocumented = [name for name in alerts if name.lower() not in text]
    assert not undocumented, f"alerts docs/operations.md does not explain: {undocumented}"
