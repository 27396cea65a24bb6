"""``pacs-mask-desktop`` / ``python -m pacs_mask_desktop``: start the desktop app.

Flags:
  --demo              create the demo data once (a 120-slice CT, masks, an annotation) and open it
  --server URL        use this server instead of the bundled one (saved settings apply otherwise)
  --token TOKEN       API token for --server
  --screenshot PATH   (scripts) save a picture of the window once it is ready, then quit
  --run-server        the frozen app's child mode: run the bundled server (see ``core.embedded``)
  --self-test         headless check of an installed or frozen build (``pacs_mask_desktop.selftest``)

This is the one module of the desktop package allowed to import ``server``: a PyInstaller build has
no separate Python to run ``-m server``, so the app binary serves when started with --run-server.
"""

from __future__ import annotations

import argparse
import logging
import logging.handlers
import os
import sys
import threading
import traceback
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

from pacs_mask_desktop import __version__
from pacs_mask_desktop.core.embedded import RUN_SERVER_FLAG
from pacs_mask_desktop.core.paths import log_dir, private_dir

log = logging.getLogger("pacs_mask_desktop")

LOG_FILE = "desktop.log"
LOG_BYTES = 5 * 1024 * 1024
LOG_BACKUPS = 5
WINDOW_SIZE = (1600, 1000)


def build_parser() -> argparse.ArgumentParser:
    """The desktop app's command line."""
    parser = argparse.ArgumentParser(prog="pacs-mask-desktop", description="PACS Mask Upload desktop app.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--demo", action="store_true", help="create the demo data once and open it")
    parser.add_argument("--server", metavar="URL", help="server URL (default: the bundled server)")
    parser.add_argument("--token", help="API token for --server")
    parser.add_argument(
        "--screenshot", metavar="PATH", type=Path, help="save the ready window as PNG and quit"
    )
    parser.add_argument(
        "--self-test", dest="self_test", action="store_true", help="check this build headlessly and exit"
    )
    parser.add_argument(RUN_SERVER_FLAG, dest="run_server", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--host", default="127.0.0.1", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=8765, help=argparse.SUPPRESS)
    return parser


def run_server(host: str, port: int) -> int:
    """Frozen child mode: serve the bundled server in this process."""
    from server.cli import main as server_main

    return int(server_main(["serve", "--host", host, "--port", str(port)]))


def configure_logging() -> Path:
    """Log to a rotating file in the user log dir (and warnings to stderr when there is one)."""
    folder = private_dir(log_dir())  # log lines can name patients and series
    path = folder / LOG_FILE
    if path.exists():
        path.chmod(0o600)  # an older version's log may have been created readable by others
    handler = logging.handlers.RotatingFileHandler(
        path, maxBytes=LOG_BYTES, backupCount=LOG_BACKUPS, encoding="utf-8"
    )
    handler.setFormatter(
        logging.Formatter("%(asctime)s %(levelname)-7s [%(threadName)s] %(name)s: %(message)s")
    )
    root = logging.getLogger()
    root.setLevel(logging.INFO)
    root.addHandler(handler)
    if sys.stderr is not None:
        console = logging.StreamHandler()
        console.setLevel(logging.WARNING)
        console.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        root.addHandler(console)
    for noisy in ("httpx", "httpcore", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    return path


def _install_error_hooks(log_path: Path) -> None:
    """Unexpected exceptions are logged with their traceback; the user sees one clear sentence."""
    from PySide6.QtCore import QtMsgType, qInstallMessageHandler
    from PySide6.QtWidgets import QApplication, QMainWindow

    from pacs_mask_desktop.ui import dialogs

    def hook(kind: type[BaseException], error: BaseException, tb: TracebackType | None) -> None:
        log.error("unexpected error:\n%s", "".join(traceback.format_exception(kind, error, tb)))
        app = QApplication.instance()
        if app is None or threading.current_thread() is not threading.main_thread():
            return
        window = next((w for w in QApplication.topLevelWidgets() if isinstance(w, QMainWindow)), None)
        if window is not None:
            window.statusBar().showMessage(f"Unexpected error: {error}. Details are in {log_path}", 15000)
            dialogs.show_error(
                window,
                "Unexpected error",
                f"{kind.__name__}: {error}\n\nThe details are in the log file:\n{log_path}",
            )

    sys.excepthook = hook
    threading.excepthook = lambda args: log.error(
        "unexpected error in thread %s:\n%s",
        args.thread.name if args.thread else "?",
        "".join(traceback.format_exception(args.exc_type, args.exc_value, args.exc_traceback)),
    )
    levels = {
        QtMsgType.QtDebugMsg: logging.DEBUG,
        QtMsgType.QtInfoMsg: logging.INFO,
        QtMsgType.QtWarningMsg: logging.WARNING,
        QtMsgType.QtCriticalMsg: logging.ERROR,
        QtMsgType.QtFatalMsg: logging.CRITICAL,
    }
    qt_log = logging.getLogger("qt")
    qInstallMessageHandler(
        lambda kind, _context, message: qt_log.log(levels.get(kind, logging.INFO), message)
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``pacs-mask-desktop``."""
    args = build_parser().parse_args(list(argv) if argv is not None else sys.argv[1:])
    # Everything the app and its bundled server write (database, logs, DICOM cache, journal, exported
    # SEGs) holds patient data: readable by this user only, whatever the session's umask.
    os.umask(0o077)
    if args.run_server:
        return run_server(args.host, args.port)
    if args.self_test:
        from pacs_mask_desktop.selftest import run_self_test

        return int(run_self_test())

    log_path = configure_logging()
    log.info("PACS Mask Upload %s starting (Python %s)", __version__, sys.version.split()[0])

    from PySide6.QtCore import QTimer
    from PySide6.QtWidgets import QApplication

    from pacs_mask_desktop.ui.main_window import MainWindow
    from pacs_mask_desktop.ui.resources import apply_theme
    from pacs_mask_desktop.ui.settings import APPLICATION, ORGANIZATION, load_server_config

    app = QApplication.instance() or QApplication([sys.argv[0] if sys.argv else "pacs-mask-desktop"])
    assert isinstance(app, QApplication)
    app.setOrganizationName(ORGANIZATION)
    app.setApplicationName(APPLICATION)
    app.setApplicationDisplayName("PACS Mask Upload")
    app.setApplicationVersion(__version__)
    apply_theme(app)
    _install_error_hooks(log_path)

    config = load_server_config(args.server, args.token)
    if config.notice:  # the token could not go to a keyring: say what happens to it
        log.warning("%s", config.notice)
    window = MainWindow(config)
    screen = app.primaryScreen()
    if screen is not None and args.screenshot is None:
        room = screen.availableGeometry()
        window.resize(min(WINDOW_SIZE[0], room.width()), min(WINDOW_SIZE[1], room.height()))
    else:
        window.resize(*WINDOW_SIZE)
    window.show()

    def after_connect(_url: str) -> None:
        if args.demo:
            window.load_demo()
        else:
            window.check_unfinished_uploads()
            if args.screenshot is not None:
                QTimer.singleShot(800, save_and_quit)

    def after_demo(_demo: object) -> None:
        window.check_unfinished_uploads()
        if args.screenshot is not None:
            QTimer.singleShot(800, save_and_quit)

    def save_and_quit() -> None:
        path: Path = args.screenshot
        path.parent.mkdir(parents=True, exist_ok=True)
        window.grab().save(str(path))
        log.info("screenshot saved to %s", path)
        window.close()

    def after_failure(_message: str) -> None:
        if args.screenshot is not None:  # a script waiting for a picture must not hang
            QTimer.singleShot(800, save_and_quit)

    window.connected.connect(after_connect)
    window.connection.failed.connect(after_failure)
    if config.notice:
        QTimer.singleShot(1500, lambda: window.status(config.notice))
    window.demoReady.connect(after_demo)
    window.start()
    code = app.exec()
    log.info("exiting with %s", code)
    return int(code)


if __name__ == "__main__":
    raise SystemExit(main())
