"""Files that hold personal data are the gateway's alone, whatever the umask of whoever
started it (`gateway run` or `gateway enroll` by hand with 022): they are created private,
never created open and narrowed afterwards, so no other user can open them in between."""

from __future__ import annotations

import os
from pathlib import Path


def private_dir(path: Path) -> None:
    """Create the directory (and missing parents) 0700; an existing one is left as it is."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)


def touch_private(path: Path) -> None:
    """Create the file empty and 0600 if it does not exist yet. SQLite gives a database's
    -wal and -shm files the database file's mode, so this covers them too."""
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))
