"""Command-line values checked where they are typed: a negative count or a NaN interval is
refused by name (exit 2), not run as a loop that never sleeps or a tool that does nothing."""

from __future__ import annotations

import argparse
import math


def whole(text: str, least: int = 1) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < least:
        raise argparse.ArgumentTypeError(f"must be {least} or more, not {value}")
    return value


def at_least_one(text: str) -> int:
    return whole(text, 1)


def zero_or_more(text: str) -> int:
    return whole(text, 0)


def tcp_port(text: str) -> int:
    value = at_least_one(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"must be a port number up to 65535, not {value}")
    return value


def number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None


def positive(text: str) -> float:
    value = number(text)
    if not 0 < value < math.inf:  # NaN is refused too
        raise argparse.ArgumentTypeError(f"must be above 0, not {text}")
    return value


def not_negative(text: str) -> float:
    value = number(text)
    if not 0 <= value < math.inf:
        raise argparse.ArgumentTypeError(f"must be 0 or more, not {text}")
    return value


def rate(text: str) -> float:
    value = number(text)
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1 (e.g. 1e-3), not {text}")
    return value
