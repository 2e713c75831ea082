"""What staff confirmations buy: the arithmetic on photos whose scores are known exactly."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from gateway.vision.evaluate import FaceSet
from gateway.vision.learning import Rule, confirmation_effect

RULE = Rule(accept_threshold=0.54, margin=0.02, candidate_threshold=0.47)


def _unit(*weights: tuple[int, float]) -> np.ndarray:
    v = np.zeros(128, dtype=np.float32)
    for axis, w in weights:
        v[axis] = w
    return v / np.linalg.norm(v)


def _faces(photos: list[tuple[str, np.ndarray]]) -> FaceSet:
    n = len(photos)
    return FaceSet(
        [Path(f"{i}.jpg") for i in range(n)],
        [label for label, _ in photos],
        np.stack([v for _, v in photos]),
        np.ones(n, dtype=bool),
        [None] * n,
    )


def test_a_confirmed_elder_is_accepted_next_time_and_strangers_like_them_are_counted() -> None:
    halfway = _unit((0, 0.5), (1, 0.75**0.5))  # 0.5 against a's enrolment photo: uncertain
    between = _unit((4, 0.6), (6, 0.6), (8, 0.28**0.5))  # 0.6 against both c and d
    faces = _faces(
        [
            ("a", _unit((0, 1))),
            ("a", halfway),
            ("a", halfway),  # the next visit looks like the confirmed one
            ("b", _unit((3, 1))),
            ("b", _unit((3, 1))),  # accepted at once: nothing to confirm
            ("b", _unit((3, 1))),
            ("c", _unit((4, 1))),
            ("c", between),  # uncertain (no margin), but would be accepted as d: not learned
            ("c", between),
            ("d", _unit((6, 1))),
            ("d", _unit((6, 1))),
            ("stranger", halfway),  # only the learned face makes them an alarm
        ]
    )
    effect = confirmation_effect(faces, gallery_size=4, rule=RULE, rotations=1)
    assert effect is not None
    assert (effect.first_visits, effect.confirmable, effect.learned) == (3, 2, 1)
    assert (effect.learned_people, effect.next_visits) == (1, 1)
    assert (effect.accepted_without, effect.accepted_with, effect.wrong_with) == (0.0, 1.0, 0.0)
    assert (effect.fpir_without, effect.fpir_with) == (0.0, 1.0)


def test_nothing_to_measure_without_three_photos_of_anyone() -> None:
    faces = _faces([("a", _unit((0, 1))), ("a", _unit((0, 1))), ("b", _unit((1, 1)))])
    assert confirmation_effect(faces, gallery_size=1, rule=RULE) is None
    assert confirmation_effect(faces, gallery_size=50, rule=RULE) is None


def test_a_next_visit_taken_by_another_elders_learned_face_counts_as_wrong() -> None:
    """The counter holds every learned face at once. a's next visit looks more like the face
    learned for b than like anything of a's: accepted as b. It was scored against a's own
    learned face only, and 'none as somebody else' was reported."""
    a_second = _unit((0, 0.5), (1, 0.75**0.5))
    b_second = _unit((2, 0.5), (3, 0.75**0.5))
    a_next = _unit((0, 0.3), (1, 0.1), (3, 0.8), (4, 0.5))
    faces = _faces(
        [
            ("a", _unit((0, 1))),
            ("a", a_second),
            ("a", a_next),
            ("b", _unit((2, 1))),
            ("b", b_second),
            ("b", _unit((3, 1), (9, 0.1))),
        ]
    )
    rule = Rule(accept_threshold=0.6, margin=0.02, candidate_threshold=0.45)
    effect = confirmation_effect(faces, gallery_size=2, rule=rule, rotations=1)
    assert effect is not None and effect.learned == 2 and effect.next_visits == 2
    assert effect.wrong_with == 0.5
