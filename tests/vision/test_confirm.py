"""Uncertain decisions held for staff: forgotten in time, once confirmed, and never too many."""

from __future__ import annotations

import numpy as np

from gateway.vision.confirm import HOLD_AT_MOST, Confirmations
from tests.support.clock import ManualClock

PROBE = np.ones(128, dtype=np.float32) / np.sqrt(128)


def test_a_decision_is_held_for_the_configured_time_only() -> None:
    clock = ManualClock()
    held = Confirmations(600.0, lambda: clock.monotonic_ms() / 1000)
    held.hold("ev-1", PROBE, (("E1", 0.5),))
    clock.advance(599_000)
    pending = held.get("ev-1")
    assert pending is not None and pending.candidates == (("E1", 0.5),)
    clock.advance(1_000)
    assert held.get("ev-1") is None and len(held) == 0


def test_a_confirmed_decision_is_let_go_at_once() -> None:
    held = Confirmations(600.0)
    held.hold("ev-1", PROBE, (("E1", 0.5),))
    held.done("ev-1")
    assert held.get("ev-1") is None


def test_a_face_that_named_only_erased_elders_is_let_go_at_the_next_reload() -> None:
    """Nobody it named can be confirmed any more: the face (an embedding) is not kept in
    memory for the rest of the ten minutes."""
    held = Confirmations(600.0)
    held.hold("ev-1", PROBE, (("E1", 0.5),))
    held.hold("ev-2", PROBE, (("E1", 0.5), ("E2", 0.45)))
    held.hold("ev-3", PROBE, (("E3", 0.5),))
    assert held.forget_erased({"E2", "E3"}) == 1
    assert held.get("ev-1") is None
    still = held.get("ev-2")  # E2 can still be confirmed for it
    assert still is not None and still.candidates == (("E1", 0.5), ("E2", 0.45))
    assert held.get("ev-3") is not None


def test_nothing_is_held_when_confirmation_is_off() -> None:
    held = Confirmations(0.0)
    held.hold("ev-1", PROBE, (("E1", 0.5),))
    assert held.get("ev-1") is None


def test_the_oldest_go_first_beyond_the_limit() -> None:
    held = Confirmations(600.0)
    for i in range(HOLD_AT_MOST + 2):
        held.hold(f"ev-{i}", PROBE, ())
    assert len(held) == HOLD_AT_MOST
    assert held.get("ev-0") is None and held.get("ev-1") is None
    assert held.get(f"ev-{HOLD_AT_MOST + 1}") is not None


def test_a_decision_without_a_live_face_is_held_to_be_settled() -> None:
    """Nothing to learn from it, but staff who settle her by hand must be able to say so."""
    held = Confirmations(600.0)
    held.hold("ev-1", None, (("E1", 0.5),), decided_t=12.0, track=3)
    assert held.settle("ev-1", "E1") == "E1"
    ((elder, t, track, probe),) = held.take_settled()
    assert (elder, t, track, probe) == ("E1", 12.0, 3, None)
