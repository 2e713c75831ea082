"""Files that hold personal data are the gateway's alone, whatever the umask of whoever
started it (`gateway run` or `gateway enroll` by hand with 022): they are created private,
never created open and narrowed afterwards, so no other user can open them in between. Nor
are they opened through a link: whoever can plant one in the data directory could otherwise
have a gateway run as root write over any file."""

from __future__ import annotations

import contextlib
import errno
import grp
import os
import pwd
import stat
import threading
import time
from pathlib import Path

LEFTOVER_AGE_S = 60.0  # a copy aside younger than this may be another writer's, at work
WRITING_S = 5.0  # ... and one younger than this even when its writer seems gone


class ExposedDirectory(OSError):
    """A directory the gateway's private files must not go in: other users may write to it
    (they could swap the gateway's key or databases for their own), or, run as root, it is
    another user's, the service's (who could not read the files root made there, 0600)."""

    def __str__(self) -> str:
        return str(self.strerror)


def user_name(uid: int) -> str:
    """The user's name for messages; the number when the system has no name for it."""
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def run_as(uid: int) -> str:
    """How to run a command as that user: sudo takes a bare number only as '#uid'."""
    name = user_name(uid)
    return f"sudo -u {name}" if name != str(uid) else f"sudo -u '#{uid}'"


def private_dir(path: Path) -> None:
    """Create the directory, and each missing parent, 0700 (``mkdir(parents=True)`` would
    give the parents the umask's mode). An existing one that others may write to is refused."""
    missing = []
    at = path
    while not os.path.lexists(at) and at != at.parent:
        missing.append(at)
        at = at.parent
    for directory in reversed(missing):
        with contextlib.suppress(FileExistsError):
            directory.mkdir(mode=0o700)
    st = path.stat()
    if not stat.S_ISDIR(st.st_mode):
        raise FileExistsError(errno.EEXIST, "exists and is not a directory", str(path))
    mode = stat.S_IMODE(st.st_mode)
    others = stat.S_IWOTH | (0 if _private_group(st) else stat.S_IWGRP)
    if mode & others:
        raise ExposedDirectory(
            0, f"{path} may be written by other users (mode {mode:04o}): run chmod 700 on it"
        )
    if os.geteuid() == 0 and st.st_uid != 0:
        name = user_name(st.st_uid)
        raise ExposedDirectory(
            0,
            f"{path} belongs to {name} (uid {st.st_uid}), not root: run this as that user "
            f"({run_as(st.st_uid)} ...), as the service does",
        )


def _private_group(st: os.stat_result) -> bool:
    """The owner's own group with nobody else in it (a umask of 002 gives such directories
    group write): group write then lets no other user in."""
    try:
        group = grp.getgrgid(st.st_gid)
        owner = pwd.getpwuid(st.st_uid)
    except KeyError:
        return False
    return owner.pw_gid == st.st_gid and not group.gr_mem


def open_private(path: Path, flags: int) -> int:
    """Open (creating it 0600) a private file, never through a symbolic link."""
    return os.open(path, flags | os.O_CREAT | os.O_NOFOLLOW, 0o600)


def refuse_link(path: Path) -> None:
    """SQLite opens a database through a symbolic link, and its schema, rows, -wal and -shm
    then go to the file the link names, with that file's mode, in that file's directory:
    raises OSError (ELOOP) for a database path that is a link."""
    if path.is_symlink():
        raise OSError(
            errno.ELOOP,
            "is a symbolic link, which the gateway never writes through: configure the real "
            "path in the config instead",
            str(path),
        )


def touch_private(path: Path) -> None:
    """Create the file empty and 0600 if it does not exist yet. SQLite gives a database's
    -wal and -shm files the database file's mode, so this covers them too."""
    os.close(open_private(path, os.O_WRONLY))


def narrow_private(path: Path) -> None:
    """An existing file made the gateway's alone: a database written by an older version
    (0644), or copied in under a umask of 022. A file that is not there, or not the
    gateway's to change, is left as it is; never through a link."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return
    try:
        mode = stat.S_IMODE(os.fstat(fd).st_mode)
        if mode & 0o077:
            with contextlib.suppress(PermissionError):
                os.fchmod(fd, mode & 0o700)
    finally:
        os.close(fd)


def sync_dir(path: Path) -> None:
    """A file's new name reaches the card only with its directory: without this, a power
    cut can bring back the old file, or none, though the new one was synced."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_aside(path: Path, data: bytes, aside: Path | None = None) -> Path:
    """``data`` written and synced to a private sibling of ``path`` (by default this writer's
    own: the counter and an erasure may write at once), never through a link; returns it.
    Raises OSError (a full disk) with nothing left beside ``path``."""
    aside = aside or path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}")
    aside.unlink(missing_ok=True)  # left by a crash (or planted: never written through)
    fd = open_private(aside, os.O_WRONLY | os.O_EXCL)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
    except BaseException:
        aside.unlink(missing_ok=True)
        raise
    return aside


def remove_leftovers(path: Path, *patterns: str) -> None:
    """Copies of ``path`` that a crash left between ``write_aside`` and the rename (and those
    matching ``patterns``): in a file that names elders, they would name them after an erasure.
    A copy whose writer (the process its name gives) is gone goes once it is a few seconds
    old: systemd restarts the gateway within seconds, and nothing may write that file again
    for weeks. Any other only after a minute: its writer may be at work. A copy far ahead of
    the clock is old too: the clock was set back since (a Pi without RTC after a power cut,
    NTP stepping back a clock that ran ahead)."""
    now_s = time.time()
    found = [path.parent.glob(f".{path.name}.*"), *(path.parent.glob(p) for p in patterns)]
    for stale in [p for matches in found for p in matches]:
        with contextlib.suppress(OSError):
            age = abs(now_s - stale.lstat().st_mtime)
            # a writer in another PID namespace (a container) looks gone: its copy lives for
            # milliseconds between write and rename, so one that is seconds old is left
            if age > LEFTOVER_AGE_S or (age > WRITING_S and _writer_gone(stale, path)):
                stale.unlink()


def _writer_gone(copy: Path, path: Path) -> bool:
    """Whether ``write_aside``'s copy names a process that no longer runs."""
    pid = copy.name.removeprefix(f".{path.name}.").split(".")[0]
    if not (pid.isascii() and pid.isdigit() and len(pid) <= 9) or int(pid) == os.getpid():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except OSError:  # another user's: it runs
        return False
    return False


def replace_private(path: Path, data: bytes, aside: Path | None = None) -> None:
    """Replace the file whole: after a power cut it holds the old content or the new, never
    a part of either. Raises OSError (a full disk) with ``path`` as it was."""
    written = write_aside(path, data, aside)
    try:
        os.replace(written, path)
    except BaseException:
        written.unlink(missing_ok=True)
        raise
    sync_dir(path.parent)
