"""``pacs-mask-server``: serve, migrate, create-token (and the operations jobs)."""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from server.db.prepare import prepare_database
from server.settings import settings_or_exit as _settings


def prepare_metrics_dir(workers: int) -> Path | None:
    """Set up prometheus-client's multiprocess directory; return it when this process created it.

    An operator's ``PROMETHEUS_MULTIPROC_DIR`` is used as given and emptied of an earlier run's files
    (stale files would add old counts). Otherwise several workers get a fresh temporary directory,
    exported to them through the environment and removed when the server stops.
    """
    from server.metrics import MULTIPROC_ENV

    existing = os.environ.get(MULTIPROC_ENV)
    if existing:
        directory = Path(existing)
        directory.mkdir(parents=True, exist_ok=True)
        for stale in directory.glob("*.db"):
            stale.unlink()
        return None
    if workers <= 1:
        return None
    directory = Path(tempfile.mkdtemp(prefix="pacs-mask-metrics-"))
    os.environ[MULTIPROC_ENV] = str(directory)
    return directory


def cmd_serve(args: argparse.Namespace) -> int:
    """Run the API with uvicorn (several workers share nothing but the database and storage)."""
    import uvicorn

    from server.db.session import Database
    from server.logs import configure_logging
    from server.services.tokens import ensure_local_admin_token

    settings = _settings()
    configure_logging(settings.log_level)
    prepare_database(settings)
    if settings.database_url is None:
        db = Database(settings.resolved_database_url)
        try:
            ensure_local_admin_token(db, settings.data_dir)
        finally:
            db.close()
    if settings.public_url is None:
        os.environ["PACS_MASK_PUBLIC_URL"] = f"http://{args.host}:{args.port}"
    from server.metrics import MULTIPROC_ENV

    metrics_dir = prepare_metrics_dir(args.workers)
    try:
        uvicorn.run(
            "server.asgi:app_from_env",
            factory=True,
            host=args.host,
            port=args.port,
            workers=args.workers,
            log_config=None,
            access_log=False,
            timeout_graceful_shutdown=10,
        )
    finally:
        if metrics_dir is not None:
            os.environ.pop(MULTIPROC_ENV, None)
            shutil.rmtree(metrics_dir, ignore_errors=True)
    return 0


def cmd_migrate(args: argparse.Namespace) -> int:
    """Upgrade (or downgrade) the configured database."""
    from server.db.migrate import current_revision, downgrade, upgrade

    settings = _settings()
    url = settings.resolved_database_url
    if args.downgrade:
        downgrade(url, args.downgrade)
    else:
        upgrade(url, args.revision)
    print(f"database is at revision {current_revision(url) or 'base'}")
    return 0


def cmd_create_token(args: argparse.Namespace) -> int:
    """Create an API user and print its token alone on stdout, once."""
    from server.db.session import Database
    from server.errors import ApiError
    from server.services.tokens import issue_token

    settings = _settings()
    prepare_database(settings)
    db = Database(settings.resolved_database_url)
    try:
        token = issue_token(db, args.name, args.role)
    except ApiError as exc:
        print(f"pacs-mask-server: {exc.message}", file=sys.stderr)
        return 1
    finally:
        db.close()
    print(token)
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface."""
    parser = argparse.ArgumentParser(
        prog="pacs-mask-server",
        description="The PACS mask upload server. Settings come from PACS_MASK_* environment variables.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the API server")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8765)
    serve.add_argument("--workers", type=int, default=1)
    serve.set_defaults(func=cmd_serve)

    migrate = sub.add_parser("migrate", help="upgrade the database schema")
    migrate.add_argument("--revision", default="head")
    migrate.add_argument("--downgrade", metavar="REVISION", help="downgrade to REVISION ('base' drops all)")
    migrate.set_defaults(func=cmd_migrate)

    token = sub.add_parser("create-token", help="create an API token and print it once")
    token.add_argument("--name", required=True)
    token.add_argument("--role", required=True, choices=["uploader", "reviewer", "admin"])
    token.set_defaults(func=cmd_create_token)

    from server.jobs.cli import add_job_commands

    add_job_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``pacs-mask-server``."""
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    raise SystemExit(main())
