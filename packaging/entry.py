"""Entry script of the frozen build: the desktop app (and its ``--run-server`` / ``--self-test`` modes)."""

from pacs_mask_desktop.app import main

raise SystemExit(main())
