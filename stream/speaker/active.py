"""Active-speaker fusion: mouth motion per person + voice activity -> who speaks.

Per frame, each person's mouth motion is smoothed (exponential, `smoothing_s`)
and turned into a share of all motion in view. While voice is active (within
`voice_hold_s` of a voiced audio frame) the share is that person's probability
of speaking; the frame's speaker is the person whose share reaches
`min_share` and beats the runner-up by `margin` (the current speaker stays
while still ahead with `keep_share`), else nobody ("unknown": two mouths
moving, or none). Only past frames are used, so a decision is ready as soon
as its frame is.

Per turn, the shares of the frames inside it are averaged; the winner must
reach `turn_min_score` and beat the runner-up by `turn_margin`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from pydantic import BaseModel, ConfigDict, Field

from stream.frames import PlayerView, SpeakerVote


class SpeakerConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    smoothing_s: float = Field(0.2, gt=0, description="time constant of mouth-motion smoothing")
    voice_hold_s: float = Field(0.25, ge=0, description="voice counts as active this long after")
    min_motion: float = Field(0.002, gt=0, description="motion floor: below it no one is moving")
    min_share: float = Field(0.45, gt=0, le=1, description="share of motion to call a speaker")
    keep_share: float = Field(
        0.3, gt=0, le=1, description="share that keeps the current speaker while still ahead")
    margin: float = Field(
        1.5, ge=1, description="a new speaker's share over the runner-up's, as a ratio")
    turn_min_score: float = Field(
        0.35, gt=0, le=1, description="mean share of motion to name a turn's speaker")
    turn_margin: float = Field(1.3, ge=1, description="winner over runner-up, as a ratio")


class ActiveSpeaker:
    """The pure per-frame core; feed voice decisions and mouth motion in media-time order."""

    def __init__(self, config: SpeakerConfig | None = None) -> None:
        self.config = config or SpeakerConfig()
        self.reset()

    def reset(self) -> None:
        self._smoothed: dict[str, float] = {}
        self._last_pts: float | None = None
        self._last_voiced = -math.inf
        self._current: str | None = None

    def voice(self, pts: float, voiced: bool) -> None:
        if voiced:
            self._last_voiced = pts

    def voiced(self, pts: float) -> bool:
        return pts - self._last_voiced <= self.config.voice_hold_s

    def frame(self, pts: float, motion: dict[str, float]
              ) -> tuple[dict[str, tuple[float, float, float]], str | None, float]:
        """Per player (smoothed motion, share, p_speaking), then the speaker and confidence."""
        dt = 1 / 30 if self._last_pts is None else max(pts - self._last_pts, 1e-3)
        self._last_pts = pts
        alpha = 1 - math.exp(-dt / self.config.smoothing_s)
        self._smoothed = {
            player: self._smoothed.get(player, value) * (1 - alpha) + value * alpha
            for player, value in motion.items()
        }
        total = sum(self._smoothed.values()) + self.config.min_motion
        gate = 1.0 if self.voiced(pts) else 0.0
        cues = {p: (m, m / total, gate * m / total) for p, m in self._smoothed.items()}
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
    ranked = sorted(scores.values(), reverse=True)
    top = ranked[0] if ranked else 0.0
    runner_up = ranked[1] if len(ranked) > 1 else 0.0
    clear = top >= config.turn_min_score and top >= config.turn_margin * runner_up
    speaker = max(scores, key=scores.__getitem__) if clear else None
    return SpeakerVote(speaker, top, scores, cues)
