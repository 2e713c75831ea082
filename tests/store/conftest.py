from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from gateway.clock import ClockSync
from gateway.config import StoreSection
from gateway.events import EventType, Lane
from gateway.store import Store
from tests.support.clock import ManualClock

SOS = EventType("alarm.sos", Lane.P0)
MEAL = EventType("meal.settled", Lane.P1)
SEEN = EventType("wristband.seen", Lane.P2)

StoreFactory = Callable[..., Store]


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def make_store(tmp_path: Path, clock: ManualClock) -> Iterator[StoreFactory]:
    opened: list[Store] = []

    def make(
        path: Path | None = None, free_disk: Callable[[Path], int] | None = None, **cfg: object
    ) -> Store:
        section = StoreSection.model_validate({"housekeeping_interval_s": 3600, **cfg})
        kwargs = {} if free_disk is None else {"free_disk": free_disk}
        store = Store(section, path or tmp_path / "g.db", clock, ClockSync("never", 60), **kwargs)
        store.start()
        opened.append(store)
        return store

    yield make
    for store in opened:
        if store.healthy():
            store.stop()
