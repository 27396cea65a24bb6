"""Job subcommands of ``pacs-mask-server``: ``validate``, ``cleanup`` and ``init-storage``.

Exit codes: 0 all good; 1 something is wrong (validate found errors, a cleanup action failed, an
init-storage part failed or a part asked for explicitly is not implemented); 2 bad settings or
arguments; 3 the database or storage could not be reached.
Reports go to stdout (readable, or JSON with ``--json``); job events go to stderr as JSON log lines.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from server.context import AppParts
    from server.settings import Settings


def _settings() -> Settings:
    from server.settings import settings_or_exit

    return settings_or_exit()


def _print(result: Any, as_json: bool) -> None:
    if as_json:
        print(json.dumps(result.to_dict(), indent=2, default=str))
    else:
        print(result.render_text())


def _fail(message: str, code: int) -> int:
    print(f"pacs-mask-server: {message}", file=sys.stderr)
    return code


def _run_job(args: argparse.Namespace, job: Callable[[AppParts], Any]) -> int:
    """Open the database and storage, run ``job``, print its result; map failures to exit codes."""
    from sqlalchemy.exc import DBAPIError

    from server.db.prepare import prepare_database
    from server.errors import ApiError
    from server.jobs.common import close_parts, open_parts
    from server.logs import configure_logging
    from server.storage.base import StorageError

    settings = _settings()
    configure_logging(settings.log_level)
    try:
        prepare_database(settings)
        parts = open_parts(settings)
    except DBAPIError as exc:
        return _fail(f"the database cannot be reached: {type(exc.orig).__name__}: {exc.orig}", 3)
    except StorageError as exc:
        return _fail(f"storage: {exc}", 3)
    try:
        result = job(parts)
    except ApiError as exc:
        return _fail(exc.message, 2)
    except StorageError as exc:
        return _fail(f"storage could not be read, nothing was done: {exc}", 3)
    except DBAPIError as exc:
        return _fail(f"the database failed, nothing was done: {type(exc.orig).__name__}: {exc.orig}", 3)
    finally:
        close_parts(parts)
    _print(result, args.json)
    return 0 if result.ok else 1


def cmd_validate(args: argparse.Namespace) -> int:
    """Check the database against storage; exit 1 when something is wrong."""
    from server.errors import ApiError
    from server.jobs.validate import validate
    from server.services.mask_groups import parse_group_id

    try:
        group_id = parse_group_id(args.group) if args.group else None
    except ApiError as exc:
        return _fail(exc.message, 2)
    return _run_job(args, lambda parts: validate(parts.db, parts.storage, parts.settings, group_id=group_id))


def cmd_cleanup(args: argparse.Namespace) -> int:
    """Show (or with --apply, carry out) the repairs for what validate finds."""
    from server.jobs.cleanup import cleanup

    return _run_job(args, lambda parts: cleanup(parts, apply=args.apply, remove_broken=args.remove_broken))


def cmd_init_storage(args: argparse.Namespace) -> int:
    """Create the bucket, apply CORS and lifecycle rules, and report what is in force."""
    from server.jobs.storage_setup import init_storage
    from server.logs import configure_logging
    from server.storage.base import StorageError

    settings = _settings()
    configure_logging(settings.log_level)
    try:
        result = init_storage(
            settings,
            cors=args.cors,
            expire_pending_days=args.expire_pending_days,
            abort_multipart_days=args.abort_multipart_days,
        )
    except StorageError as exc:
        return _fail(f"storage: {exc}", 3)
    _print(result, args.json)
    return 0 if result.ok else 1


def _days(value: str) -> int:
    days = int(value)
    if days < 1:
        raise argparse.ArgumentTypeError("must be a whole number of days, at least 1")
    return days


def add_job_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register the job subcommands on the server's parser."""
    validate = sub.add_parser(
        "validate",
        help="check every complete group's slices and objects, orphans, stale and stuck groups",
        description="Compare the database with storage. Exit 0 when nothing is wrong, 1 when something is.",
    )
    validate.add_argument(
        "--group", metavar="ID", help="check one group only (and only its prefix for orphans)"
    )
    validate.add_argument("--json", action="store_true", help="print the report as JSON")
    validate.set_defaults(func=cmd_validate)

    clean = sub.add_parser(
        "cleanup",
        help="repair what validate finds (dry run unless --apply)",
        description="Remove stale pending groups, orphan objects and broken groups, finish stuck deletes. "
        "Prints the plan without changing anything unless --apply is given. Every change is audited.",
    )
    clean.add_argument("--apply", action="store_true", help="carry out the actions (default: dry run)")
    clean.add_argument(
        "--remove-broken",
        action="store_true",
        help="also remove complete groups with missing or corrupt objects (destroys their intact slices; "
        "their slice list stays in the audit log)",
    )
    clean.add_argument("--json", action="store_true", help="print the result as JSON")
    clean.set_defaults(func=cmd_cleanup)

    init = sub.add_parser(
        "init-storage",
        help="create the S3 bucket, apply CORS and lifecycle rules, report what is in force",
        description="Idempotent. A part asked for explicitly (--cors, --expire-pending-days, "
        "--abort-multipart-days) fails the run when the storage server does not implement it.",
    )
    cors = init.add_mutually_exclusive_group()
    cors.add_argument(
        "--cors",
        dest="cors",
        action="store_true",
        default=None,
        help="require CORS (origins from PACS_MASK_CORS_ORIGINS); default: apply when origins are set",
    )
    cors.add_argument("--no-cors", dest="cors", action="store_false", help="leave CORS as it is")
    init.add_argument(
        "--expire-pending-days",
        type=_days,
        metavar="N",
        help="expire objects of groups never completed after N days (objects tagged pacs-mask-state=pending)",
    )
    init.add_argument(
        "--abort-multipart-days",
        type=_days,
        metavar="N",
        help="abort multipart uploads left incomplete for N days",
    )
    init.add_argument("--json", action="store_true", help="print the result as JSON")
    init.set_defaults(func=cmd_init_storage)
