"""Elder ids: the platform's ids, as the gallery, the requests and the CLI accept them."""

from __future__ import annotations

import re

from gateway.vision.errors import VisionError

ELDER_ID = re.compile(r"[A-Za-z0-9_.:-]{1,128}")


class BadElderId(VisionError):
    """An id the gallery would store as a different elder than the platform means."""


def check_elder_id(elder: str) -> str:
    """Whole-string match: a JSON Schema ``pattern`` ending in ``$`` lets Python's ``re``
    pass "E1024\\n", which would be enrolled apart from E1024 and never erased with it."""
    if not ELDER_ID.fullmatch(elder):
        shown = elder if len(elder) <= 40 else elder[:37] + "..."
        raise BadElderId(f"elder id {shown!r}: use letters, digits and _ . : - (max 128)")
    return elder
