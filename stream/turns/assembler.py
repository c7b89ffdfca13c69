"""Turn assembly: speech segments + transcript lines + key frames -> `Turn`s.

A turn is emitted the moment voice activity closes its segment (one hangover
after the speech ends) and uses nothing later than its own end. The
transcript gives it words: a line belongs to the segment it overlaps for at
least half of its length, and a segment holding several lines (speakers
handing over without a pause) is split at the line boundaries. A transcript
line that no speech segment claims still becomes a turn of its own
(`origin: transcript`): nothing said is lost, and a clip without audio gets
its turns from the transcript alone.
"""

from __future__ import annotations

import itertools
import logging
import math
from collections import deque
from collections.abc import Sequence

from pydantic import BaseModel, ConfigDict, Field

from stream.frames import (
    Item,
    PerceivedFrame,
    PlayerView,
    SpeechSegment,
    SpeechStarted,
    TranscriptLine,
    Turn,
    VideoFrame,
)
from stream.runtime import Stage
from stream.speaker.active import SpeakerConfig, vote

log = logging.getLogger(__name__)

FINE_FRAMES_PER_S = 10.0
FINE_HOLD_S = 2.0
"""Besides the key frames, the last `FINE_HOLD_S` seconds keep a frame every 0.1 s, so a
turn shorter than the key-frame spacing still gets a frame from inside it (never one
from before it started), at a bounded cost of 20 frames."""


class TurnConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    keyframes_per_s: float = Field(2.0, gt=0, le=30, description="key frames sampled per second")
    frame_memory_s: float = Field(
        30.0, gt=0, description="how far back key frames are kept (bounds memory on long turns)")
    min_line_overlap: float = Field(
        0.5, gt=0, le=1, description="share of a line inside a segment for it to belong there")


class TurnAssembler:
    """The pure core. Feed items in media-time order; it returns finished turns."""

    def __init__(self, config: TurnConfig | None = None, *, has_audio: bool = True,
                 orphan_delay_s: float = 0.0, speaker: SpeakerConfig | None = None) -> None:
        self.config = config or TurnConfig()
        self.speaker = speaker
        """How to vote a turn's speaker from perceived frames (None: no vote)."""
        self.has_audio = has_audio
        self.orphan_delay_s = orphan_delay_s if has_audio else 0.0
        """How long after a line's end a segment could still claim it (the VAD's hangover)."""
        self.unused_lines = 0
        """Lines that start after the media ended (or after an interruption), never turned."""
        self.reset()

    def reset(self) -> None:
        self._frames: deque[VideoFrame | PerceivedFrame] = deque()
        self._fine: deque[VideoFrame | PerceivedFrame] = deque()
        """Recent frames off the key-frame ticks, every 1 / FINE_FRAMES_PER_S seconds."""
        self._last_fine = -math.inf
        self._seen: deque[tuple[float, tuple[PlayerView, ...]]] = deque()
        """Who was seen in every perceived frame (no pixels), for the speaker vote."""
        self._last_tick = -math.inf
        self._lines: list[TranscriptLine] = []
        self._open_start: float | None = None
        self._index = 0
        self._now = -math.inf
        self._media_now = -math.inf
        """How far the media (frames, speech events) has come; transcript lines may run ahead."""

    def push(self, item: Item) -> list[Turn]:
        self._now = max(self._now, item.pts)
        turns: list[Turn] = []
        if not isinstance(item, TranscriptLine):
            self._media_now = max(self._media_now, item.pts)
        if isinstance(item, VideoFrame | PerceivedFrame):
            self._keep_frame(item)
        elif isinstance(item, TranscriptLine):
            self._lines.append(item)
        elif isinstance(item, SpeechStarted):
            self._open_start = item.start
        elif isinstance(item, SpeechSegment):
            self._open_start = None
            turns.extend(self._close_segment(item))
        turns.extend(self._orphans(final=False))
        return turns

    def flush(self) -> list[Turn]:
        """End of stream: every line still waiting becomes a turn."""
        self._open_start = None
        return self._orphans(final=True)

    # -- frames ----------------------------------------------------------
    def _keep_frame(self, frame: VideoFrame | PerceivedFrame) -> None:
        tick = math.floor(frame.pts * self.config.keyframes_per_s + 1e-9)
        fine = math.floor(frame.pts * FINE_FRAMES_PER_S + 1e-9)
        if tick > self._last_tick:
            self._last_tick = tick
            self._frames.append(frame)
        elif fine > self._last_fine:
            self._fine.append(frame)
        self._last_fine = max(self._last_fine, fine)
        while self._fine and self._fine[0].pts < frame.pts - FINE_HOLD_S:
            self._fine.popleft()
        horizon = frame.pts - self.config.frame_memory_s
        while self._frames and self._frames[0].pts < horizon:
            self._frames.popleft()
        if isinstance(frame, PerceivedFrame):
            self._seen.append((frame.pts, frame.players))
            while self._seen and self._seen[0][0] < horizon:
                self._seen.popleft()

    def _keyframes(self, start: float, end: float) -> tuple[VideoFrame | PerceivedFrame, ...]:
        """The key frames inside the turn; for a turn between two key frames, the recent
        frame nearest its middle; none when no frame was seen inside it."""
        inside = tuple(f for f in self._frames if start <= f.pts <= end)
        if inside:
            return inside
        recent = [f for f in self._fine if start <= f.pts <= end]
        middle = (start + end) / 2
        return (min(recent, key=lambda f: abs(f.pts - middle)),) if recent else ()

    # -- turns -----------------------------------------------------------
    def _close_segment(self, segment: SpeechSegment) -> list[Turn]:
        claimed = [line for line in self._lines if self._belongs(line, segment)]
        self._lines = [line for line in self._lines if line not in claimed]
        claimed.sort(key=lambda line: line.start)
        bounds = [segment.start]
        for before, after in itertools.pairwise(claimed):
            middle = (before.end + after.start) / 2
            bounds.append(min(max(middle, bounds[-1]), segment.end))
        bounds.append(segment.end)
        groups: list[list[TranscriptLine]] = [[line] for line in claimed] or [[]]
        return [
            self._turn(start, end, lines, segment.pts,
                       (SpeechSegment(pts=segment.pts, start=start, end=end),), "speech")
            for (start, end), lines in zip(itertools.pairwise(bounds), groups, strict=True)
        ]

    def _belongs(self, line: TranscriptLine, segment: SpeechSegment) -> bool:
        overlap = min(line.end, segment.end) - max(line.start, segment.start)
        length = max(line.end - line.start, 1e-6)
        return overlap > 0 and overlap >= self.config.min_line_overlap * length

    def _orphans(self, final: bool) -> list[Turn]:
        turns = []
        for line in list(self._lines):
            if final:
                ready = line.start < self._media_now
            else:
                claimable = self._open_start is not None and self._open_start < line.end
                ready = self._media_now >= line.end + self.orphan_delay_s and not claimable
            if not ready:
                continue
            self._lines.remove(line)
            turns.append(self._turn(line.start, line.end, [line], max(self._now, line.pts), (),
                                    "transcript"))
        if final and self._lines:
            self.unused_lines += len(self._lines)
            log.warning("%d transcript line(s) start after the media's last moment (%.2fs) and "
                        "were not used (first: %s)", len(self._lines), self._media_now,
                        self._lines[0].origin or f"{self._lines[0].start:.2f}s")
            self._lines.clear()
        return turns

    def _turn(self, start: float, end: float, lines: list[TranscriptLine], pts: float,
              segments: tuple[SpeechSegment, ...], origin: str) -> Turn:
        speakers = {line.speaker for line in lines}
        keyframes = self._keyframes(start, end)
        turn = Turn(
            pts=pts, index=self._index, start=start, end=end,
            text=" ".join(line.text for line in lines),
            speaker_name=speakers.pop() if len(speakers) == 1 else None,
            segments=segments, origin=origin,
            keyframes=tuple(f.frame if isinstance(f, PerceivedFrame) else f for f in keyframes),
            views=tuple(f.players if isinstance(f, PerceivedFrame) else () for f in keyframes),
            vote=None if self.speaker is None else vote(
                [players for t, players in self._seen if start <= t <= end], self.speaker),
            known_at=min(pts, self._media_now) if math.isfinite(self._media_now) else pts,
        )
        self._index += 1
        return turn


class TurnStage(Stage):
    """Video frames, speech events and transcript lines in; turns out."""

    name = "turns"

    def __init__(self, core: TurnAssembler) -> None:
        self.core = core

    async def process(self, item: Item) -> Sequence[Item]:
        return self.core.push(item)

    async def finish(self) -> Sequence[Item]:
        return self.core.flush()
