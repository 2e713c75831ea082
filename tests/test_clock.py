"""The clock's synchronisation check: asked every ``check_interval_s`` all day long."""

from __future__ import annotations

import sys

from gateway.clock import kernel_synced

_watching: list[list[str]] = []  # audit hooks cannot be removed: this one notes while asked


def _note_processes(event: str, _args: tuple[object, ...]) -> None:
    if _watching and event in {"subprocess.Popen", "os.posix_spawn", "os.fork", "os.exec"}:
        _watching[-1].append(event)


sys.addaudithook(_note_processes)


def test_a_kernel_clock_check_starts_no_process() -> None:
    kernel_synced()  # the first check may look for the C library
    started: list[str] = []
    _watching.append(started)
    try:
        answers = {kernel_synced() for _ in range(3)}
    finally:
        _watching.clear()
    assert started == [] and len(answers) == 1
