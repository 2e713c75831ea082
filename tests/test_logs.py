from __future__ import annotations

import io
import logging
from collections.abc import Iterator

import pytest

from gateway.logs import OneLineFilter, RateLimitedLog, RedactFilter
from tests.support.threads import at_once


@pytest.fixture
def logged() -> Iterator[tuple[logging.Logger, io.StringIO]]:
    """A logger with the filters ``setup_logging`` gives the gateway's handler."""
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    handler.addFilter(RedactFilter(["s3cret-pw"]))
    handler.addFilter(OneLineFilter())
    log = logging.getLogger("gateway.test-logs")
    log.addHandler(handler)
    log.propagate = False
    try:
        yield log, out
    finally:
        log.removeHandler(handler)
        log.propagate = True


def test_a_secret_that_reaches_a_log_line_is_masked(
    logged: tuple[logging.Logger, io.StringIO],
) -> None:
    log, out = logged
    log.warning("connect failed for %s", "user:s3cret-pw@broker")
    assert "user:***@broker" in out.getvalue()


def test_text_from_outside_cannot_forge_a_log_line(
    logged: tuple[logging.Logger, io.StringIO],
) -> None:
    """A request's field echoed in an error: its line breaks and terminal codes are escaped."""
    log, out = logged
    forged = "abc\nCRITICAL gateway.app: FORGED\r\x1b[2J\u2028\tend"
    log.warning("refused: %s", forged)
    try:
        raise ValueError("boom")
    except ValueError:
        log.exception("with a traceback")
    lines = out.getvalue().splitlines()
    assert lines[0] == (
        "WARNING gateway.test-logs: refused: abc\\nCRITICAL gateway.app: FORGED\\r\\x1b[2J\\u2028"
        "\tend"
    )
    assert not any(line.startswith("CRITICAL") for line in lines)
    assert "Traceback (most recent call last):" in lines  # a traceback keeps its lines


def _suppressed_at_once(log: logging.Logger, out: io.StringIO, threads: int, each: int) -> str:
    """The line that ends a spell of the same problem reported on several threads at once."""
    now = [0.0]
    limited = RateLimitedLog(log, 30.0, now=lambda: now[0])
    limited.warning("port:store", "could not store")
    at_once(lambda: limited.warning("port:store", "could not store"), threads, each)
    now[0] = 30.0
    out.seek(0)
    out.truncate()
    limited.warning("port:store", "could not store")
    return out.getvalue()


def test_a_problem_suppressed_on_several_threads_at_once_says_how_often(
    logged: tuple[logging.Logger, io.StringIO],
) -> None:
    """One limiter serves every port: a port's reader thread and the store's writer thread
    (settling what it could not store) report the same problem at once, and the line after
    the spell counts every report it held back. Several rounds, as thread switches can fall
    into step with the loop."""
    log, out = logged
    threads, each, rounds = 4, 20_000, 5
    line = f"WARNING gateway.test-logs: could not store ({threads * each} similar suppressed)\n"
    assert [_suppressed_at_once(log, out, threads, each) for _ in range(rounds)] == [line] * rounds
