"""Patient data at rest is readable by the server's user only: folders 0700, files 0600, whatever the umask.

The data folder, the embedded database, the local object store, the signing key and the admin token
all hold patient data or secrets; each is created through these so a permissive umask (022 is common)
never leaves one readable by other users of the machine.
"""

from __future__ import annotations

import os
from pathlib import Path

FOLDER_MODE = 0o700
FILE_MODE = 0o600


def private_folder(folder: Path, *, parents: bool = False) -> None:
    """Create ``folder`` with exactly 0700 when it is missing; an existing folder is left as it is (an
    operator may have set its mode on purpose). With ``parents``, missing parents are created as
    ``Path.mkdir`` creates them (they are the user's own folders, such as ``~/.local/share``)."""
    try:
        folder.mkdir(mode=FOLDER_MODE, parents=parents, exist_ok=False)
    except FileExistsError:
        if not folder.is_dir():  # a file, or a link to nothing: say so here, not at the first write in it
            raise NotADirectoryError(f"{folder} exists and is not a folder") from None
        return
    if os.name != "nt":  # Windows has no such modes: the user's profile folder keeps the data private
        os.chmod(folder, FOLDER_MODE)  # mkdir's mode is masked by the umask; this is exactly 0700
