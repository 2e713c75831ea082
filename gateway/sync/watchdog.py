"""How long an alarm may wait for its PUBACK before the connection is taken for dead.

A connection whose network path died without a reset (a mobile NAT forgetting us, a pulled
uplink cable beyond the switch) looks alive until keepalive gives up, up to 2x keepalive_s
later. Telemetry can wait that long; an SOS cannot (EN 50136-1 class D4: 10 s mean
transmission). So an alarm unacknowledged for ``timeout_ms`` has its connection dropped and
is sent again on a new one. On a link that is merely slow, an alarm also waits behind the
telemetry already in flight, and dropping would repeat for ever. Hence the timeout never goes
below four times the PUBACK latency of whatever was acknowledged last (any lane), doubles
after each drop, and comes back down by halves as messages are acknowledged in good time.
"""

from __future__ import annotations


class AlarmAckWatch:
    def __init__(self, base_ms: int, cap_ms: int) -> None:
        self.base_ms = base_ms
        self.cap_ms = max(base_ms, cap_ms)
        self.timeout_ms = base_ms

    def overdue(self, waited_ms: int) -> bool:
        return waited_ms >= self.timeout_ms

    def acked(self, latency_ms: int) -> None:
        self.timeout_ms = min(self.cap_ms, max(self.base_ms, 4 * latency_ms, self.timeout_ms // 2))

    def expired(self) -> None:
        self.timeout_ms = min(self.cap_ms, 2 * self.timeout_ms)
