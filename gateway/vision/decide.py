"""The decision for one face track: pure rules over per-frame evidence, no clock of its own.

A track is one person in front of the camera: consecutive usable frames whose embeddings stay
similar, ended by a gap without a face. The gateway accepts an identity only when, within the
last ``n`` frames of a short window, the same elder is the best match in at least ``k`` frames
with a score at or above the accept threshold and a clear margin over the runner-up, no other
elder is (there, nor anywhere earlier in the track), most of those frames look live, no frame
of that window showed a second face of similar size, and the face is not one served as
another elder still in cooldown. Otherwise, once the track has had its time, it says
``uncertain`` (with candidates for staff) or ``unknown``. A track yields at most one decision
(besides a ``no_face``, which leaves it open: the face may still become usable);
``multiple_faces`` ends the track, and after an acceptance the elder is in cooldown so that
turning away and back does not settle twice.

Time comes from the frames' timestamps, so replaying recorded frames gives the same decisions.
"""

from __future__ import annotations

import math
import statistics
from collections import Counter, deque
from collections.abc import Collection
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Literal

import numpy as np

from gateway.vision.calibrate import at_or_above
from gateway.vision.config import DecisionSection
from gateway.vision.gallery import SearchResult


class Outcome(StrEnum):
    ACCEPTED = "accepted"
    UNCERTAIN = "uncertain"
    UNKNOWN = "unknown"
    SPOOF = "spoof"
    NO_FACE = "no_face"
    MULTIPLE_FACES = "multiple_faces"


@dataclass(frozen=True)
class Policy:
    """The rules' parameters; defaults and their meaning live in ``[vision.decision]``."""

    accept_threshold: float
    candidate_threshold: float
    margin: float
    k: int
    n: int
    window_s: float
    liveness_threshold: float
    decide_within_s: float
    cooldown_s: float
    track_gap_s: float
    same_person: float
    verify_threshold: float
    ambiguity_frames: int
    bridge_outage_s: float

    @classmethod
    def from_config(cls, section: DecisionSection) -> Policy:
        return cls(**section.model_dump(exclude={"calibrated_for_elders", "confirm_within_s"}))


# no_frame: no frame came at all (the camera lost), which says nothing of who is there
ObservationKind = Literal["face", "poor_quality", "no_face", "multiple_faces", "no_frame"]
# No frame this long (or track_gap_s, if longer), the counter having looked for one: the
# camera is lost (unplugged, rebooting), not merely slow (the config asks for a frame at
# least every track_gap_s).
OUTAGE_S = 2.0


@dataclass(frozen=True)
class Observation:
    """What one analysed frame tells the decider."""

    t: float
    kind: ObservationKind
    embedding: np.ndarray | None = None
    search: SearchResult | None = None
    live_score: float | None = None
    reason: str | None = None


@dataclass(frozen=True)
class Evidence:
    t: float
    top: str | None
    top_score: float
    margin: float
    live: float
    candidates: tuple[tuple[str, float], ...]
    embedding: np.ndarray | None = field(default=None, repr=False, compare=False)
    learned_from: str | None = None


@dataclass(frozen=True)
class Decision:
    outcome: Outcome
    t: float
    track: int
    track_started: float
    elder_id: str | None = None
    score: float | None = None
    margin: float | None = None
    candidates: tuple[tuple[str, float], ...] = ()
    frames_used: int = 0
    frames_seen: int = 0
    liveness: float | None = None
    reason: str | None = None
    # accepted only: the staff-confirmed decision whose learned face matched best in most
    # of the frames used (None: the enrolled photos did), so a wrong one can be undone
    learned_from: str | None = None
    # uncertain only: the track's face (mean of its live frames), for staff to confirm
    probe: np.ndarray | None = field(default=None, repr=False, compare=False)
    # every elder among the closest matches of any of the track's frames, whatever the
    # outcome (a spoof names nobody, but may hold an elder's face): an audit frame's header
    # lists them so that each one's erasure finds it. Never sent.
    seen: tuple[str, ...] = field(default=(), compare=False)


@dataclass
class Track:
    id: int
    started: float
    last_seen: float
    last_embedding: np.ndarray | None = None
    evidence: list[Evidence] = field(default_factory=list)
    frames_seen: int = 0
    poor: Counter[str] = field(default_factory=Counter)
    lives: list[tuple[float, float]] = field(default_factory=list)
    decided: bool = False
    # accepted, kept from a second acceptance by the cooldown, or settled by staff
    elder: str | None = None
    unusable_reported: bool = False  # no_face said; she may still look up and be identified
    # the decision time runs from here: the track's start, or after a no_face her first usable
    # frame since (None until she looks up)
    decide_from: float | None = None
    # held over a camera outage: the next face goes on with it only if it is hers for sure
    bridged: bool = False
    dark_s: float = 0.0  # outages it was held over, in all: at most bridge_outage_s


def _median(values: list[float]) -> float | None:
    return float(statistics.median(values)) if values else None


def _unit_mean(embeddings: list[np.ndarray]) -> np.ndarray | None:
    """The direction the embeddings share (None: none, or they cancel out)."""
    if not embeddings:
        return None
    mean = np.mean(np.stack(embeddings), axis=0)
    norm = float(np.linalg.norm(mean))
    return (mean / norm).astype(np.float32) if norm > 0 else None


def candidates_of(
    evidence: list[Evidence], floor: float, limit: int = 3
) -> list[tuple[str, float]]:
    """Elders seen among the frames' best matches, by their best score, at or above ``floor``."""
    best: dict[str, float] = {}
    for e in evidence:
        for elder, score in e.candidates:
            best[elder] = max(score, best.get(elder, -1.0))
    ranked = sorted(best.items(), key=lambda kv: (-kv[1], kv[0]))
    return [(elder, round(score, 4)) for elder, score in ranked if score >= floor][:limit]


def without(evidence: Evidence, gone: Collection[str]) -> Evidence:
    """A frame's evidence with erased elders taken out of it. A frame one of them topped votes
    for nobody (its runner-up's margin over the elders further down is not known), and a
    frame's margin is never widened: forgetting someone makes no frame surer of anyone else."""
    kept = tuple((elder, score) for elder, score in evidence.candidates if elder not in gone)
    if len(kept) == len(evidence.candidates):
        return evidence
    if evidence.top in gone:
        return replace(
            evidence, top=None, top_score=-1.0, margin=0.0, candidates=kept, learned_from=None
        )
    return replace(evidence, candidates=kept)


class Decider:
    """Feeds observations in time order; returns the decisions they complete."""

    def __init__(self, policy: Policy) -> None:
        self.policy = policy
        self.track: Track | None = None
        self._next_track = 1
        self._accepted_at: dict[str, float] = {}
        self._ambiguous_at: deque[float] = deque()  # frames with a second face, last window_s
        self._ambiguity_reported_at: float | None = None
        # a second face seen again and again, too seldom for multiple_faces: one report a spell
        self._last_second_face: float | None = None
        self._kept_reported = False
        self._frame_at: float | None = None  # the last frame, whatever it showed
        self._outage = False  # no_frame said since that frame: the camera is lost
        self.counters: Counter[str] = Counter()
        self.settlements = 0  # staff confirmations taken into the cooldown
        # elder -> the faces served as her (accepted, or settled by staff), while she is in
        # cooldown: the same face recognised as someone else then is not a second meal
        self._served: dict[str, list[np.ndarray]] = {}

    def observe(self, obs: Observation) -> list[Decision]:
        if obs.kind == "no_frame":
            return self._no_frame(obs.t)
        out: list[Decision] = []
        p = self.policy
        if obs.live_score is not None and not math.isfinite(obs.live_score):
            obs = replace(obs, live_score=0.0)  # a model's NaN has not said the face is live
        track = self.track
        if track is not None and self._back_from_outage(obs.t):
            assert self._frame_at is not None
            dark = obs.t - self._frame_at
            track.last_seen += dark  # only time with frames ends a track
            track.dark_s += dark
            track.bridged = True
        self._frame_at, self._outage = obs.t, False
        self._forget_served(obs.t)
        if track is not None and (
            obs.t - track.last_seen > p.track_gap_s or track.dark_s > p.bridge_outage_s
        ):
            out += self._close(track)
        if obs.kind == "multiple_faces":
            self._beside_someone(obs.t)
            out += self._ambiguous(obs.t)
            return out
        if obs.kind == "no_face":
            return out
        if obs.kind == "face" and self.track is not None and not self._continues(self.track, obs):
            out += self._close(self.track)
        track = self.track or self._open(obs.t)
        track.last_seen = obs.t
        track.frames_seen += 1
        if track.decided:  # only continuity matters now; a face left in view must not pile up
            if obs.embedding is not None:
                track.last_embedding = obs.embedding
            if track.elder is not None:  # the cooldown runs from when she was last seen
                self._accepted_at[track.elder] = obs.t
            return out
        if obs.live_score is not None:
            track.lives.append((obs.t, obs.live_score))
        if obs.kind == "poor_quality":
            track.poor[obs.reason or "poor_quality"] += 1
        else:
            if track.decide_from is None:
                track.decide_from = obs.t
            track.last_embedding = obs.embedding
            track.evidence.append(self._evidence(obs))
        return out + self._evaluate(track, obs.t)

    def settled(self, elder: str, t: float, track: int, probe: np.ndarray | None = None) -> None:
        """Staff settled an ``uncertain`` decision by hand and said who it was: the elder is in
        cooldown as if accepted at ``t``, her face (``probe``) counts as served as her, and
        the track in view stays hers for as long as she stays (the decision's track, or the
        one in view now if it shows the face staff confirmed, by the accept threshold: the
        looser track continuity would take in a look-alike), so the counter neither settles
        the same meal a second time once it recognises her, nor charges her meal to another
        elder it takes her for. A track accepted for another elder stays that elder's."""
        self._accepted_at[elder] = max(t, self._accepted_at.get(elder, t))
        self.settlements += 1
        if probe is not None:
            self._served.setdefault(elder, []).append(probe)
        current = self.track
        if current is None or current.elder not in (None, elder):
            return
        shows_her = (
            probe is not None
            and current.last_embedding is not None
            and float(current.last_embedding @ probe) >= self.policy.accept_threshold
        )
        if current.id == track or shows_her:
            current.elder = elder
            current.decided = True

    def forget(self, gone: Collection[str]) -> None:
        """Elders erased from the gallery: the open track's frames seen before no longer name
        them, so a decision made after the reload (an uncertain one lists the candidates of
        all the track's frames) does not name her either; the faces served as them and their
        cooldowns go (an id enrolled again is somebody new, not one who just ate)."""
        track = self.track
        if track is not None and gone:
            track.evidence = [without(e, gone) for e in track.evidence]
        for elder in gone:
            self._served.pop(elder, None)
            self._accepted_at.pop(elder, None)

    def cooldowns(self, t: float) -> dict[str, float]:
        """Elder -> seconds since last seen, for those still in cooldown at ``t``."""
        return {
            elder: t - at
            for elder, at in self._accepted_at.items()
            if t - at < self.policy.cooldown_s
        }

    def flush(self) -> list[Decision]:
        """End the current track (the source ended or the service stops)."""
        return self._close(self.track) if self.track is not None else []

    # ---- tracks -----------------------------------------------------------------------------

    def _open(self, t: float) -> Track:
        self.track = Track(id=self._next_track, started=t, last_seen=t, decide_from=t)
        self._next_track += 1
        return self.track

    def _continues(self, track: Track, obs: Observation) -> bool:
        """Frames a moment apart: a loose likeness will do. After a camera outage the person
        may have changed, and a stranger must not be taken into an elder's decided track (no
        decision for them, her cooldown run on with their face): hers for sure, or a new one."""
        if track.bridged and obs.embedding is not None:
            track.bridged = False  # a track with no face to compare (a tilted print) takes nobody
            return track.last_embedding is not None and at_or_above(
                float(track.last_embedding @ obs.embedding), self.policy.accept_threshold
            )
        if track.last_embedding is None or obs.embedding is None:
            return True
        return float(track.last_embedding @ obs.embedding) >= self.policy.same_person

    def _close(self, track: Track) -> list[Decision]:
        self.track = None
        if track.decided:
            return []
        decision = self._had_its_frames(track, track.last_seen)
        if decision is None:
            if not track.unusable_reported:
                self.counters["tracks_abandoned"] += 1
            return []
        return [decision]

    def _evidence(self, obs: Observation) -> Evidence:
        search = obs.search or SearchResult((), ())
        return Evidence(
            t=obs.t,
            top=search.top,
            top_score=search.top_score,
            margin=search.margin,
            live=1.0 if obs.live_score is None else obs.live_score,
            candidates=tuple(zip(search.elders, search.scores, strict=True)),
            embedding=obs.embedding,
            learned_from=search.learned_from,
        )

    def _no_frame(self, t: float) -> list[Decision]:
        """No frame came by ``t``. A track still being decided ends as without her face:
        staff hear of her at once (``uncertain``) and serve her by hand. Time without frames
        is not time a decided track was seen to be gone: it is held up to ``bridge_outage_s``
        (her face after it goes on with it, so an elder accepted or decided ``uncertain``
        before is not decided again), and an elder it holds counts as still there, so her
        cooldown and the faces served as her do not run out meanwhile."""
        if self._frame_at is None:
            return []
        p = self.policy
        self._outage = True
        out: list[Decision] = []
        track = self.track
        if track is not None:
            seen_gone = self._frame_at - track.last_seen > p.track_gap_s
            dark = t - self._frame_at
            if not track.decided:
                ended = t - track.last_seen > p.track_gap_s
            else:  # a slow camera is not lost; a flapping one is held for the sum of its outages
                lost = dark > self._outage_s and track.dark_s + dark > p.bridge_outage_s
                ended = seen_gone or lost
            if ended:
                out += self._close(track)
            elif track.elder is not None:
                self._accepted_at[track.elder] = t
        self._forget_served(t)
        return out

    def _back_from_outage(self, t: float) -> bool:
        return self._outage and self._frame_at is not None and t - self._frame_at > self._outage_s

    @property
    def _outage_s(self) -> float:
        return max(OUTAGE_S, self.policy.track_gap_s)

    def _beside_someone(self, t: float) -> None:
        """A frame with two faces of similar size does not say the person in view has gone:
        her track stays open, decided or not, so the gap cannot end it while the other is
        still there. Undecided, it would end with an ``uncertain`` (staff would serve her by
        hand, and then the counter accept her once alone); decided, she would be decided again
        once alone. A settled elder counts as still seen: a companion standing beside her for
        a minute must not let her cooldown run out, or she is settled again once alone (if it
        was someone else, the cooldown merely runs longer)."""
        track = self.track
        if track is None:
            return
        track.last_seen = t
        if track.elder is not None:
            self._accepted_at[track.elder] = t

    def _ambiguous(self, t: float) -> list[Decision]:
        """Counted within the window, not only in a row: a second face the detector finds in
        most frames but not all is still a second person at the counter."""
        p = self.policy
        self._ambiguous_at.append(t)
        while t - self._ambiguous_at[0] > p.window_s:
            self._ambiguous_at.popleft()
        if self._last_second_face is None or t - self._last_second_face > p.decide_within_s:
            self._kept_reported = False  # a new spell of second faces
        self._last_second_face = t
        reported = self._ambiguity_reported_at
        if reported is not None and t - reported <= p.track_gap_s:
            self._ambiguity_reported_at = t
            return []
        if len(self._ambiguous_at) < p.ambiguity_frames:
            return []
        return self._report_ambiguity(self.track, t, "another face of similar size")

    def _report_ambiguity(self, track: Track | None, t: float, reason: str) -> list[Decision]:
        self._ambiguity_reported_at = t
        if track is not None:
            if track.decided:
                return []
            # its frames cannot say who is paying: whoever stays starts a new track
            track.decided = True
            self.track = None
        self.counters["multiple_faces"] += 1
        return [
            Decision(
                Outcome.MULTIPLE_FACES,
                t,
                track=track.id if track else 0,
                track_started=track.started if track else t,
                frames_seen=len(self._ambiguous_at),
                reason=reason,
            )
        ]

    def at_rest(self, t: float) -> bool:
        """Nobody in view as far as the rules remember: no track open and no second face
        within the longest span a rule looks back over. Until then a frame not analysed would
        change what a later one decides (a track cut short, a pair reported twice)."""
        p = self.policy
        last = self._last_second_face
        recalled = max(p.window_s, p.track_gap_s, p.decide_within_s)
        return self.track is None and (last is None or t - last > recalled)

    def _second_face_lately(self, t: float) -> bool:
        return bool(self._ambiguous_at) and t - self._ambiguous_at[-1] <= self.policy.window_s

    # ---- rules ------------------------------------------------------------------------------

    def _evaluate(self, track: Track, t: float) -> list[Decision]:
        p = self.policy
        recent = [e for e in track.evidence if t - e.t <= p.window_s][-p.n :]
        lives = [live for at, live in track.lives if t - at <= p.window_s][-p.n :]
        if sum(1 for live in lives if live < p.liveness_threshold) >= p.k:
            return [self._spoof(track, t, lives)]
        votes = Counter(e.top for e in recent if self._strong(e))
        # over the whole track, not only the window: a few strong frames for one elder are not
        # outvoted by more for another, however late those come (a no_face between them too:
        # the decision time starts again, the evidence is the same face's)
        voted = {e.top for e in track.evidence if self._strong(e)}
        # a strong vote for a second elder, or a second face, in the window: never guess
        if len(votes) == 1 and voted <= set(votes) and not self._second_face_lately(t):
            winner, count = votes.most_common(1)[0]
            frames = [  # the voting frames: liveness is judged on these, not on others
                e for e in recent if e.top == winner and self._strong(e)
            ]
            live = sum(1 for e in frames if e.live >= p.liveness_threshold)
            if count >= p.k and live * 2 > len(frames):
                assert winner is not None
                return self._accept(track, winner, t, frames)
        # while a second face is about, nobody can be told apart as the payer: no verdict yet,
        # not even uncertain; whoever stays is decided once it has gone for ``window_s``
        decide_from = track.decide_from
        if (
            decide_from is not None
            and t - decide_from >= p.decide_within_s
            and not self._second_face_lately(t)
        ):
            decision = self._had_its_frames(track, t)
            if decision is not None:
                return [decision]
        # a second face that keeps coming back, too seldom to count as multiple_faces at once,
        # must not leave the elder waiting without a word for staff (once per spell of it)
        reported = self._ambiguity_reported_at
        if (
            t - track.started >= 2 * p.decide_within_s
            and self._second_face_lately(t)
            and not self._kept_reported
            and (reported is None or t - reported > p.window_s)
        ):
            self._kept_reported = True  # once per spell, not every few seconds of a meal
            return self._report_ambiguity(track, t, "another face kept appearing")
        return []

    def _strong(self, e: Evidence) -> bool:
        p = self.policy
        return at_or_above(e.top_score, p.accept_threshold) and at_or_above(e.margin, p.margin)

    def _had_its_frames(self, track: Track, t: float) -> Decision | None:
        """A track that could not be accepted but saw at least ``n`` frames gets an outcome:
        ``uncertain``/``unknown`` from ``n`` usable frames, otherwise (once) the reason its face
        was not usable. Fewer frames than that were a passer-by."""
        p = self.policy
        if len(track.evidence) >= p.n:
            return self._give_up(track, t)
        if not track.unusable_reported and len(track.evidence) + sum(track.poor.values()) >= p.n:
            return self._no_usable_face(track, t)
        return None

    def _accept(self, track: Track, elder: str, t: float, frames: list[Evidence]) -> list[Decision]:
        since = self._accepted_at.get(elder)
        if since is not None and t - since < self.policy.cooldown_s:
            track.elder = elder
            track.decided = True
            self._accepted_at[elder] = t  # still here: the cooldown runs from now
            self.counters["cooldown_suppressed"] += 1
            return []
        self._accepted_at = {
            e: at for e, at in self._accepted_at.items() if t - at < self.policy.cooldown_s
        }
        face = _unit_mean([e.embedding for e in frames if e.embedding is not None])
        served = self._served_as_other(elder, face)
        if served:
            # most likely the one served: her cooldown runs on while she stays in view
            track.elder = served[0][0]
            best = max(e.top_score for e in frames)
            candidates = sorted([(elder, round(best, 4)), *served], key=lambda c: (-c[1], c[0]))
            decision = self._decide(
                track,
                Outcome.UNCERTAIN,
                t,
                frames,
                candidates=tuple(candidates),
                reason="served_as_other",
            )
            return [replace(decision, probe=self._probe(track.evidence))]
        track.elder = elder
        self._accepted_at[elder] = t
        if face is not None:
            self._served.setdefault(elder, []).append(face)
        return [self._decide(track, Outcome.ACCEPTED, t, frames, elder=elder)]

    def _served_as_other(self, elder: str, face: np.ndarray | None) -> list[tuple[str, float]]:
        """Other elders in cooldown served a face that this one scores at or above the accept
        threshold against, best first, with that score: she walked away and came back, and a
        second meal charged to someone else is the worst mistake the counter can make."""
        if face is None:
            return []
        scores = {
            other: max(float(face @ served) for served in faces)
            for other, faces in self._served.items()
            if other != elder
        }
        ranked = sorted(scores.items(), key=lambda kv: (-kv[1], kv[0]))
        return [(o, round(s, 4)) for o, s in ranked if s >= self.policy.accept_threshold][:2]

    def _forget_served(self, t: float) -> None:
        """A face served is kept only while the elder's cooldown runs (it is face data)."""
        cooldown_s = self.policy.cooldown_s
        ended = [
            elder
            for elder in self._served
            if elder not in self._accepted_at or t - self._accepted_at[elder] >= cooldown_s
        ]
        for elder in ended:
            del self._served[elder]

    def _give_up(self, track: Track, t: float) -> Decision:
        p = self.policy
        evidence = track.evidence
        lives = [live for _, live in track.lives]
        if sum(1 for live in lives if live < p.liveness_threshold) * 2 > len(lives):
            return self._spoof(track, t, lives)
        candidates = candidates_of(evidence, p.candidate_threshold)
        if not candidates:
            return self._decide(track, Outcome.UNKNOWN, t, evidence, reason="no_match")
        decision = self._decide(
            track,
            Outcome.UNCERTAIN,
            t,
            evidence,
            candidates=tuple(candidates),
            reason=self._why_not(evidence),
        )
        return replace(decision, probe=self._probe(evidence))

    def _probe(self, evidence: list[Evidence]) -> np.ndarray | None:
        """The mean of the live frames' embeddings, when most frames look live and every two
        of them are one person by the 1:1 threshold (``verify_threshold``, which strangers
        pass once in 10,000). A face that may be a photo must never become a template,
        however sure the staff are; nor may a track the next in the queue stepped into (track
        continuity is looser): staff rightly confirming her would teach the counter a blend
        that takes the stranger for her from then on."""
        live = [
            e.embedding
            for e in evidence
            if e.live >= self.policy.liveness_threshold and e.embedding is not None
        ]
        if len(live) * 2 <= len(evidence):
            return None
        faces = np.stack(live)
        if not at_or_above(float((faces @ faces.T).min()), self.policy.verify_threshold):
            return None
        return _unit_mean(live)

    def _why_not(self, evidence: list[Evidence]) -> str:
        p = self.policy
        strong = [e for e in evidence if at_or_above(e.top_score, p.accept_threshold)]
        if not strong:
            return "below_accept_threshold"
        if not any(at_or_above(e.margin, p.margin) for e in strong):
            return "close_candidates"
        if len({e.top for e in strong}) > 1:
            return "inconsistent"
        if sum(1 for e in strong if e.live < p.liveness_threshold) * 2 >= len(strong):
            return "liveness"
        return "too_few_frames"

    def _spoof(self, track: Track, t: float, lives: list[float]) -> Decision:
        """Most frames failed liveness, whether or not the face passed the other gates."""
        decision = self._decide(track, Outcome.SPOOF, t, [], reason="liveness")
        return replace(decision, frames_used=len(lives), liveness=_median(lives))

    def _no_usable_face(self, track: Track, t: float) -> Decision:
        """Staff hear why (looking down at her purse, blurred as she walks up), but the track
        stays open: once she faces the camera she is identified without having to step away
        and come back first. She then has the full decision time from her first usable frame:
        the few frames in which she raises her head must not decide on their own."""
        reason = track.poor.most_common(1)[0][0]
        track.unusable_reported = True
        track.decide_from = None
        return self._decide(track, Outcome.NO_FACE, t, [], reason=reason, final=False)

    def _decide(
        self,
        track: Track,
        outcome: Outcome,
        t: float,
        frames: list[Evidence],
        *,
        elder: str | None = None,
        candidates: tuple[tuple[str, float], ...] = (),
        reason: str | None = None,
        final: bool = True,
    ) -> Decision:
        track.decided = final
        self.counters[outcome.value] += 1
        mine = [e for e in frames if elder is None or e.top == elder]
        return Decision(
            outcome=outcome,
            t=t,
            track=track.id,
            track_started=track.started,
            elder_id=elder,
            score=_median([e.top_score for e in mine]) if elder else None,
            margin=_median([e.margin for e in mine]) if elder else None,
            candidates=candidates,
            frames_used=len(frames),
            frames_seen=track.frames_seen,
            liveness=_median([e.live for e in frames]),
            reason=reason,
            learned_from=Counter(e.learned_from for e in mine).most_common(1)[0][0]
            if elder and mine
            else None,
            seen=tuple(sorted({name for e in track.evidence for name, _ in e.candidates})),
        )
