"""What staff confirmations buy, measured on a labelled folder (``gateway eval``).

An elder enrolled from one photo comes to the counter (their second photo) and is
``uncertain`` with themselves among the candidates; staff confirm, and that face is learned
(as ``enroll.learn`` would: not when it scores at the accept threshold against another
elder). Their later photos are the next visits: how many are accepted with the learned face,
against the same searches without it. The learned faces are also more chances for a
stranger to match: non-mated searches are run with and without them.

Staff are assumed right; a wrong confirmation is what ``face.unlearn`` is for.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from gateway.vision.calibrate import at_or_above
from gateway.vision.evaluate import DIM, FaceSet, gallery_plans, photos_by_person
from gateway.vision.gallery import Snapshot

CANDIDATES = 3  # as many as a decision offers staff


@dataclass(frozen=True)
class Rule:
    accept_threshold: float
    margin: float
    candidate_threshold: float

    def accepted(self, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(accepted, who) per row of (searches, elders) best-template scores."""
        top2 = -np.sort(-scores, axis=1)[:, :2]
        runner_up = top2[:, 1] if scores.shape[1] > 1 else np.zeros(len(scores))
        ok = at_or_above(top2[:, 0], self.accept_threshold) & at_or_above(
            top2[:, 0] - runner_up, self.margin
        )
        return ok, np.argmax(scores, axis=1)

    def candidates(self, scores: np.ndarray) -> list[int]:
        order = np.argsort(-scores, kind="stable")[:CANDIDATES]
        return [int(i) for i in order if at_or_above(float(scores[i]), self.candidate_threshold)]


@dataclass(frozen=True)
class ConfirmationEffect:
    gallery_size: int
    rotations: int
    first_visits: int  # mated first visits of elders enrolled with one photo, with 2 more
    confirmable: int  # of those, uncertain with the elder among the candidates
    learned: int  # of those, passed the check against other elders
    learned_people: int  # distinct people among them, over all rotations
    next_visits: int  # later photos of the learned elders
    accepted_without: float  # next visits accepted as the right elder, nothing learned
    accepted_with: float  # the same searches with the learned face
    wrong_with: float  # next visits accepted as somebody else, with the learned face
    fpir_without: float
    fpir_with: float


def confirmation_effect(
    faces: FaceSet, gallery_size: int, rule: Rule, rotations: int = 10, seed: int = 7
) -> ConfirmationEffect | None:
    """None when nobody in the folder has three photos or the gallery is too large for it."""
    by_person = photos_by_person(faces)
    if not any(len(photos) >= 3 for photos in by_person.values()):
        return None
    try:
        plans = gallery_plans(by_person, gallery_size, rotations, seed)
    except ValueError:
        return None
    emb = faces.embeddings
    people: set[str] = set()
    first = confirmable = learned = 0
    right_without = right_with = wrong_with = visits = 0
    alarms_without = alarms_with = strangers = 0
    for enrolled in plans:
        snapshot = Snapshot.build([(p, emb[by_person[p][0]]) for p in enrolled], DIM)
        position = {elder: i for i, elder in enumerate(snapshot.elders)}
        taught: list[tuple[str, np.ndarray]] = []
        returning: list[tuple[str, np.ndarray]] = []  # the later photos of those learned
        for person in (p for p in enrolled if len(by_person[p]) >= 3):
            photos, me = by_person[person], position[person]
            first += 1
            scores = snapshot.identity_scores(emb[[photos[1]]])
            if rule.accepted(scores)[0][0] or me not in rule.candidates(scores[0]):
                continue
            confirmable += 1
            others = np.delete(scores[0], me)
            if others.size and others.max() >= rule.accept_threshold:
                continue  # learning refuses: the face would be accepted as another elder
            learned += 1
            people.add(person)
            taught.append((person, emb[photos[1]]))
            later = emb[photos[2:]]
            ok, who = rule.accepted(snapshot.identity_scores(later))
            right_without += int(np.sum(ok & (who == me)))
            returning.append((person, later))
            visits += len(photos) - 2
        enrolled_set = set(enrolled)
        outside = [i for p, photos in by_person.items() if p not in enrolled_set for i in photos]
        # every face learned at once, as the counter holds them: another elder's learned face
        # may take her next visit
        grown = Snapshot.build([*snapshot.rows(), *taught], DIM)
        at = {elder: i for i, elder in enumerate(grown.elders)}
        for person, later in returning:
            ok, who = rule.accepted(grown.identity_scores(later))
            right_with += int(np.sum(ok & (who == at[person])))
            wrong_with += int(np.sum(ok & (who != at[person])))
        alarms_without += int(np.sum(rule.accepted(snapshot.identity_scores(emb[outside]))[0]))
        alarms_with += int(np.sum(rule.accepted(grown.identity_scores(emb[outside]))[0]))
        strangers += len(outside)

    def share(n: int, of: int) -> float:
        return n / of if of else 0.0

    return ConfirmationEffect(
        gallery_size=gallery_size,
        rotations=len(plans),
        first_visits=first,
        confirmable=confirmable,
        learned=learned,
        learned_people=len(people),
        next_visits=visits,
        accepted_without=share(right_without, visits),
        accepted_with=share(right_with, visits),
        wrong_with=share(wrong_with, visits),
        fpir_without=share(alarms_without, strangers),
        fpir_with=share(alarms_with, strangers),
    )
