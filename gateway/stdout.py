"""A command's output piped into a reader that stops early (``gateway decode ... | head``):
the reader has what it wanted, so the command ends quietly with a shell's SIGPIPE status, as
other command-line tools do, not with a traceback or an error about its own output."""

from __future__ import annotations

import os
import select
import sys

EXIT_PIPE = 141  # 128 + SIGPIPE, what a shell reports for a tool its pipe's reader left


def reader_gone(exc: BaseException) -> bool:
    """Whether ``exc`` is a write to standard output whose reader has closed the pipe; a
    socket or serial port that broke is a failure to report, not this."""
    return isinstance(exc, BrokenPipeError) and stdout_closed()


def stdout_closed() -> bool:
    """Whether standard output is a pipe whose reader has closed it: for a command that may
    write nothing for long (a counter nobody stands at), which would otherwise only find
    out at its next line."""
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):
        return False
    poll = select.poll()
    poll.register(fd, select.POLLOUT)
    return any(events & select.POLLERR for _, events in poll.poll(0))


def discard() -> None:
    """What is still buffered for standard output, and the flush at exit, go nowhere instead
    of failing again."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
