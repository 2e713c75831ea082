"""JSON that comes from outside (the platform's requests, other gateways' status, BLE
gateways' lines), refused before it can nest deep enough to exhaust the stack.

``json.loads`` recurses once per level and raises RecursionError near the interpreter's limit;
by then the stack is so deep that a finalizer the garbage collector runs meanwhile fails too,
unseen. What the gateway is sent never needs more than a few levels, so deeper text is turned
away by a scan that does not recurse, with a ValueError like any other text that is not JSON.
"""

from __future__ import annotations

import json
import re
from typing import Any

import numpy as np

MAX_DEPTH = 32  # requests and device lines use 4 or 5 levels
# Brackets inside strings do not nest. A string never closed runs to the end of the text, as
# json.loads reads it (and stops there): were it left unmatched, the search would start again
# at each later quote and scan to the end each time, hours for a request of escaped quotes.
_STRING = re.compile(r'"[^"\\]*+(?:\\.[^"\\]*+)*+"?', re.DOTALL)
_OTHER_BYTES = bytes(b for b in range(256) if b not in b"[]{}")
_CHUNK = 1 << 20


def too_deep(text: str, limit: int = MAX_DEPTH) -> bool:
    """Whether arrays and objects nest more than ``limit`` levels anywhere in ``text``.
    Vectorised, a chunk at a time: 4 MiB of brackets take about a tenth of a second, less
    than json.loads, and a few MB of memory, not 4 bytes for each bracket."""
    if text.count("[") + text.count("{") <= limit:
        return False
    bare = _STRING.sub("", text).encode("utf-8", "surrogatepass").translate(None, _OTHER_BYTES)
    brackets = np.frombuffer(bare, np.uint8)
    depth = 0
    for start in range(0, brackets.size, _CHUNK):
        # '[' 0x5B and '{' 0x7B have bit 1 set, ']' 0x5D and '}' 0x7D do not: +1 and -1
        steps = (brackets[start : start + _CHUNK] & 2).view(np.int8) - 1
        levels = np.cumsum(steps, dtype=np.int32) + depth
        if levels.max() > limit:
            return True
        depth = int(levels[-1])
    return False


def parse(text: str, unique_keys: bool = False, long_ints: bool = False) -> Any:
    """``json.loads``, but ValueError for text nested deeper than MAX_DEPTH, and with
    ``unique_keys`` for an object that names a key twice: ``json.loads`` keeps the last one,
    where another reader of the same text (the sender's log, a proxy) may take the first.
    ``long_ints``: an integer of more digits than Python converts (4,300) is infinite, as a
    number too large for a float is, not a ValueError for the whole text: for a batch of
    adverts, where it would lose the others beside the one that has it (an SOS among them)."""
    if too_deep(text):
        raise ValueError(f"nested too deeply (over {MAX_DEPTH} levels)")
    pairs = _unique if unique_keys else None
    try:
        return json.loads(text, object_pairs_hook=pairs)
    except json.JSONDecodeError:
        raise
    except ValueError:  # an integer too long to convert: read again, slower, only then
        if not long_ints:
            raise
        return json.loads(text, object_pairs_hook=pairs, parse_int=_whole_number)


def _whole_number(digits: str) -> int | float:
    try:
        return int(digits)
    except ValueError:
        return float(digits)


def _unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for key, _value in pairs:
            if key in seen:
                raise ValueError(f"the key {key[:40]!r} is given twice")
            seen.add(key)
    return obj
