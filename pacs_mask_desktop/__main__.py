"""``python -m pacs_mask_desktop``: the same as ``pacs-mask-desktop``."""

from pacs_mask_desktop.app import main

raise SystemExit(main())
