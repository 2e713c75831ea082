"""Data keys: 32 random bytes in a file of their own, readable by the gateway user only.

A key never goes into the database it protects, so a copied database (a backup, a file sent
for support) reveals nothing without it. It protects against a pulled SD card only where the
configuration puts the key on other storage. Keys for different purposes (face templates,
audit frames, the journal's event data) are derived with HKDF, so that one cannot be used
to forge another.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
import time
from pathlib import Path

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from gateway.private import (
    ExposedDirectory,
    private_dir,
    run_as,
    sync_dir,
    user_name,
    write_aside,
)

KEY_BYTES = 32


class KeyFileError(Exception):
    """A key file that is missing, exposed, foreign or malformed."""


def create_key(path: Path) -> None:
    """Write a new key with mode 0600; never overwrite an existing one (that loses the data).
    If another process created it first (the face stage and a platform enrolment at first
    boot), theirs stays. The key is written aside and linked into place whole, so nobody
    reads a half-written key."""
    try:
        private_dir(path.parent)
        aside = write_aside(path, secrets.token_bytes(KEY_BYTES))
        try:
            with contextlib.suppress(FileExistsError):
                os.link(aside, path)
        finally:
            aside.unlink(missing_ok=True)
        # the key's name on disk before anything is written under it: a power cut must not
        # leave data behind whose key never reached the card
        sync_dir(path.parent)
    except ExposedDirectory as exc:
        raise KeyFileError(f"data key directory {exc.strerror}") from None
    except OSError as exc:  # a folder not writable (not in the unit's ReadWritePaths=), a file
        raise KeyFileError(f"{path}: cannot create the data key: {exc.strerror or exc}") from None


def read_key(path: Path) -> bytes:
    try:
        st = path.stat()
    except FileNotFoundError:
        raise KeyFileError(f"{path}: data key not found") from None
    if not stat.S_ISREG(st.st_mode):
        raise KeyFileError(f"{path}: the data key must be a file, this is not one")
    if st.st_uid not in (os.geteuid(), 0):  # planted by another user, who has a copy
        raise KeyFileError(f"{path}: key file belongs to another user, {_foreign_owner(st.st_uid)}")
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise KeyFileError(
            f"{path}: key file is accessible to other users "
            f"(mode {stat.S_IMODE(st.st_mode):04o}); run chmod 600 on it"
        )
    try:
        data = path.read_bytes()
    except PermissionError:  # root's, 0600, and the gateway runs as its own user
        raise KeyFileError(
            f"{path}: key file belongs to {user_name(st.st_uid)} and cannot be read by "
            f"{user_name(os.geteuid())}: chown it to the user the gateway runs as"
        ) from None
    if len(data) != KEY_BYTES:
        raise KeyFileError(f"{path}: key file must hold {KEY_BYTES} bytes, found {len(data)}")
    return data


def _foreign_owner(uid: int) -> str:
    """What to do about a key of another user's. Run by root (an installer's sudo), it is the
    service user's own key: removing or taking it would strand what it encrypts, so the
    advice is to run the command as that user."""
    name = user_name(uid)
    if os.geteuid() == 0:
        return (
            f"{name} (uid {uid}), not root: run this command as that user "
            f"({run_as(uid)} ...), as the service does; keep the key as it is"
        )
    return f"{name} (uid {uid}), not the gateway's; remove it, or chown it if it is the right key"


def derive(master: bytes, purpose: str) -> bytes:
    return HKDF(
        algorithm=hashes.SHA256(), length=KEY_BYTES, salt=None, info=purpose.encode()
    ).derive(master)


def emptied_beside_key(data: Path, key: Path, *, created_within_s: float) -> float | None:
    """The key's age in seconds if ``data`` is a file of zero bytes, or no file, beside a key
    older than ``created_within_s``: the file was emptied or lost (a bad copy or restore, a
    full disk, fsck moving it to lost+found), and opened as it is it would become a new, empty
    file under the old key without a word. A file is empty or missing only while it is
    created, when its key is at most ``created_within_s`` old or not made yet. None otherwise.
    A key dated ahead of the clock (a Pi without RTC set back by a power cut) is as old as
    that distance: not one just made."""
    try:
        made = key.stat()
    except OSError:
        return None
    if not stat.S_ISREG(made.st_mode):
        return None  # no key: what is wrong with it is said when it is read
    key_age = abs(time.time() - made.st_mtime)
    try:
        empty = data.stat().st_size == 0
    except FileNotFoundError:
        empty = True
    except OSError:
        return None
    return key_age if empty and key_age > created_within_s else None
