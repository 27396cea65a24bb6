"""Import first in a command-line entry point: keeps libraries from loading parts the program never uses.

httpx imports its own command-line client (``httpx._main``: click, rich, pygments) whenever they are
installed, which they are here (rich for our tables). ``pacs-mask`` never calls ``httpx.main``; marking
the module absent makes httpx skip it (its ``__init__`` already falls back when that import fails).
Measured with ``python -X importtime -c "import httpx"`` on the 2-CPU dev machine: httpx._main was
40-45 % of httpx's import time (97-148 of 216-406 ms, under load). Importing this after httpx has no
effect.
"""

from __future__ import annotations

import sys

# None in sys.modules is the documented "import blocked" marker (ImportError on import), which the
# sys.modules type (values: ModuleType) does not admit.
sys.modules.setdefault("httpx._main", None)  # type: ignore[arg-type]
