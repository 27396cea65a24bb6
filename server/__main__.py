"""``python -m server``: the same as ``pacs-mask-server``."""

from server.cli import main

raise SystemExit(main())
