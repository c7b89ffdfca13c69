"""Who holds the floor: the speech state machine that closes spans of one speaker.

    state        event                                        next         action
    QUIET        speech started                               SPEAKING     open a span at its start
    SPEAKING     frame: a face leads by `change_margin`       SPEAKING     she holds the floor
                 and no one holds it yet                                   (from the span's start)
    SPEAKING     frame: someone leads the holder by           CHALLENGED   note when the lead began
                 `change_margin`
    CHALLENGED   frame: the holder is no longer beaten        SPEAKING     nothing (a flicker)
    CHALLENGED   frame: the holder stayed beaten              SPEAKING     close the span where the
                 `change_hold_s` and was seen meanwhile                    leader's rise began; the
                                                                           leader holds
    SPEAKING,    speech ended (a pause, or the end of the     QUIET        close the span at the
    CHALLENGED   audio)                                                    speech's end

The scores are the refined ones: a change is decided `change_hold_s` after the rival took
the lead, and the span ends where her rise began, which only that look-ahead can see. A
lead narrower than `change_margin` never challenges, so scores hovering near a tie (faces
that look alike, a listener moving her head) keep the floor with its holder. A holder who
turns away or leaves the picture keeps the floor: nothing shows she stopped.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from enum import Enum

from stream.frames import PerceivedFrame, PlayerView, SpeechSegment, SpeechStarted


class Phase(Enum):
    QUIET = "quiet"
    SPEAKING = "speaking"
    CHALLENGED = "challenged"


@dataclass(frozen=True)
class Span:
    """Speech of one holder, closed and waiting for its words."""

    start: float
    end: float
    pts: float
    """When it was closed (the media time of the deciding event)."""
    holder: str | None
    closed_by: str
    """`silence`, `speaker` or `end`."""
    cut: bool = False
    """Ended by the end of the audio while voiced."""


@dataclass(frozen=True)
class FloorRules:
    change_margin: float
    change_hold_s: float
    min_turn_s: float
    rise_floor: float
    rise_within_s: float
    """How far before the lead her rise is looked for."""
    overlap_share: float
    split_on_speaker: bool = True


def lead(players: tuple[PlayerView, ...], holder: str | None) -> tuple[str | None, float]:
    """The face with the highest score and how far it is ahead of the holder (of the
    runner-up when no one holds the floor)."""
    if not players:
        return None, 0.0
    ranked = sorted(players, key=lambda v: (-v.p_speaking, v.player))
    best = ranked[0]
    if holder is None:
        second = ranked[1].p_speaking if len(ranked) > 1 else 0.0
        return best.player, best.p_speaking - second
    held = next((v.p_speaking for v in players if v.player == holder), 0.0)
    return best.player, best.p_speaking - held


class Floor:
    """The state machine above; `seen` is the frame history it shares with the assembler."""

    def __init__(self, rules: FloorRules,
                 seen: deque[tuple[float, tuple[PlayerView, ...]]]) -> None:
        self.rules = rules
        self.seen = seen
        self.phase = Phase.QUIET
        self.start = 0.0
        """Start of the open span (valid unless QUIET)."""
        self.holder: str | None = None
        self.rival: str | None = None
        self.rival_since = -math.inf

    @property
    def speaking(self) -> bool:
        return self.phase is not Phase.QUIET

    def speech_started(self, event: SpeechStarted) -> None:
        self.phase, self.start, self.holder, self.rival = Phase.SPEAKING, event.start, None, None

    def speech_ended(self, segment: SpeechSegment) -> Span | None:
        """Close the open span (or, with no SpeechStarted seen, the whole segment)."""
        start = segment.start if self.phase is Phase.QUIET else max(segment.start, self.start)
        holder = self.holder
        self.phase, self.holder, self.rival = Phase.QUIET, None, None
        if segment.end <= start:
            return None
        return Span(start, segment.end, segment.pts, holder,
                    "end" if segment.cut else "silence", segment.cut)

    def frame(self, frame: PerceivedFrame) -> Span | None:
        if self.phase is Phase.QUIET or not self.rules.split_on_speaker:
            return None
        who, ahead = lead(frame.players, self.holder)
        margin = self.rules.change_margin
        if self.holder is None:
            if who is not None and ahead >= margin:
                self.holder = who
            return None
        if who is None or who == self.holder or ahead < margin:
            self.phase, self.rival = Phase.SPEAKING, None
            return None
        # Beaten by anyone: the challenge runs while the holder stays beaten, and goes to
        # whoever leads when it has held (two look-alikes trading the lead still beat her).
        if self.phase is Phase.SPEAKING:
            self.phase, self.rival_since = Phase.CHALLENGED, frame.pts
        self.rival = who
        if frame.pts - self.rival_since < self.rules.change_hold_s:
            return None
        return self._hand_over(frame.pts)

    def _hand_over(self, now: float) -> Span | None:
        assert self.rival is not None
        since, rival, holder = self.rival_since, self.rival, self.holder
        self.phase, self.rival = Phase.SPEAKING, None
        if not any(v.player == holder and v.detected
                   for t, players in self.seen if t >= since for v in players):
            return None  # she turned away or left the picture: nothing shows she stopped
        self.holder = rival
        at = self._rise(since, rival)
        # Both faces spoke between her rise and her lead: the spans overlap, the old one
        # ending where the new speaker took the lead.
        end = since if self._together(at, since) else at
        if end - self.start < self.rules.min_turn_s:
            return None  # too short to be a turn: the start joins the new speaker's
        span = Span(self.start, end, now, holder, "speaker")
        self.start = at
        return span

    def _rise(self, since: float, rival: str) -> float:
        """Where the new speaker's score last left the floor before she took the lead (a
        face model reacts over a few frames; her rise starts before she wins)."""
        earliest = max(since - self.rules.rise_within_s, self.start)
        quiet = [t for t, players in self.seen if earliest <= t <= since
                 and all(v.p_speaking <= self.rules.rise_floor
                         for v in players if v.player == rival)]
        later = [t for t, _ in self.seen if quiet and quiet[-1] < t <= since]
        return later[0] if later else since

    def _together(self, start: float, end: float) -> bool:
        for t, players in self.seen:
            if start <= t < end:
                scores = sorted((v.p_speaking for v in players), reverse=True)
                if len(scores) > 1 and scores[1] >= self.rules.overlap_share:
                    return True
        return False
