"""Active-speaker fusion: a speaking cue per person + voice activity -> who speaks.

The cue is Light-ASD's probability of speaking (`model: light_asd`, the default,
see `stream/speaker/asd.py`) or mouth motion (`model: mouth`, and the fallback
when there is no audio). Either becomes a share per person: of all mouth motion
in view, or of the odds of speaking (with "nobody" as one more option); the rest
is the same for both.

Per frame, each person's cue is smoothed (exponential, `smoothing_s`)
and turned into a share. While voice is active (within
`voice_hold_s` of a voiced audio frame) the share is that person's probability
of speaking; the frame's speaker is the person whose share reaches
`min_share` and beats the runner-up by `margin` (the current speaker stays
while still ahead with `keep_share`), else nobody ("unknown": two mouths
moving, or none). Only past frames are used, so a decision is ready as soon
as its frame is.

Per turn, the shares of the frames inside it are averaged and the highest names
the turn's speaker, however close the race (its mean share is the confidence):
a turn has no speaker only when no face was seen speaking in it.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from stream.frames import PlayerView, SpeakerVote


class SpeakerConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    model: Literal["light_asd", "mouth"] = Field(
        "light_asd", description="light_asd (trained audio-visual model) or mouth (mouth "
                                 "motion; also used when the media has no audio)")
    weights: str = Field("talkset", description="Light-ASD weights: talkset (fine-tuned on "
                                                 "in-the-wild video), ava, or a file path")
    window_s: float = Field(0.5, gt=0, le=10, description="Light-ASD's look-back per score")
    batch_ticks: int = Field(
        2, ge=1, le=8, description="Light-ASD ticks computed together: fewer, larger matrix "
                                   "products for 40 ms more decision delay per extra tick")
    fallback_lag_s: float | None = Field(
        2.0, gt=0, description="live or paced replay: when a frame has waited this many "
                               "seconds in the pipeline by the time Light-ASD is done with "
                               "it (a CPU too slow for it), mouth motion stands in; null: "
                               "never")
    fallback_retry_s: float | None = Field(
        60.0, gt=0, description="Light-ASD is tried again this many media seconds after "
                                "falling behind (twice as long each time it falls behind "
                                "again soon after, up to 16 times); null: never")
    bfloat16: bool | None = Field(
        None, description="Light-ASD's visual encoder in bfloat16; null: when the CPU does "
                          "bfloat16 natively (AVX512-BF16, AMX)")
    asd_smoothing_s: float = Field(
        0.05, gt=0, description="time constant of smoothing Light-ASD's probabilities (its "
                                "GRU already smooths; mouth motion uses smoothing_s)")

    sync: bool = Field(
        True, description="Light-ASD: when two or more faces look like they are talking, "
                          "prefer the one whose mouth moves with the sound (stream/speaker/"
                          "sync.py)")
    sync_window_s: float = Field(1.0, gt=0, le=10,
                                 description="look-back of the audio-visual correlation")
    sync_strength: float = Field(
        10.0, ge=0, description="a contested face's odds of speaking are divided by "
                                "exp(sync_strength x how far its correlation trails the best)")
    smoothing_s: float = Field(0.2, gt=0, description="time constant of mouth-motion smoothing")
    voice_hold_s: float = Field(0.25, ge=0, description="voice counts as active this long after")
    min_motion: float = Field(0.002, gt=0, description="motion floor: below it no one is moving")
    min_share: float = Field(0.45, gt=0, le=1, description="share of motion to call a speaker")
    keep_share: float = Field(
        0.3, gt=0, le=1, description="share that keeps the current speaker while still ahead")
    margin: float = Field(
        1.5, ge=1, description="a new speaker's share over the runner-up's, as a ratio")


class ActiveSpeaker:
    """The pure per-frame core; feed voice decisions and mouth motion in media-time order."""

    def __init__(self, config: SpeakerConfig | None = None) -> None:
        self.config = config or SpeakerConfig()
        self.reset()

    def reset(self) -> None:
        self._smoothed: dict[str, float] = {}
        self._last_pts: float | None = None
        self._voiced: deque[tuple[float, float]] = deque()
        self._current: str | None = None

    def voice(self, pts: float, voiced: bool, start: float | None = None) -> None:
        """A voice decision for the audio [start, pts) (start defaults to pts)."""
        if voiced:
            start = pts if start is None else start
            if self._voiced and self._voiced[-1][1] >= start:
                self._voiced[-1] = (self._voiced[-1][0], pts)
            else:
                self._voiced.append((start, pts))
            while len(self._voiced) > 64:
                self._voiced.popleft()

    def voiced(self, pts: float) -> bool:
        """Voice at `pts` or up to `voice_hold_s` before it; frames that wait for their
        Light-ASD scores ask after later audio arrived, so this looks up the time."""
        hold = self.config.voice_hold_s
        return any(start <= pts <= end + hold for start, end in reversed(self._voiced))

    def _smooth(self, pts: float, values: dict[str, float], time_constant: float) -> None:
        dt = 1 / 30 if self._last_pts is None else max(pts - self._last_pts, 1e-3)
        self._last_pts = pts
        alpha = 1 - math.exp(-dt / time_constant)
        self._smoothed = {
            player: self._smoothed.get(player, value) * (1 - alpha) + value * alpha
            for player, value in values.items()
        }

    def probabilities(self, pts: float, probability: dict[str, float]
                      ) -> tuple[dict[str, tuple[float, float, float]], str | None, float]:
        """Light-ASD: per player (smoothed probability, share, p_speaking), then the speaker
        and confidence. The share is each player's odds of speaking over one plus everyone's
        (the one is "nobody"), so one clear speaker takes most of it, two take about half
        each (unknown), and a model that rates every face a little high still ranks them."""
        self._smooth(pts, {p: min(max(v, 1e-4), 1 - 1e-4) for p, v in probability.items()},
                     self.config.asd_smoothing_s)
        odds = {p: v / (1 - v) for p, v in self._smoothed.items()}
        total = 1 + sum(odds.values())
        return self._decide(pts, {p: (self._smoothed[p], o / total) for p, o in odds.items()})

    def frame(self, pts: float, motion: dict[str, float]
              ) -> tuple[dict[str, tuple[float, float, float]], str | None, float]:
        """Mouth motion: per player (smoothed motion, share, p_speaking), then the speaker
        and confidence."""
        self._smooth(pts, motion, self.config.smoothing_s)
        total = sum(self._smoothed.values()) + self.config.min_motion
        return self._decide(pts, {p: (m, m / total) for p, m in self._smoothed.items()})

    def _decide(self, pts: float, shares: dict[str, tuple[float, float]]
                ) -> tuple[dict[str, tuple[float, float, float]], str | None, float]:
        gate = 1.0 if self.voiced(pts) else 0.0
        cues = {p: (cue, share, gate * share) for p, (cue, share) in shares.items()}
        if not cues:
            self._current = None
            return cues, None, 0.0
        ranked = sorted(cues, key=lambda p: cues[p][2], reverse=True)
        best, confidence = ranked[0], cues[ranked[0]][2]
        runner_up = cues[ranked[1]][2] if len(ranked) > 1 else 0.0
        if best == self._current:
            clear = confidence >= self.config.keep_share
        else:
            clear = (confidence >= self.config.min_share
                     and confidence >= self.config.margin * runner_up)
        self._current = best if clear else None
        return cues, self._current, confidence


def vote(frames: Sequence[tuple[PlayerView, ...]], config: SpeakerConfig) -> SpeakerVote:
    """The speaker of a turn from the people seen in each frame inside it."""
    if not frames:
        return SpeakerVote(None, 0.0, {}, {})
    players = sorted({v.player for f in frames for v in f})
    n = len(frames)
    scores, cues = {}, {}
    for player in players:
        views = [v for f in frames for v in f if v.player == player]
        scores[player] = round(sum(v.share for v in views) / n, 3)
        cues[player] = {
            "mouth": round(sum(v.mouth for v in views) / len(views), 4),
            "yaw": round(sum(v.yaw for v in views) / len(views), 3),
            "visible": round(len(views) / n, 3),
        }
    top = max(scores.values(), default=0.0)
    # Ties go to the first by id, so the same frames always name the same speaker.
    speaker = min((p for p in scores if scores[p] == top), default=None) if top > 0 else None
    return SpeakerVote(speaker, top, scores, cues)
