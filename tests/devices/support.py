"""Real serial ports for tests: pty pairs behind a symlink that can be re-pointed (unplug);
and a real store whose commits fail for a while."""

from __future__ import annotations

import os
import select
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from gateway.devices.link import SerialSettings, SoftwareParity
from gateway.store import Store


class Pty:
    """A pty pair; the gateway opens ``path`` (a symlink to the slave), the test drives
    the master side. ``unplug`` removes ``path`` and closes both ends, ``replug`` makes a new
    pair at ``path``."""

    def __init__(self, path: Path, fmt: str = "8N1") -> None:
        self.path = path
        self.parity = SoftwareParity(SerialSettings(9600, fmt))
        self.master = -1
        self._slave = -1
        self.replug()

    def replug(self) -> None:
        self.master, self._slave = os.openpty()
        tmp = self.path.with_suffix(".new")
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(os.ttyname(self._slave))
        tmp.replace(self.path)

    def unplug(self) -> None:
        """The path goes with the pair, as a pulled adapter's /dev/serial/by-id link does: left
        behind, it names a freed pty number that the next pty made on the machine, another
        process's, is given, and the gateway would reopen that one."""
        self.path.unlink(missing_ok=True)
        for fd in (self.master, self._slave):
            os.close(fd)
        self.master = self._slave = -1

    def close(self) -> None:
        if self.master >= 0:
            self.unplug()

    def write(self, data: bytes, /) -> int:
        return os.write(self.master, self.parity.encode(data))

    def write_raw(self, data: bytes) -> int:
        return os.write(self.master, data)

    def read(self, size: int = 1, /, timeout: float = 3.0) -> bytes:
        ready, _, _ = select.select([self.master], [], [], timeout)
        if not ready:
            return b""
        return self.parity.decode(os.read(self.master, size))

    def reset_input_buffer(self) -> None:
        while select.select([self.master], [], [], 0)[0]:
            os.read(self.master, 4096)


@contextmanager
def failing_inserts(store: Store) -> Iterator[None]:
    """Inside the block every event insert fails in SQLite itself, and the writer hands the raw
    error on (not StorageFull), as it would a disk I/O error."""
    store.write(
        lambda conn: conn.execute(
            "CREATE TEMP TRIGGER fail_insert BEFORE INSERT ON events "
            "BEGIN SELECT RAISE(ABORT, 'disk I/O error'); END"
        )
    ).result(5)
    try:
        yield
    finally:
        store.write(lambda conn: conn.execute("DROP TRIGGER temp.fail_insert")).result(5)
