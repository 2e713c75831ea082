"""The decision rules on their own: observations in, decisions out, time from the frames."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import replace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from gateway.vision.config import DecisionSection, VisionSection
from gateway.vision.decide import Decider, Decision, Observation, Outcome, Policy
from gateway.vision.gallery import SearchResult

POLICY = Policy.from_config(DecisionSection())
FPS = 15.0


def person(name: str) -> np.ndarray:
    """A stable unit vector per person (for track continuity)."""
    seed = int.from_bytes(hashlib.sha256(name.encode()).digest()[:4], "big")
    v = np.random.default_rng(seed).standard_normal(128).astype(np.float32)
    return v / np.linalg.norm(v)


def face(
    t: float, who: str, top: str, score: float, runner_up: float = 0.1, *, live: float = 0.99
) -> Observation:
    search = SearchResult((top, "elder-z"), (score, runner_up))
    return Observation(t, "face", embedding=person(who), search=search, live_score=live)


def run(decider: Decider, observations: list[Observation]) -> list[Decision]:
    out: list[Decision] = []
    for obs in observations:
        out += decider.observe(obs)
    return out


def frames(
    start: float, count: int, *, who: str, top: str, score: float, **kw: float
) -> list[Observation]:
    return [face(start + i / FPS, who, top, score, **kw) for i in range(count)]


def test_k_of_n_good_frames_accept_once() -> None:
    decider = Decider(POLICY)
    out = run(decider, frames(0.0, 30, who="p1", top="elder-1", score=0.7))
    assert [d.outcome for d in out] == [Outcome.ACCEPTED]
    (accepted,) = out
    assert accepted.elder_id == "elder-1"
    assert accepted.frames_used == POLICY.k
    assert accepted.t == pytest.approx((POLICY.k - 1) / FPS)
    assert accepted.score == pytest.approx(0.7)
    assert accepted.margin == pytest.approx(0.6)
    assert accepted.liveness == pytest.approx(0.99)


def test_an_acceptance_names_the_confirmation_whose_learned_face_matched_most() -> None:
    def seen(t: float, learned_from: str | None) -> Observation:
        search = SearchResult(("elder-1", "elder-z"), (0.7, 0.1), learned_from)
        return Observation(t, "face", embedding=person("p1"), search=search, live_score=0.99)

    origins = ["d-1", None, "d-1", "d-2", "d-1"][: POLICY.k]
    (accepted,) = run(Decider(POLICY), [seen(i / FPS, o) for i, o in enumerate(origins)])
    assert accepted.learned_from == "d-1"
    enrolled = [seen(i / FPS, None if i % 3 else "d-1") for i in range(POLICY.k)]
    assert run(Decider(POLICY), enrolled)[0].learned_from is None


def test_one_frame_short_of_k_is_not_enough() -> None:
    decider = Decider(POLICY)
    good = frames(0.0, POLICY.k - 1, who="p1", top="elder-1", score=0.7)
    weak = frames((POLICY.k - 1) / FPS, 3, who="p1", top="elder-1", score=0.5)
    assert run(decider, good + weak) == []


def test_a_close_runner_up_is_never_accepted_but_offered_to_staff() -> None:
    decider = Decider(POLICY)
    obs = frames(0.0, 40, who="p1", top="elder-1", score=0.7, runner_up=0.69)
    (decision,) = run(decider, obs)
    assert decision.outcome is Outcome.UNCERTAIN
    assert decision.reason == "close_candidates"
    assert decision.candidates[0] == ("elder-1", 0.7)
    assert decision.t == pytest.approx(POLICY.decide_within_s, abs=1 / FPS)
    # the face staff may confirm: the mean of the track's live frames
    assert decision.probe is not None
    assert float(decision.probe @ person("p1")) == pytest.approx(1.0, abs=1e-5)


def test_a_track_in_view_when_an_elder_is_erased_names_her_no_more() -> None:
    """The gallery reload that drops her comes while a close call is in view: the uncertain
    decision made after it, from all the track's frames, must not list her (the counter's
    erasure of her decisions ran at the reload, before it). Her frames vote for nobody else."""
    decider = Decider(POLICY)
    before = frames(0.0, 15, who="p1", top="elder-1", score=0.7, runner_up=0.69)
    assert run(decider, before) == []
    decider.forget(["elder-1"])
    search = SearchResult(("elder-z", "elder-y"), (0.69, 0.68))
    after = [
        Observation(1.0 + i / FPS, "face", embedding=person("p1"), search=search, live_score=0.99)
        for i in range(30)
    ]
    (decision,) = run(decider, after)
    assert decision.outcome is Outcome.UNCERTAIN
    assert decision.candidates == (("elder-z", 0.69), ("elder-y", 0.68))
    assert decision.t == pytest.approx(POLICY.decide_within_s, abs=1 / FPS)


def test_forgetting_an_elder_makes_no_frame_vote_for_anyone_else() -> None:
    """Her runner-up is not accepted on frames she topped, nor on frames where she was close
    behind another elder."""
    decider = Decider(POLICY)
    topped = frames(0.0, 2, who="p1", top="elder-1", score=0.7, runner_up=0.69)
    behind = [
        Observation(
            (2 + i) / FPS,
            "face",
            embedding=person("p1"),
            search=SearchResult(("elder-z", "elder-1"), (0.7, 0.69)),
            live_score=0.99,
        )
        for i in range(2)
    ]
    assert run(decider, topped + behind) == []
    decider.forget(["elder-1"])
    track = decider.track
    assert track is not None
    assert [e.top for e in track.evidence] == [None, None, "elder-z", "elder-z"]
    assert [e.margin for e in track.evidence[2:]] == pytest.approx([0.01, 0.01])
    assert all("elder-1" not in dict(e.candidates) for e in track.evidence)


def test_an_uncertain_face_that_may_be_a_photo_is_not_held_for_confirmation() -> None:
    decider = Decider(POLICY)
    lives = [0.9, 0.3] * 3  # half the frames fail: not a spoof, not live enough to learn
    obs = [face(i * 0.45, "p1", "elder-1", 0.5, live=v) for i, v in enumerate(lives)]
    (decision,) = run(decider, obs)
    assert decision.outcome is Outcome.UNCERTAIN
    assert decision.candidates == (("elder-1", 0.5),)
    assert decision.probe is None


def test_a_stranger_is_unknown_after_the_decision_time() -> None:
    decider = Decider(POLICY)
    (decision,) = run(decider, frames(0.0, 40, who="p9", top="elder-1", score=0.2))
    assert decision.outcome is Outcome.UNKNOWN
    assert decision.candidates == ()
    assert decision.elder_id is None


def test_votes_split_between_elders_stay_uncertain() -> None:
    decider = Decider(POLICY)
    obs = [face(i / FPS, "p1", "elder-1" if i % 2 else "elder-2", 0.6, 0.3) for i in range(40)]
    (decision,) = run(decider, obs)
    assert decision.outcome is Outcome.UNCERTAIN
    assert {c[0] for c in decision.candidates} == {"elder-1", "elder-2"}


def test_failing_liveness_is_a_spoof_even_with_a_perfect_match() -> None:
    decider = Decider(POLICY)
    out = run(decider, frames(0.0, 20, who="p1", top="elder-1", score=0.9, live=0.2))
    assert [d.outcome for d in out] == [Outcome.SPOOF]
    assert out[0].elder_id is None and out[0].liveness == pytest.approx(0.2)


def test_liveness_must_pass_on_most_frames() -> None:
    decider = Decider(POLICY)
    lives = [0.9, 0.3, 0.9, 0.3, 0.9, 0.3, 0.9]
    obs = [face(i / FPS, "p1", "elder-1", 0.8, live=v) for i, v in enumerate(lives)]
    out = run(decider, obs)
    assert [d.outcome for d in out] == [Outcome.ACCEPTED]
    assert out[0].liveness is not None and out[0].liveness >= 0.5


def test_cooldown_stops_a_second_acceptance_of_the_same_elder() -> None:
    decider = Decider(POLICY)
    first = frames(0.0, 10, who="p1", top="elder-1", score=0.7)
    again = frames(5.0, 10, who="p1", top="elder-1", score=0.7)  # stepped away and back
    last_seen = again[-1].t  # the cooldown runs from here: she was still about
    early = frames(last_seen + POLICY.cooldown_s - 1, 10, who="p1", top="elder-1", score=0.7)
    later = frames(early[-1].t + POLICY.cooldown_s + 1, 10, who="p1", top="elder-1", score=0.7)
    out = run(decider, first + again + early + later)
    assert [d.outcome for d in out] == [Outcome.ACCEPTED, Outcome.ACCEPTED]
    assert out[1].t > early[-1].t + POLICY.cooldown_s
    assert decider.counters["cooldown_suppressed"] == 2


def test_an_elder_who_lingers_after_her_acceptance_is_not_accepted_again() -> None:
    """Accepted, then she stays at the counter past the cooldown, looks down for a moment and
    up again: she never left, so her meal is not settled a second time."""
    decider = Decider(POLICY)
    stays = frames(0.0, int((POLICY.cooldown_s + 5) * FPS), who="p1", top="elder-1", score=0.7)
    back = frames(stays[-1].t + 1.0, 15, who="p1", top="elder-1", score=0.7)  # looked down
    out = run(decider, stays + back)
    assert [d.outcome for d in out] == [Outcome.ACCEPTED]


def test_an_elder_with_a_companion_beside_her_past_the_cooldown_is_not_accepted_again() -> None:
    """Accepted, then a companion stands beside her (two faces of similar size) for longer
    than the cooldown; the companion steps away and she is alone in view again: her meal was
    settled once, and stays settled once."""
    decider = Decider(POLICY)
    alone = frames(0.0, 15, who="p1", top="elder-1", score=0.7)
    together = [
        Observation(1.0 + i / FPS, "multiple_faces")
        for i in range(int((POLICY.cooldown_s + 10) * FPS))
    ]
    again = frames(together[-1].t + 1 / FPS, 30, who="p1", top="elder-1", score=0.7)
    out = run(decider, alone + together + again)
    assert [(d.outcome, d.elder_id) for d in out] == [(Outcome.ACCEPTED, "elder-1")]


def test_an_elder_staff_settled_by_hand_is_not_accepted_again_within_the_cooldown() -> None:
    decider = Decider(POLICY)
    unsure = frames(0.0, int(3 * FPS), who="p1", top="elder-1", score=0.5)
    out = run(decider, unsure)
    assert [d.outcome for d in out] == [Outcome.UNCERTAIN]
    decider.settled("elder-1", out[0].t, out[0].track)  # staff confirmed: it was her
    known = frames(unsure[-1].t + 1.0, 15, who="p1", top="elder-1", score=0.7)  # learned face
    assert run(decider, known) == []
    assert decider.counters["cooldown_suppressed"] == 1


def test_a_confirmation_made_after_she_turned_away_still_keeps_her_from_a_second_settlement() -> (
    None
):
    """Uncertain, she turns away and back (a second uncertain track) and staff confirm only
    then; she stays at the counter a minute longer, turns away and back once more, now known
    by the learned face: no acceptance, the meal was settled by hand."""
    decider = Decider(POLICY)
    first = run(decider, frames(0.0, int(3 * FPS), who="p1", top="elder-1", score=0.5))
    second = run(decider, frames(4.0, int(6 * FPS), who="p1", top="elder-1", score=0.5))
    assert [d.outcome for d in first + second] == [Outcome.UNCERTAIN, Outcome.UNCERTAIN]
    decider.settled("elder-1", 10.0, first[0].track, person("p1"))  # staff confirm at 10 s
    stays = frames(10.0, int(60 * FPS), who="p1", top="elder-1", score=0.7)
    back = frames(stays[-1].t + 1.0, int(2 * FPS), who="p1", top="elder-1", score=0.7)
    assert run(decider, stays + back) == []
    assert decider.counters["cooldown_suppressed"] == 1


def test_liveness_is_judged_on_the_frames_that_voted() -> None:
    """Three frames vote for the elder and two of them fail liveness; two more frames of her
    with too small a margin pass it. They do not vote, so they cannot carry liveness either."""
    decider = Decider(POLICY)
    observations = [
        face(0 / FPS, "p1", "elder-1", 0.7, live=0.99),
        face(1 / FPS, "p1", "elder-1", 0.7, runner_up=0.69, live=0.99),
        face(2 / FPS, "p1", "elder-1", 0.7, live=0.1),
        face(3 / FPS, "p1", "elder-1", 0.7, runner_up=0.69, live=0.99),
        face(4 / FPS, "p1", "elder-1", 0.7, live=0.1),
    ]
    assert [d.outcome for d in run(decider, observations)] == []


def test_a_second_face_that_keeps_coming_back_seldom_is_reported_for_staff() -> None:
    """Another face similar in size, seen once every 0.8 s: too seldom for multiple_faces at
    once, but nobody can be accepted meanwhile; staff hear of it instead of nothing at all."""
    decider = Decider(POLICY)
    observations = [
        Observation(i / FPS, "multiple_faces") if i % 12 == 0 else face(i / FPS, "p1", "e-1", 0.8)
        for i in range(int(10 * FPS))
    ]
    out = run(decider, observations)
    assert [(d.outcome, d.reason) for d in out] == [
        (Outcome.MULTIPLE_FACES, "another face kept appearing")  # once: one episode
    ]
    assert out[0].t >= 2 * POLICY.decide_within_s


def test_a_new_face_without_a_gap_starts_a_new_track() -> None:
    decider = Decider(POLICY)
    first = frames(0.0, 10, who="p1", top="elder-1", score=0.7)
    second = frames(10 / FPS, 10, who="p2", top="elder-2", score=0.7)
    out = run(decider, first + second)
    assert [(d.outcome, d.elder_id) for d in out] == [
        (Outcome.ACCEPTED, "elder-1"),
        (Outcome.ACCEPTED, "elder-2"),
    ]
    assert out[0].track != out[1].track


def test_a_track_ends_after_a_gap_and_a_short_visit_is_dropped() -> None:
    decider = Decider(POLICY)
    visit = frames(0.0, 2, who="p9", top="elder-1", score=0.2)
    quiet = [Observation(1.0 + i / FPS, "no_face") for i in range(20)]
    assert run(decider, visit + quiet) == []
    assert decider.track is None
    assert decider.counters["tracks_abandoned"] == 1


def test_two_people_in_view_give_multiple_faces_once() -> None:
    decider = Decider(POLICY)
    ambiguous = [Observation(i / FPS, "multiple_faces") for i in range(30)]
    out = run(decider, ambiguous)
    assert [d.outcome for d in out] == [Outcome.MULTIPLE_FACES]
    assert out[0].elder_id is None


def test_ambiguity_wipes_the_votes_collected_so_far() -> None:
    decider = Decider(POLICY)
    before = frames(0.0, POLICY.k - 1, who="p1", top="elder-1", score=0.7)
    ambiguous = [Observation((POLICY.k - 1 + i) / FPS, "multiple_faces") for i in range(3)]
    after = frames((POLICY.k + 2) / FPS, 1, who="p1", top="elder-1", score=0.7)
    out = run(decider, before + ambiguous + after)
    assert [d.outcome for d in out] == [Outcome.MULTIPLE_FACES]


def test_a_second_face_in_most_frames_but_not_all_is_still_multiple_faces() -> None:
    decider = Decider(POLICY)
    obs = [
        face(i / FPS, "p1", "elder-1", 0.7)
        if i % 3 == 2
        else Observation(i / FPS, "multiple_faces")
        for i in range(30)
    ]
    out = run(decider, obs)
    assert [d.outcome for d in out] == [Outcome.MULTIPLE_FACES]


def test_after_multiple_faces_the_one_who_stays_is_decided_on_a_new_track() -> None:
    decider = Decider(POLICY)
    before = frames(0.0, 2, who="p1", top="elder-1", score=0.7)
    ambiguous = [Observation((2 + i) / FPS, "multiple_faces") for i in range(3)]
    after = frames(5 / FPS, 30, who="p1", top="elder-1", score=0.7)
    out = run(decider, before + ambiguous + after)
    assert [d.outcome for d in out] == [Outcome.MULTIPLE_FACES, Outcome.ACCEPTED]
    first, accepted = out
    assert first.track != accepted.track
    # no acceptance while the second face was within the window
    assert accepted.t >= ambiguous[-1].t + POLICY.window_s


def test_the_one_who_stays_beside_a_flickering_second_face_is_accepted_once_it_goes() -> None:
    """The detector finds the second person in every other frame for 4 s: the stayer gets no
    verdict meanwhile (not a premature `uncertain` that would close the track), and is
    accepted once no second face has been seen for `window_s`."""
    decider = Decider(POLICY)
    together = [
        Observation(i / FPS, "multiple_faces") if i % 2 == 0 else face(i / FPS, "p1", "e-1", 0.8)
        for i in range(int(4 * FPS))
    ]
    alone = frames(4.0, int(4 * FPS), who="p1", top="e-1", score=0.8)
    out = run(decider, together + alone)
    assert [d.outcome for d in out] == [Outcome.MULTIPLE_FACES, Outcome.ACCEPTED]
    assert out[1].elder_id == "e-1" and out[1].t >= together[-2].t + POLICY.window_s


def test_the_one_who_stays_gets_no_verdict_while_both_are_in_view_for_a_second() -> None:
    """Two people walk up (multiple_faces); she is alone in most frames for a moment, then
    the other leans in beside her for a second. Two faces in view are not "no face": the
    track gap does not end her track with an `uncertain` (staff would serve her by hand) while
    the other is still there; she is accepted once, after the other has gone."""
    decider = Decider(POLICY)
    obs: list[Observation] = []

    def multiple(count: int) -> None:
        obs.extend(Observation(len(obs) / FPS, "multiple_faces") for _ in range(count))

    def alone(count: int) -> None:
        obs.extend(face(len(obs) / FPS, "p1", "elder-1", 0.7) for _ in range(count))

    multiple(3)
    alone(4)
    multiple(1)
    alone(4)
    multiple(int(POLICY.track_gap_s * FPS) + 5)  # both in view for longer than the gap
    both_last = obs[-1].t
    alone(int(3 * FPS))
    out = run(decider, obs)
    assert [(d.outcome, d.elder_id) for d in out] == [
        (Outcome.MULTIPLE_FACES, None),
        (Outcome.ACCEPTED, "elder-1"),
    ]
    assert out[1].t >= both_last + POLICY.window_s


def test_a_face_left_in_view_after_its_decision_holds_no_more_frames() -> None:
    decider = Decider(POLICY)
    out = run(decider, frames(0.0, 15 * 60, who="poster", top="elder-1", score=0.7))
    assert [d.outcome for d in out] == [Outcome.ACCEPTED]
    assert decider.track is not None
    assert decider.track.frames_seen == 15 * 60
    assert len(decider.track.evidence) == POLICY.k
    assert len(decider.track.lives) == POLICY.k


def test_a_face_mostly_unusable_gets_its_reason_even_with_a_few_usable_frames() -> None:
    decider = Decider(POLICY)
    usable = frames(0.0, POLICY.n - 1, who="p1", top="elder-1", score=0.3)
    turned = [
        Observation((POLICY.n - 1 + i) / FPS, "poor_quality", reason="turned_away")
        for i in range(60)
    ]
    out = run(decider, usable + turned)
    assert [(d.outcome, d.reason) for d in out] == [(Outcome.NO_FACE, "turned_away")]


def test_an_elder_who_looks_up_after_a_no_face_is_still_identified_on_the_same_visit() -> None:
    """She walks up looking down at her purse: after the decision time staff hear why her face
    is not usable. Then she looks at the camera: she is accepted there and then, without
    having to step away and come back first."""
    decider = Decider(POLICY)
    down = [
        Observation(i / FPS, "poor_quality", reason="rolled")
        for i in range(int(POLICY.decide_within_s * FPS) + 2)
    ]
    up = frames(down[-1].t + 1 / FPS, int(3 * FPS), who="p1", top="elder-1", score=0.7)
    out = run(decider, down + up)
    assert [(d.outcome, d.reason, d.elder_id) for d in out] == [
        (Outcome.NO_FACE, "rolled", None),
        (Outcome.ACCEPTED, None, "elder-1"),
    ]
    assert out[0].track == out[1].track
    assert decider.counters["tracks_abandoned"] == 0


def test_an_elder_who_raises_her_head_slowly_after_a_no_face_has_her_full_decision_time() -> None:
    """After the no_face, the first frames as she raises her head match her only weakly: they
    must not make her uncertain (staff settling by hand) before she is facing the camera,
    which on a track of its own she would have had two seconds for."""
    decider = Decider(POLICY)
    down = [
        Observation(i / FPS, "poor_quality", reason="rolled")
        for i in range(int(POLICY.decide_within_s * FPS) + 2)
    ]
    start = down[-1].t + 1 / FPS
    rising = frames(start, POLICY.n - 1, who="p1", top="elder-1", score=0.5)
    up = frames(start + len(rising) / FPS, int(FPS), who="p1", top="elder-1", score=0.7)
    out = run(decider, down + rising + up)
    assert [(d.outcome, d.elder_id) for d in out] == [
        (Outcome.NO_FACE, None),
        (Outcome.ACCEPTED, "elder-1"),
    ]


def test_a_face_never_usable_is_no_face_with_the_reason() -> None:
    decider = Decider(POLICY)
    obs = [Observation(i / FPS, "poor_quality", reason="turned_away") for i in range(40)]
    (decision,) = run(decider, obs)
    assert decision.outcome is Outcome.NO_FACE
    assert decision.reason == "turned_away"


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["elder-1", "elder-2", "elder-3"]),
            st.floats(-0.2, 1.0),
            st.floats(-0.2, 1.0),
            st.floats(0.0, 1.0),
        ),
        max_size=60,
    )
)
def test_an_acceptance_always_has_k_strong_clear_live_frames(
    seq: list[tuple[str, float, float, float]],
) -> None:
    decider = Decider(POLICY)
    obs = []
    for i, (top, score, other, live) in enumerate(seq):
        hi, lo = max(score, other), min(score, other)
        obs.append(face(i / FPS, "p1", top, hi, lo, live=live))
    for decision in run(decider, obs):
        if decision.outcome is not Outcome.ACCEPTED:
            continue
        recent = [o for o in obs if decision.t - POLICY.window_s <= o.t <= decision.t][-POLICY.n :]
        hits = [o.search for o in recent if o.search is not None]
        strong = [
            r for r in hits if r.top_score >= POLICY.accept_threshold and r.margin >= POLICY.margin
        ]
        assert sum(r.top == decision.elder_id for r in strong) >= POLICY.k
        assert all(r.top == decision.elder_id for r in strong)
        used = [  # the voting frames: strong and clear, for her
            o
            for o in recent
            if o.search is not None
            and o.search.top == decision.elder_id
            and o.search.top_score >= POLICY.accept_threshold
            and o.search.margin >= POLICY.margin
        ]
        assert len(used) == decision.frames_used
        live = [o for o in used if (o.live_score or 0.0) >= POLICY.liveness_threshold]
        assert 2 * len(live) > len(used)


def test_a_tilted_print_is_a_spoof_not_just_an_unusable_face() -> None:
    decider = Decider(POLICY)
    obs = [
        Observation(i / FPS, "poor_quality", live_score=0.2, reason="turned_away")
        for i in range(10)
    ]
    out = run(decider, obs)
    assert [d.outcome for d in out] == [Outcome.SPOOF]
    assert out[0].frames_used == POLICY.k


@pytest.mark.parametrize(
    ("section", "values", "problem"),
    [
        ("decision", {"margin": 0}, "greater than or equal to 0.001"),  # a tie accepted
        ("decision", {"liveness_threshold": 0}, "greater than 0"),  # a photo passes
        ("decision", {"cooldown_s": 0}, "greater than or equal to 10"),  # settled twice
        ("decision", {"k": 5, "n": 5, "window_s": 0.25}, "cannot fit"),  # nobody ever accepted
    ],
)
def test_settings_that_would_switch_a_rule_off_are_refused(
    section: str, values: dict[str, float], problem: str
) -> None:
    with pytest.raises(ValidationError, match=problem):
        VisionSection.model_validate({section: values})


def test_a_camera_slower_than_a_track_gap_is_refused_where_nobody_would_be_decided() -> None:
    """At 1 frame/s with the default track_gap_s (0.7 s) each frame would end the track before:
    an enrolled elder looking at the camera for half a minute is never accepted."""
    slow = {"camera": {"fps": 1}, "decision": {"window_s": 3}}
    with pytest.raises(ValidationError, match=r"track_gap_s = 0\.7 s is shorter than"):
        VisionSection.model_validate(slow)
    kept = VisionSection.model_validate(slow | {"decision": {"window_s": 3, "track_gap_s": 1.5}})
    decider = Decider(Policy.from_config(kept.decision))
    seen = [face(float(i), "p1", "elder-1", 0.8) for i in range(30)]
    assert [d.outcome for d in run(decider, seen)] == [Outcome.ACCEPTED]


def test_k_strong_frames_must_be_among_the_last_n() -> None:
    """One strong frame in every five: three within the second, never three of the last five."""
    decider = Decider(POLICY)
    obs = [face(i / FPS, "p1", "elder-1", 0.7 if i % 5 == 0 else 0.3) for i in range(25)]
    assert run(decider, obs) == []


def test_a_frame_failing_liveness_now_and_then_is_not_a_spoof() -> None:
    """Spoof needs ``k`` failures among the last ``n`` frames, not within the whole second."""
    decider = Decider(POLICY)
    obs = [
        face(i / FPS, "p1", "elder-1", 0.7, runner_up=0.69, live=0.2 if i % 5 == 0 else 0.99)
        for i in range(40)
    ]
    (decision,) = run(decider, obs)
    assert decision.outcome is Outcome.UNCERTAIN


def test_a_score_exactly_at_the_accept_threshold_is_accepted() -> None:
    decider = Decider(POLICY)
    obs = frames(0.0, 10, who="p1", top="elder-1", score=POLICY.accept_threshold)
    assert [d.outcome for d in run(decider, obs)] == [Outcome.ACCEPTED]


def test_a_lead_exactly_at_the_margin_is_accepted() -> None:
    policy = replace(POLICY, margin=0.25)  # 0.75 - 0.5 is exact in binary
    obs = frames(0.0, 10, who="p1", top="elder-1", score=0.75, runner_up=0.5)
    assert [d.outcome for d in run(Decider(policy), obs)] == [Outcome.ACCEPTED]


def test_a_live_score_exactly_at_the_threshold_counts_as_live() -> None:
    """Accepted, not a spoof; and an uncertain face seen so is held for staff to confirm."""
    live = POLICY.liveness_threshold
    sure = frames(0.0, 10, who="p1", top="elder-1", score=0.7, live=live)
    assert [d.outcome for d in run(Decider(POLICY), sure)] == [Outcome.ACCEPTED]
    close = frames(0.0, 40, who="p1", top="elder-1", score=0.7, runner_up=0.69, live=live)
    (decision,) = run(Decider(POLICY), close)
    assert decision.outcome is Outcome.UNCERTAIN and decision.probe is not None


def test_half_the_voting_frames_live_is_not_most() -> None:
    decider = Decider(POLICY)
    lives = [0.3, 0.99, 0.3, 0.99]
    obs = [face(i / FPS, "p1", "elder-1", 0.8, live=v) for i, v in enumerate(lives)]
    assert run(decider, obs) == []


def test_a_track_of_exactly_n_frames_that_ends_gets_its_outcome() -> None:
    """``n`` usable frames of a stranger are ``unknown``; ``n`` unusable ones are ``no_face``."""
    stranger = Decider(POLICY)
    assert run(stranger, frames(0.0, POLICY.n, who="p9", top="elder-1", score=0.2)) == []
    assert [d.outcome for d in stranger.flush()] == [Outcome.UNKNOWN]
    unusable = Decider(POLICY)
    poor = [Observation(i / FPS, "poor_quality", reason="too_dark") for i in range(POLICY.n)]
    assert run(unusable, poor) == []
    assert [(d.outcome, d.reason) for d in unusable.flush()] == [(Outcome.NO_FACE, "too_dark")]


def test_a_face_never_usable_is_reported_once_also_when_it_goes() -> None:
    decider = Decider(POLICY)
    obs = [Observation(i / FPS, "poor_quality", reason="turned_away") for i in range(40)]
    assert [d.outcome for d in run(decider, obs)] == [Outcome.NO_FACE]
    assert decider.flush() == []


def test_a_visit_kept_from_a_second_acceptance_restarts_the_cooldown() -> None:
    """She is back just before the cooldown ends, only long enough to be recognised: the
    cooldown runs from then, so coming back soon after is no new meal either."""
    decider = Decider(POLICY)
    first = frames(0.0, POLICY.k, who="p1", top="elder-1", score=0.7)
    brief = frames(POLICY.cooldown_s - 1, POLICY.k, who="p1", top="elder-1", score=0.7)
    again = frames(POLICY.cooldown_s + 1, 10, who="p1", top="elder-1", score=0.7)
    out = run(decider, first + brief + again)
    assert [d.outcome for d in out] == [Outcome.ACCEPTED]
    assert decider.counters["cooldown_suppressed"] == 2


def test_an_elder_who_leaves_with_her_companion_is_in_cooldown_from_when_they_left() -> None:
    """A companion beside her longer than the cooldown, then both walk away; she comes back
    alone a few seconds later: the frames with both of them counted as her being there."""
    decider = Decider(POLICY)
    alone = frames(0.0, 15, who="p1", top="elder-1", score=0.7)
    together = [
        Observation(1.0 + i / FPS, "multiple_faces")
        for i in range(int((POLICY.cooldown_s + 10) * FPS))
    ]
    back = frames(together[-1].t + 5.0, 30, who="p1", top="elder-1", score=0.7)
    out = run(decider, alone + together + back)
    assert [(d.outcome, d.elder_id) for d in out] == [(Outcome.ACCEPTED, "elder-1")]


def test_a_score_exactly_at_the_candidate_threshold_is_offered_to_staff() -> None:
    score = POLICY.candidate_threshold
    (decision,) = run(Decider(POLICY), frames(0.0, 40, who="p1", top="elder-1", score=score))
    assert decision.outcome is Outcome.UNCERTAIN
    assert decision.candidates == (("elder-1", round(score, 4)),)


def test_staff_are_offered_the_top_three_candidates() -> None:
    elders = ["elder-1", "elder-2", "elder-3", "elder-4"]
    obs = [
        Observation(
            i / FPS,
            "face",
            embedding=person("p1"),
            search=SearchResult((elders[i % 4], "elder-z"), (0.5 + 0.01 * (i % 4), 0.1)),
            live_score=0.99,
        )
        for i in range(40)
    ]
    (decision,) = run(Decider(POLICY), obs)
    assert [c[0] for c in decision.candidates] == ["elder-4", "elder-3", "elder-2"]


def test_a_late_confirmation_does_not_shorten_the_cooldown_of_a_later_acceptance() -> None:
    """Staff confirm an old ``uncertain`` only after the counter accepted her on a later
    visit: her cooldown still runs from that visit."""
    decider = Decider(POLICY)
    unsure = run(decider, frames(0.0, int(3 * FPS), who="p1", top="elder-1", score=0.5))
    assert [d.outcome for d in unsure] == [Outcome.UNCERTAIN]
    later = frames(100.0, 10, who="p1", top="elder-1", score=0.7)
    assert [d.outcome for d in run(decider, later)] == [Outcome.ACCEPTED]
    decider.settled("elder-1", unsure[0].t, unsure[0].track)
    back = frames(later[-1].t + POLICY.cooldown_s - 5, 10, who="p1", top="elder-1", score=0.7)
    assert run(decider, back) == []


@pytest.mark.parametrize(
    ("failing", "reason"), [(set(), "too_few_frames"), ({1, 11, 21}, "liveness")]
)
def test_staff_hear_why_strong_frames_of_one_elder_were_not_enough(
    failing: set[int], reason: str
) -> None:
    """One strong frame in five is too few; when half of those fail liveness, that is why."""
    obs = [
        face(
            i / FPS, "p1", "elder-1", 0.7 if i % 5 == 1 else 0.3, live=0.2 if i in failing else 0.99
        )
        for i in range(40)
    ]
    (decision,) = run(Decider(POLICY), obs)
    assert (decision.outcome, decision.reason) == (Outcome.UNCERTAIN, reason)


def close_call(
    t: float, top: str, other: str, *, score: float, lead: float, who: str = "p1"
) -> Observation:
    """A frame whose runner-up is another elder, ``lead`` behind."""
    search = SearchResult((top, other), (score, score - lead))
    return Observation(t, "face", embedding=person(who), search=search, live_score=0.99)


def calls(
    start: float, count: int, top: str, other: str, *, score: float, lead: float, who: str = "p1"
) -> list[Observation]:
    return [
        close_call(start + i / FPS, top, other, score=score, lead=lead, who=who)
        for i in range(count)
    ]


def test_an_elder_settled_by_hand_who_comes_back_recognised_as_another_is_not_charged_again() -> (
    None
):
    """A close call between A and B, settled by hand as A; she steps away and comes back
    within A's cooldown, now scoring B clearly: B must not pay for A's meal. Staff hear why,
    and someone else recognised as B meanwhile is accepted as usual."""
    decider = Decider(POLICY)
    (unsure,) = run(decider, calls(0.0, int(3 * FPS), "elder-a", "elder-b", score=0.5, lead=0.01))
    assert unsure.outcome is Outcome.UNCERTAIN and unsure.probe is not None
    decider.settled("elder-a", unsure.t, unsure.track, unsure.probe)
    back = calls(5.0, int(3 * FPS), "elder-b", "elder-a", score=0.6, lead=0.08)
    (again,) = run(decider, back)
    assert (again.outcome, again.reason, again.elder_id) == (
        Outcome.UNCERTAIN,
        "served_as_other",
        None,
    )
    assert dict(again.candidates) == pytest.approx({"elder-a": 1.0, "elder-b": 0.6})
    other = calls(10.0, int(FPS), "elder-b", "elder-a", score=0.6, lead=0.08, who="p2")
    assert [(d.outcome, d.elder_id) for d in run(decider, other)] == [(Outcome.ACCEPTED, "elder-b")]


def test_a_face_accepted_as_one_elder_is_not_accepted_as_another_within_her_cooldown() -> None:
    """Accepted as A, she comes back recognised as B and stays past the cooldown (it runs on
    while she is in view), looks away and back: never accepted as B."""
    decider = Decider(POLICY)
    (first,) = run(decider, frames(0.0, 10, who="p1", top="elder-a", score=0.6))
    assert (first.outcome, first.elder_id) == (Outcome.ACCEPTED, "elder-a")
    back = frames(5.0, int((POLICY.cooldown_s + 5) * FPS), who="p1", top="elder-b", score=0.6)
    again = frames(back[-1].t + 1.0, 10, who="p1", top="elder-b", score=0.6)
    out = run(decider, back + again)
    assert [(d.outcome, d.reason) for d in out] == [(Outcome.UNCERTAIN, "served_as_other")] * 2
    assert {elder for elder, _ in out[0].candidates} == {"elder-a", "elder-b"}
    # once her cooldown has run out, nothing of her face is kept and the rules apply afresh
    later = frames(again[-1].t + POLICY.cooldown_s + 1, 10, who="p1", top="elder-b", score=0.6)
    assert [(d.outcome, d.elder_id) for d in run(decider, later)] == [(Outcome.ACCEPTED, "elder-b")]


def test_a_confirmation_while_she_is_still_in_view_keeps_that_track_from_an_acceptance() -> None:
    """Uncertain, she turns away and back, and staff confirm A while the new track is still
    undecided; then the counter recognises her clearly as B: nobody is charged again."""
    decider = Decider(POLICY)
    first = calls(0.0, int(3 * FPS), "elder-a", "elder-b", score=0.5, lead=0.01)
    (unsure,) = run(decider, first)
    start = first[-1].t + 1.0
    assert run(decider, calls(start, 3, "elder-a", "elder-b", score=0.5, lead=0.01)) == []
    track = decider.track
    assert track is not None and track.id != unsure.track
    decider.settled("elder-a", unsure.t, unsure.track, unsure.probe)
    clear = calls(start + 0.2, int(3 * FPS), "elder-b", "elder-a", score=0.6, lead=0.08)
    assert run(decider, clear) == []
    assert "elder-a" in decider.cooldowns(clear[-1].t + POLICY.cooldown_s - 1)


def test_a_confirmation_leaves_the_track_of_another_elder_accepted_in_view_hers() -> None:
    """B is accepted and stays at the counter; staff confirm an earlier close call as A, whose
    face looks somewhat like B's (enough for track continuity, not for an identity). B lingers
    past the cooldown, looks away and back: her meal was settled once, and stays so."""
    decider = Decider(POLICY)
    unsure = run(decider, frames(0.0, int(3 * FPS), who="p1", top="elder-a", score=0.5))
    b = person("p2")
    orthogonal = person("p1") - (person("p1") @ b) * b
    probe = (0.4 * b + np.sqrt(1 - 0.16) * orthogonal / np.linalg.norm(orthogonal)).astype(
        np.float32
    )
    stays = frames(5.0, int((POLICY.cooldown_s + 5) * FPS), who="p2", top="elder-b", score=0.7)
    out = run(decider, stays[:15])
    decider.settled("elder-a", unsure[0].t, unsure[0].track, probe)
    out += run(decider, stays[15:])
    back = frames(stays[-1].t + 1.0, 15, who="p2", top="elder-b", score=0.7)
    out += run(decider, back)
    assert [(d.outcome, d.elder_id) for d in out] == [(Outcome.ACCEPTED, "elder-b")]


def test_strong_frames_for_another_elder_earlier_in_the_track_are_not_outvoted() -> None:
    """Three strong frames for B, then A in every frame: never accepted as A, but uncertain
    between the two."""
    decider = Decider(POLICY)
    order = ["elder-b", "elder-b", "elder-a", "elder-b"] + ["elder-a"] * 40
    obs = [
        close_call(i / 10, top, "elder-b" if top == "elder-a" else "elder-a", score=0.6, lead=0.08)
        for i, top in enumerate(order)
    ]
    (decision,) = run(decider, obs)
    assert (decision.outcome, decision.reason) == (Outcome.UNCERTAIN, "inconsistent")
    assert {elder for elder, _ in decision.candidates} == {"elder-a", "elder-b"}


def test_strong_frames_for_another_elder_before_a_no_face_are_not_outvoted() -> None:
    """Two strong frames for B, then she looks down long enough for a no_face, then looks up
    and A leads: the same face, so B's frames still count and A is not accepted."""
    decider = Decider(POLICY)
    before = calls(0.0, 2, "elder-b", "elder-a", score=0.6, lead=0.08)
    down = [
        Observation(before[-1].t + (i + 1) / FPS, "poor_quality", reason="tilted")
        for i in range(int(POLICY.decide_within_s * FPS) + 8)
    ]
    up = calls(down[-1].t + 1 / FPS, int(3 * FPS), "elder-a", "elder-b", score=0.6, lead=0.08)
    out = run(decider, before + down + up)
    assert [d.outcome for d in out] == [Outcome.NO_FACE, Outcome.UNCERTAIN]
    assert {elder for elder, _ in out[1].candidates} == {"elder-a", "elder-b"}


def test_an_uncertain_elder_with_a_companion_beside_her_is_not_decided_again() -> None:
    """Uncertain, so staff serve her by hand; a companion leans in beside her for a second,
    then steps away, and she is closer to the camera now. A frame with two faces is not one
    without her: her track goes on, and no second decision (an acceptance charged on top of
    the hand settlement) is made for the same visit."""
    alone = frames(0.0, 45, who="p1", top="elder-1", score=0.5)
    beside = [Observation(3.0 + i / FPS, "multiple_faces") for i in range(18)]
    again = frames(4.2, 45, who="p1", top="elder-1", score=0.56)
    out = run(Decider(POLICY), alone + beside + again)
    assert [d.outcome for d in out] == [Outcome.UNCERTAIN]


def no_frames(start: float, seconds: float) -> list[Observation]:
    """The camera lost: the counter looks for a frame every 0.2 s and none comes."""
    return [Observation(start + i * 0.2, "no_frame") for i in range(round(seconds / 0.2))]


def test_an_elder_still_there_after_the_camera_came_back_is_not_charged_again() -> None:
    """Accepted, then the camera is lost for longer than the cooldown (a USB camera pulled
    and plugged back, an IP camera rebooting) while she stays at the counter: time without
    frames is not time she was seen to be gone, and her meal is not charged twice."""
    before = frames(0.0, 15, who="p1", top="elder-1", score=0.7)
    after = frames(71.0, 30, who="p1", top="elder-1", score=0.7)
    out = run(Decider(POLICY), before + no_frames(1.0, 70.0) + after)
    assert [d.outcome for d in out] == [Outcome.ACCEPTED]


def test_after_a_camera_outage_someone_else_or_a_later_visit_is_decided_anew() -> None:
    """The bridge holds only her own face, and only for ``bridge_outage_s``."""
    before = frames(0.0, 15, who="p1", top="elder-1", score=0.7)
    other = frames(71.0, 30, who="p2", top="elder-2", score=0.7)
    out = run(Decider(POLICY), before + no_frames(1.0, 70.0) + other)
    assert [(d.outcome, d.elder_id) for d in out] == [
        (Outcome.ACCEPTED, "elder-1"),
        (Outcome.ACCEPTED, "elder-2"),
    ]
    short = replace(POLICY, bridge_outage_s=30.0)
    later = frames(101.0, 30, who="p1", top="elder-1", score=0.7)
    out = run(Decider(short), before + no_frames(1.0, 100.0) + later)
    assert [d.outcome for d in out] == [Outcome.ACCEPTED, Outcome.ACCEPTED]


def look_alike(who: str, similarity: float) -> np.ndarray:
    """A face as like ``who``'s as a stranger's can be (0.41: one LFW pair in 600)."""
    base = person(who)
    other = person(who + "'s look-alike")
    other -= float(other @ base) * base
    other /= np.linalg.norm(other)
    return (similarity * base + np.sqrt(1 - similarity**2) * other).astype(np.float32)


def test_a_stranger_after_a_camera_outage_is_not_taken_for_the_elder_before() -> None:
    """Frames a moment apart continue a track on a loose likeness; after an outage the one
    at the counter may have changed, and another elder must be decided, not left waiting."""
    before = frames(0.0, 15, who="p1", top="elder-1", score=0.7)
    search = SearchResult(("elder-2", "elder-z"), (0.7, 0.1))
    face_2 = look_alike("p1", 0.41)
    after = [
        Observation(71.0 + i / FPS, "face", embedding=face_2, search=search, live_score=0.99)
        for i in range(30)
    ]
    out = run(Decider(POLICY), before + no_frames(1.0, 70.0) + after)
    assert [(d.outcome, d.elder_id) for d in out] == [
        (Outcome.ACCEPTED, "elder-1"),
        (Outcome.ACCEPTED, "elder-2"),
    ]


@pytest.mark.parametrize("blank", ["after", "before"])
def test_frames_without_her_face_around_a_camera_outage_do_not_end_her_visit(blank: str) -> None:
    """A USB camera's first frames after a reopen are dark while its exposure settles, and
    the last before an outage may miss her too: only time with frames counts."""
    before = frames(0.0, 15, who="p1", top="elder-1", score=0.7)
    dark = [Observation(t, "no_face") for t in (0.99, 1.06, 1.13, 1.19, 1.26)]
    start = 1.33 if blank == "before" else 1.0
    lost = no_frames(start, 70.0)
    back_at = lost[-1].t + 0.2
    after_dark = [Observation(back_at + i / FPS, "no_face") for i in range(5)]
    after = frames(
        back_at + (5 if blank == "after" else 0) / FPS, 30, who="p1", top="elder-1", score=0.7
    )
    observations = before + (dark if blank == "before" else []) + lost
    observations += (after_dark if blank == "after" else []) + after
    out = run(Decider(POLICY), observations)
    assert [d.outcome for d in out] == [Outcome.ACCEPTED]


def test_an_elder_back_after_an_outage_taken_for_another_is_not_charged_as_her() -> None:
    """Accepted as elder-1; the camera is lost for longer than the cooldown; she turns away a
    moment after it is back, and is then recognised as elder-2 (a look-alike). Her face as
    served is kept while she counts as still there: uncertain for staff, not a second meal."""
    before = frames(0.0, 15, who="p1", top="elder-1", score=0.7)
    back = frames(71.0, 5, who="p1", top="elder-1", score=0.7)
    away = [Observation(71.4 + i / FPS, "no_face") for i in range(15)]
    as_other = frames(72.4, 45, who="p1", top="elder-2", score=0.7)
    out = run(Decider(POLICY), before + no_frames(1.0, 70.0) + back + away + as_other)
    assert [(d.outcome, d.reason) for d in out] == [
        (Outcome.ACCEPTED, None),
        (Outcome.UNCERTAIN, "served_as_other"),
    ]


def test_an_elder_being_decided_when_the_camera_is_lost_is_said_uncertain_at_once() -> None:
    """Staff hear of her while the camera is gone, and serve her by hand."""
    before = frames(0.0, 20, who="p1", top="elder-1", score=0.5)
    out = run(Decider(POLICY), before + no_frames(1.4, 10.0))
    assert [d.outcome for d in out] == [Outcome.UNCERTAIN]
    decider = Decider(POLICY)
    run(decider, before)
    assert decider.observe(Observation(1.4, "no_frame")) == []
    assert [d.outcome for d in decider.observe(Observation(2.1, "no_frame"))] == [Outcome.UNCERTAIN]


def test_scores_exactly_at_the_thresholds_pass_though_float32_rounds_them() -> None:
    """The gallery's scores are float32: 0.57 and 0.55 differ by 0.0199999, and the lead of
    exactly the margin the policy asks for must count as "at or above" it."""
    top, runner_up = np.float32(0.57), np.float32(0.55)
    policy = replace(POLICY, accept_threshold=float(np.float32(0.55)), margin=0.02)
    out = run(
        Decider(policy),
        frames(0.0, 5, who="p1", top="elder-1", score=float(top), runner_up=float(runner_up)),
    )
    assert [d.outcome for d in out] == [Outcome.ACCEPTED]


def test_a_tie_is_never_accepted_at_the_least_margin_allowed() -> None:
    with pytest.raises(ValidationError):
        DecisionSection(margin=0.0005)
    policy = replace(POLICY, margin=DecisionSection(margin=0.001).margin)
    out = run(Decider(policy), frames(0.0, 45, who="p1", top="elder-1", score=0.7, runner_up=0.7))
    assert [(d.outcome, d.reason) for d in out] == [(Outcome.UNCERTAIN, "close_candidates")]


def test_a_liveness_score_that_is_not_a_number_counts_as_not_live() -> None:
    """A model that returns NaN has not said the face is live: never accepted on it, and the
    decision stays valid JSON."""
    out = run(
        Decider(POLICY), frames(0.0, 30, who="p1", top="elder-1", score=0.7, live=float("nan"))
    )
    assert [d.outcome for d in out] == [Outcome.SPOOF]
    assert out[0].liveness is not None and np.isfinite(out[0].liveness)


def test_a_slow_camera_leaving_the_counter_without_a_frame_between_two_is_no_outage() -> None:
    """At 2 frames a second the counter finds no frame at most of its looks: her decision
    is still made within ``decide_within_s``, not put off at every frame."""
    observations: list[Observation] = []
    for i in range(20):
        t = i * 0.5
        observations.append(face(t, "p1", "elder-1", 0.5))
        observations += [Observation(t + 0.2, "no_frame"), Observation(t + 0.4, "no_frame")]
    out = run(Decider(POLICY), observations)
    assert [d.outcome for d in out] == [Outcome.UNCERTAIN]
    assert out[0].t <= POLICY.decide_within_s + 0.5


def slow_camera(
    start: float, seconds: float, shown: Callable[[float], Observation]
) -> list[Observation]:
    """2 frames a second, the counter finding no frame at its looks between them."""
    out: list[Observation] = []
    for i in range(int(seconds * 2)):
        t = start + i * 0.5
        out += [shown(t), Observation(t + 0.2, "no_frame"), Observation(t + 0.4, "no_frame")]
    return out


def test_a_slow_camera_is_no_outage_even_when_outages_are_not_bridged() -> None:
    """``bridge_outage_s = 0`` ends a held track at an outage, not between two frames of a
    slow camera: an elder decided uncertain is not decided again and again while she stays."""
    policy = replace(POLICY, bridge_outage_s=0.0)
    unsure = slow_camera(0.0, 8.0, lambda t: face(t, "p1", "elder-1", 0.5))
    sure = slow_camera(8.0, 4.0, lambda t: face(t, "p1", "elder-1", 0.7))
    out = run(Decider(policy), unsure + sure)
    assert [d.outcome for d in out] == [Outcome.UNCERTAIN]


def test_a_print_held_over_a_camera_outage_does_not_swallow_the_next_elder() -> None:
    """A print held tilted gives no face to compare: after an outage its track takes
    nobody in, and the elder who steps up is decided."""
    tilted = [
        Observation(i / FPS, "poor_quality", live_score=0.2, reason="turned_away")
        for i in range(15)
    ]
    after = frames(71.0, 30, who="p2", top="elder-2", score=0.7)
    out = run(Decider(POLICY), tilted + no_frames(1.0, 70.0) + after)
    assert [(d.outcome, d.elder_id) for d in out] == [
        (Outcome.SPOOF, None),
        (Outcome.ACCEPTED, "elder-2"),
    ]


def test_a_flapping_camera_holds_a_track_for_its_outages_in_all_not_for_ever() -> None:
    """A failing camera that sends one frame a minute (nobody in it) for an hour: the outages
    add up past ``bridge_outage_s``, and she, back at the counter an hour later, is a new
    visit."""
    observations = frames(0.0, 15, who="p1", top="elder-1", score=0.7)
    t = 1.0
    while t < 3600:
        observations += no_frames(t, 60.0)
        t += 60.0
        observations.append(Observation(t, "no_face"))
        t += 0.2
    observations += frames(t + 0.2, 30, who="p1", top="elder-1", score=0.7)
    out = run(Decider(POLICY), observations)
    assert [d.outcome for d in out] == [Outcome.ACCEPTED, Outcome.ACCEPTED]


def test_a_camera_sending_a_frame_every_two_seconds_ends_a_held_track_in_the_end() -> None:
    """Every frame comes back from an outage, so the track is never ended while waiting for
    one: the outages still add up at the frames, and she, back later, is a new visit."""
    observations = frames(0.0, 15, who="p1", top="elder-1", score=0.7)
    t = 1.0
    while t < 900:
        observations += [Observation(t + 0.2 * i, "no_frame") for i in range(1, 11)]
        t += 2.1
        observations.append(Observation(t, "no_face"))
    observations += frames(t + 0.1, 30, who="p1", top="elder-1", score=0.7)
    out = run(Decider(POLICY), observations)
    assert [d.outcome for d in out] == [Outcome.ACCEPTED, Outcome.ACCEPTED]


def test_a_camera_slower_than_two_seconds_but_within_the_track_gap_is_no_outage() -> None:
    """A site that allows 3 s between frames (a dim counter): a frame every 2.2 s is the
    camera working, and an elder decided uncertain who stays ten minutes is decided once."""
    policy = replace(POLICY, track_gap_s=3.0)
    observations: list[Observation] = []
    t = 0.0
    while t < 600:
        observations.append(face(t, "p1", "elder-1", 0.5))
        observations += [Observation(t + 0.2 * i, "no_frame") for i in range(1, 11)]
        t += 2.2
    out = run(Decider(policy), observations)
    assert [d.outcome for d in out] == [Outcome.UNCERTAIN]
