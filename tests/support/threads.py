"""One call made from several threads at once, the interpreter switching between them as
often as it can: a count that is read, raised and written back without a lock loses some."""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable


def at_once(call: Callable[[], object], threads: int, each: int) -> None:
    """``call`` made ``each`` times on each of ``threads`` threads, started together."""
    start = threading.Barrier(threads)

    def run() -> None:
        start.wait()
        for _ in range(each):
            call()

    workers = [threading.Thread(target=run) for _ in range(threads)]
    switch = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        for t in workers:
            t.start()
        for t in workers:
            t.join()
    finally:
        sys.setswitchinterval(switch)
