"""Storage limits as pure rules: what to evict, what to refuse, when to raise pressure.

Policy (also in the README):
- P0 and P1 are never evicted. Over their byte quota they raise ``storage_pressure`` and keep
  being accepted.
- P2 over its quota evicts its own oldest pending events, counted.
- Below the free-disk floor, an event is admitted only if enough old P2 can be evicted to make
  room for it (so the file stops growing); otherwise it is refused and counted, and the producer
  does not acknowledge its source, which will retry. Alarms and records are the exception
  while the store keeps its disk reserve: they are written, from the reserve once the disk is
  full (the reserve exists for them, and a site that is online has no telemetry pending);
  records from its first half only, the second is kept for alarms (see reserve.py).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from gateway.events import Lane

ROW_OVERHEAD_BYTES = 160  # envelope fields, indexes and page slack, per event


def event_bytes(data_json: str) -> int:
    return len(data_json.encode()) + ROW_OVERHEAD_BYTES


@dataclass(frozen=True)
class Admission:
    admitted: tuple[bool, ...]
    evict_p2_bytes: int


def admit(
    lanes: Sequence[Lane],
    sizes: Sequence[int],
    *,
    free_bytes: int,
    floor_bytes: int,
    p2_pending_bytes: int,
    reserve: bool = False,
) -> Admission:
    """Decide which new events of one commit may be written.

    Above the floor everything is admitted. Below it, higher priority claims the evictable P2
    room first, so an alarm is never refused while telemetry could make way for it; with a
    ``reserve`` (held, or given up for them), alarms and records it cannot make way for are
    admitted too.
    """
    if free_bytes >= floor_bytes:
        return Admission(tuple(True for _ in lanes), 0)
    room = p2_pending_bytes
    admitted = [False] * len(lanes)
    needed = 0
    for i in sorted(range(len(lanes)), key=lambda k: (lanes[k], k)):
        if sizes[i] <= room:
            room -= sizes[i]
            needed += sizes[i]
            admitted[i] = True
        elif reserve and lanes[i] is not Lane.P2:
            admitted[i] = True
    return Admission(tuple(admitted), needed)


def quota_excess(pending_bytes: int, quota_bytes: int) -> int:
    return max(0, pending_bytes - quota_bytes)


def pressured_lanes(pending: Mapping[Lane, int], quotas: Mapping[Lane, int]) -> list[Lane]:
    """Never-evicted lanes that are over their quota."""
    return [lane for lane in (Lane.P0, Lane.P1) if pending.get(lane, 0) > quotas[lane]]
