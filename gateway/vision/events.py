"""The ``face.decision`` event: what the counter decided about one person, as ids and facts.

No names, photos or templates: an elder id (pseudonymous, from the platform), scores, how many
frames, the liveness score, the models and thresholds it was decided under, and timings, so
that an audit can tell why the gateway accepted or refused someone without seeing a face. An
accepted elder's look-alikes from the confusable register travel with the decision, so the
counter can ask for a second factor at that moment.
Schema: gateway/contract/schemas/data/face.decision.json.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import Any

from gateway.events import EventType, Lane
from gateway.store.erasure import Goes
from gateway.vision.decide import Decision, Outcome, Policy

FACE_DECISION = EventType(
    "face.decision",
    Lane.P1,
    description="The counter camera's decision about one person: accepted elder id, or "
    "uncertain (with candidates), unknown, spoof, no_face, multiple_faces.",
    # added on 2026-11-23; a decision recorded before had no look-alikes listed, could not be
    # confirmed, and was matched on enrolled photos
    added=(("confusable_with", ()), ("confirmable", False), ("learned_from", None)),
)

VISION_EVENT_TYPES: tuple[EventType, ...] = (FACE_DECISION,)


def _r(value: float | None, digits: int = 4) -> float | None:
    return None if value is None else round(float(value), digits)


MAX_LOOK_ALIKES = 16


def decision_data(
    decision: Decision,
    *,
    look_alikes: Sequence[str] = (),
    camera: str,
    policy: Policy,
    models: Mapping[str, str],
    timings_ms: Mapping[str, float],
    audit_frame: bool,
    confirmable: bool = False,
) -> dict[str, Any]:
    return {
        "outcome": decision.outcome.value,
        "camera": camera,
        "track": decision.track,
        "elder_id": decision.elder_id if decision.outcome is Outcome.ACCEPTED else None,
        "score": _r(decision.score),
        "margin": _r(decision.margin),
        "candidates": [{"elder_id": e, "score": _r(s)} for e, s in decision.candidates],
        "confusable_with": (
            list(look_alikes[:MAX_LOOK_ALIKES]) if decision.outcome is Outcome.ACCEPTED else []
        ),
        "confirmable": confirmable,
        "learned_from": (decision.learned_from if decision.outcome is Outcome.ACCEPTED else None),
        "frames_used": decision.frames_used,
        "frames_seen": decision.frames_seen,
        "liveness": _r(decision.liveness),
        "reason": decision.reason,
        "decided_after_ms": max(0, round((decision.t - decision.track_started) * 1000)),
        "timings_ms": {k: round(v, 2) for k, v in timings_ms.items()},
        "models": dict(models),
        "policy": {
            "accept_threshold": policy.accept_threshold,
            "margin": policy.margin,
            "candidate_threshold": policy.candidate_threshold,
            "liveness_threshold": policy.liveness_threshold,
            "k": policy.k,
            "n": policy.n,
        },
        "audit_frame": audit_frame,
    }


def names_any(data: Mapping[str, Any], elders: Collection[str]) -> bool:
    """Whether a decision names any of the elders: accepted, a candidate, or a look-alike."""
    return (
        data.get("elder_id") in elders
        or any(c.get("elder_id") in elders for c in data.get("candidates") or ())
        or any(e in elders for e in data.get("confusable_with") or ())
    )


def erasing(data: Mapping[str, Any], elders: Collection[str]) -> bool | Goes | dict[str, Any]:
    """What erasing the elders does to a decision: False, it names none of them; True, it goes
    (accepted as one of them: her meal's record, still sent as it is if pending); Goes, it goes
    too (undecided with one among its candidates: it may have been her), sent without them if
    pending; otherwise it is another elder's acceptance, which stays hers (it feeds her
    cooldown after a restart and is the audit copy), without them among its candidates and
    look-alikes. The score margin to a candidate taken out stays, naming nobody."""
    if not names_any(data, elders):
        return False
    accepted = data.get("elder_id")
    if accepted in elders:
        return True
    without = {
        **data,
        "candidates": [c for c in data.get("candidates") or () if c.get("elder_id") not in elders],
        "confusable_with": [e for e in data.get("confusable_with") or () if e not in elders],
    }
    if data.get("outcome") != "accepted" or not accepted:
        return Goes(without)
    return without
