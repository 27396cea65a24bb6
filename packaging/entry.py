"""Entry script of the frozen build: one executable, three programs.

* ``pacs-mask`` (the headless CLI) when the executable is started under that name (a symlink such as
  the Debian package's ``/usr/bin/pacs-mask``) or with ``--cli`` as its first argument (Windows and
  macOS, where a second name costs a copy);
* otherwise the desktop app, with its ``--run-server`` (the embedded server child) and ``--self-test``
  modes (``pacs_mask_desktop.app``).
"""

import os
import sys

CLI_NAMES = {"pacs-mask", "pacs-mask.exe"}


def _wants_cli(argv: list[str]) -> bool:
    """True when this process should be the ``pacs-mask`` CLI (and drop a leading ``--cli``)."""
    if len(argv) > 1 and argv[1] == "--cli":
        del argv[1]
        return True
    return os.path.basename(argv[0]).lower() in CLI_NAMES if argv else False


if _wants_cli(sys.argv):
    from pacs_mask_desktop.cli import main as cli_main

    sys.argv[0] = "pacs-mask"
    raise SystemExit(cli_main(sys.argv[1:]))

from pacs_mask_desktop.app import main  # noqa: E402 - only the desktop needs Qt

raise SystemExit(main())
