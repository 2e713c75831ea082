from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest

from gateway.store.erasure import Goes
from gateway.vision.config import DecisionSection
from gateway.vision.decide import Decision, Outcome, Policy
from gateway.vision.events import FACE_DECISION, decision_data, erasing, names_any

SCHEMA_FILE = (
    Path(__file__).parents[2] / "gateway" / "contract" / "schemas" / "data" / "face.decision.json"
)
MODELS = {"detector": "d@1", "recognizer": "r@2", "antispoof_v2": "a@3", "antispoof_v1se": "b@4"}


@pytest.fixture(scope="module")
def schema() -> dict[str, object]:
    loaded: dict[str, object] = json.loads(SCHEMA_FILE.read_text())
    jsonschema.Draft202012Validator.check_schema(loaded)
    return loaded


def _data(decision: Decision, look_alikes: tuple[str, ...] = ()) -> dict[str, object]:
    return decision_data(
        decision,
        look_alikes=look_alikes,
        camera="counter-1",
        policy=Policy.from_config(DecisionSection()),
        models=MODELS,
        timings_ms={"detect": 4.2, "embed": 3.1, "total": 12.0},
        audit_frame=False,
    )


def test_the_event_is_a_p1_meal_lane_record() -> None:
    assert FACE_DECISION.name == "face.decision"
    assert FACE_DECISION.lane.name == "P1"


@pytest.mark.parametrize(
    "decision",
    [
        Decision(Outcome.ACCEPTED, 3.2, 4, 2.9, "elder-9", 0.71, 0.4, (), 3, 5, 0.98),
        Decision(
            Outcome.UNCERTAIN,
            5.0,
            5,
            3.0,
            candidates=(("e-1", 0.5), ("e-2", 0.48)),
            frames_used=30,
            frames_seen=30,
            liveness=0.9,
            reason="below_accept_threshold",
        ),
        Decision(Outcome.MULTIPLE_FACES, 1.0, 0, 1.0, frames_seen=3, reason="another face"),
    ],
)
def test_what_the_code_records_fits_the_schema(
    schema: dict[str, object], decision: Decision
) -> None:
    data = _data(decision)
    jsonschema.validate(data, schema)
    assert data["decided_after_ms"] == round((decision.t - decision.track_started) * 1000)


def test_the_schema_refuses_anything_extra(schema: dict[str, object]) -> None:
    data = _data(Decision(Outcome.UNKNOWN, 1.0, 1, 0.0, frames_used=5, frames_seen=5))
    jsonschema.validate(data, schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**data, "name": "Zhang San"}, schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**data, "outcome": "probably"}, schema)


def test_only_an_acceptance_names_an_elder() -> None:
    spoof = Decision(Outcome.SPOOF, 1.0, 1, 0.0, elder_id="elder-1", frames_used=3)
    assert _data(spoof)["elder_id"] is None


def test_an_accepted_elders_look_alikes_travel_with_the_decision(
    schema: dict[str, object],
) -> None:
    accepted = Decision(Outcome.ACCEPTED, 3.2, 4, 2.9, "elder-9", 0.71, 0.4, (), 3, 5, 0.98)
    data = _data(accepted, ("elder-12", "elder-3"))
    jsonschema.validate(data, schema)
    assert data["confusable_with"] == ["elder-12", "elder-3"]
    many = _data(accepted, tuple(f"e-{i}" for i in range(40)))
    jsonschema.validate(many, schema)
    assert len(many["confusable_with"]) == 16  # type: ignore[arg-type]
    uncertain = Decision(Outcome.UNCERTAIN, 5.0, 5, 3.0, elder_id="elder-9", frames_used=30)
    assert _data(uncertain, ("elder-12",))["confusable_with"] == []


def test_a_decision_names_an_elder_accepted_as_a_candidate_or_as_a_look_alike() -> None:
    """What an erasure looks for, for one elder or several erased at one reload."""
    data = {
        "elder_id": "E1",
        "candidates": [{"elder_id": "E1", "score": 0.6}, {"elder_id": "E2", "score": 0.5}],
        "confusable_with": ["E3"],
    }
    for elder in ("E1", "E2", "E3"):
        assert names_any(data, {elder})
    assert names_any(data, {"E9", "E3"}) and not names_any(data, {"E9", "E8"})
    assert not names_any({"elder_id": None, "candidates": [], "confusable_with": None}, {"E1"})


def test_an_erasure_takes_her_decisions_and_keeps_another_elders_acceptance_without_her() -> None:
    accepted = {
        "outcome": "accepted",
        "elder_id": "E1",
        "candidates": [{"elder_id": "E1", "score": 0.6}, {"elder_id": "E2", "score": 0.5}],
        "confusable_with": ["E2", "E3"],
    }
    assert erasing(accepted, {"E1"}) is True  # hers
    assert erasing(accepted, {"E9"}) is False
    assert erasing(accepted, {"E2", "E9"}) == {
        **accepted,
        "candidates": [{"elder_id": "E1", "score": 0.6}],
        "confusable_with": ["E3"],
    }
    undecided = {**accepted, "outcome": "uncertain", "elder_id": None, "confusable_with": []}
    # it may have been her: it goes, and is sent without her if still pending
    assert erasing(undecided, {"E2"}) == Goes(
        {**undecided, "candidates": [{"elder_id": "E1", "score": 0.6}]}
    )
