"""An erasure takes the delivered events naming the person out of the journal, and leaves
every event still to be delivered as it is."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from gateway.events import Event, Lane
from gateway.store import Delivered, StoreError
from gateway.store.erasure import Journal, purge_delivered
from tests.store.conftest import MEAL, SOS, StoreFactory
from tests.support.journal import journal


def _names_e1(data: Mapping[str, Any]) -> bool:
    return data.get("elder") == "E1" or "E1" in data.get("others", ())


def test_delivered_events_naming_her_go_and_those_still_to_be_sent_stay(
    make_store: StoreFactory,
) -> None:
    store = make_store()
    hers, beside, others, pending = (
        store.record(Event(MEAL, data))
        for data in (
            {"elder": "E1"},
            {"elder": "E2", "others": ["E1"]},
            {"elder": "E2", "others": ["E10"]},
            {"elder": "E1"},
        )
    )
    alarm = store.record(Event(SOS, {"elder": "E1"}))
    store.mark_delivered([Delivered(e.seq, e.lane) for e in (hers, beside, others, alarm)]).result()
    journal_file = Journal(store.path, store.key_path)

    # beside the running store, as a command run on the device would
    assert purge_delivered(journal_file, MEAL.name, _names_e1) == 2
    assert [e.seq for e in journal(store.path)] == [others.seq, pending.seq, alarm.seq]
    (still,) = store.reader().pending(Lane.P1, 0, 10)  # the meal not yet sent still goes
    assert still.seq == pending.seq and still.data_json == '{"elder":"E1"}'
    assert purge_delivered(journal_file, MEAL.name, _names_e1) == 0  # asked again
    store.record(Event(SOS, {"elder": "E3"}))  # the store writes on
    store.stop()
    assert (
        purge_delivered(Journal(store.path.with_name("none.db"), store.key_path), "x", _names_e1)
        == 0
    )


def test_a_wrong_key_is_refused_rather_than_finding_nobody(
    make_store: StoreFactory, tmp_path: Path
) -> None:
    store = make_store()
    delivered = store.record(Event(MEAL, {"elder": "E1"}))
    store.mark_delivered([Delivered(delivered.seq, delivered.lane)]).result()
    store.stop()
    wrong = tmp_path / "wrong.key"
    wrong.write_bytes(bytes(32))
    wrong.chmod(0o600)
    with pytest.raises(StoreError, match="not the key the journal was written with"):
        purge_delivered(Journal(store.path, wrong), MEAL.name, _names_e1)
    assert [e.seq for e in journal(store.path)] == [delivered.seq]
