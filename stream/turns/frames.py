"""What a turn carries besides its words: key frames, and where others spoke over it."""

from __future__ import annotations

import itertools
import math
from collections import deque
from collections.abc import Iterable

from stream.frames import PerceivedFrame, TranscriptLine, Turn, VideoFrame

FINE_FRAMES_PER_S = 10.0
FINE_HOLD_S = 2.0
"""Besides the key frames, the last `FINE_HOLD_S` seconds keep a frame every 0.1 s, so a
turn shorter than the key-frame spacing still gets a frame from inside it (never one
from before it started), at a bounded cost of 20 frames."""

Frame = VideoFrame | PerceivedFrame


class KeyFrames:
    """Frames sampled `per_s` a second, kept `memory_s` back."""

    def __init__(self, per_s: float, memory_s: float) -> None:
        self.per_s, self.memory_s = per_s, memory_s
        self.frames: deque[Frame] = deque()
        self.fine: deque[Frame] = deque()
        """Recent frames off the key-frame ticks, every 1 / FINE_FRAMES_PER_S seconds."""
        self._last_tick = self._last_fine = -math.inf

    def keep(self, frame: Frame) -> None:
        tick = math.floor(frame.pts * self.per_s + 1e-9)
        fine = math.floor(frame.pts * FINE_FRAMES_PER_S + 1e-9)
        if tick > self._last_tick:
            self._last_tick = tick
            self.frames.append(frame)
        elif fine > self._last_fine:
            self.fine.append(frame)
        self._last_fine = max(self._last_fine, fine)
        while self.fine and self.fine[0].pts < frame.pts - FINE_HOLD_S:
            self.fine.popleft()
        while self.frames and self.frames[0].pts < frame.pts - self.memory_s:
            self.frames.popleft()

    def within(self, start: float, end: float) -> tuple[Frame, ...]:
        """The key frames inside [start, end); for a turn between two key frames, the
        recent frame nearest its middle; none when no frame was seen inside it. Half-open:
        the frame at a boundary between two turns belongs to the later one."""
        inside = tuple(f for f in self.frames if start <= f.pts < end)
        if inside:
            return inside
        recent = [f for f in self.fine if start <= f.pts < end]
        middle = (start + end) / 2
        return (min(recent, key=lambda f: abs(f.pts - middle)),) if recent else ()


class Overlaps:
    """Spans where two faces spoke at once, and lines already in turns (kept a while for
    the overlaps of later turns)."""

    def __init__(self, share: float, min_s: float) -> None:
        self.share, self.min_s = share, min_s
        self.both: deque[tuple[float, float]] = deque()
        self.both_since: float | None = None
        self.lines: deque[TranscriptLine] = deque()
        self.now = -math.inf

    def see(self, frame: PerceivedFrame, horizon: float) -> None:
        self.now = frame.pts
        speaking = sorted((v.p_speaking for v in frame.players), reverse=True)
        both = len(speaking) > 1 and speaking[1] >= self.share
        if both and self.both_since is None:
            self.both_since = frame.pts
        elif not both and self.both_since is not None:
            if frame.pts - self.both_since >= self.min_s:
                self.both.append((self.both_since, frame.pts))
            self.both_since = None
        while self.both and self.both[0][1] < horizon:
            self.both.popleft()
        while self.lines and self.lines[0].end < horizon:
            self.lines.popleft()

    def spoken(self, lines: Iterable[TranscriptLine]) -> None:
        self.lines.extend(lines)

    def within(self, start: float, end: float, lines: list[TranscriptLine],
               waiting: Iterable[TranscriptLine], last: Turn | None
               ) -> tuple[tuple[float, float], ...]:
        """Where, inside [start, end], another line was spoken, two faces spoke at once,
        or the last turn still ran."""
        others = [o for o in itertools.chain(self.lines, waiting) if o not in lines]
        spans = [(max(a.start, b.start), min(a.end, b.end)) for a in lines for b in others]
        spans += self.both
        if self.both_since is not None and self.now - self.both_since >= self.min_s:
            spans.append((self.both_since, self.now))
        clipped = [(max(lo, start), min(hi, end)) for lo, hi in spans]
        kept = [(lo, hi) for lo, hi in clipped if hi - lo >= self.min_s]
        if last is not None and min(last.end, end) > start:
            kept.append((start, min(last.end, end)))  # declared however short: turns
            # overlap only where the later one says so
        merged: list[tuple[float, float]] = []
        for lo, hi in sorted(kept):
            if merged and lo <= merged[-1][1]:
                merged[-1] = (merged[-1][0], max(merged[-1][1], hi))
            else:
                merged.append((lo, hi))
        return tuple(merged)
