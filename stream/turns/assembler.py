"""Turn assembly: speech segments + transcript lines + key frames -> `Turn`s.

A turn is emitted the moment voice activity closes its segment (one hangover
after the speech ends) and uses nothing later than its own end. The
transcript gives it words: a line belongs to the segment it overlaps for at
least half of its length, and a segment holding several lines (speakers
handing over without a pause) is split at the line boundaries; lines that
overlap in time give turns that overlap, each reporting the span.

People also hand over without a pause when there is no transcript (or one
line per voiced stretch, as a recognizer gives). So inside speech the turn is
also closed where the speaker seen by perception changes and the new one
holds for `change_hold_s`: the split goes where the new speaker was first
seen, or at the end of a transcript line just before it (the words place a
handover better than a face model that needs a moment to react). A speaker
who turns away or leaves the picture keeps the turn: nothing shows she
stopped, so a face still in view cannot take it over, and the turn's speaker
is voted over the frames where she was seen.

Speech that the end of the audio cuts short (a stop, a recording whose audio
ends first) is judged by the part of each line the audio reached, so a stop in
the middle of a line gives one turn with its words, not an empty turn and the
same words again. It is held a hangover first: its lines come after it.

A transcript line that no speech segment claims still becomes a turn of its
own (`origin: transcript`): nothing said is lost, and a clip without audio
gets its turns from the transcript alone.
"""

from __future__ import annotations

import dataclasses
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
    split_on_speaker: bool = Field(
        True, description="close a turn inside speech where the seen speaker changes")
    change_hold_s: float = Field(
        0.2, ge=0, le=2, description="how long a new speaker must hold to close the turn")
    min_turn_s: float = Field(
        0.3, gt=0, description="shortest turn a speaker change closes (a shorter start joins "
                               "the new speaker's turn) or leaves (a shorter rest without "
                               "words is no turn)")
    snap_s: float = Field(
        0.6, ge=0, le=2, description="a transcript line ending this long before a seen "
                                      "speaker change places the split at its end")
    rise_floor: float = Field(
        0.1, ge=0, lt=1, description="a new speaker's share of speaking below this is the "
                                     "floor her rise to the turn starts from")
    overlap_share: float = Field(
        0.3, gt=0, le=0.5, description="two people each with this share of speaking in a "
                                        "frame speak at once")
    min_overlap_s: float = Field(0.1, ge=0, description="shortest overlap reported")


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
        self._spoken: deque[TranscriptLine] = deque()
        """Lines already in turns, kept `frame_memory_s` for the overlaps of later turns."""
        self._open_start: float | None = None
        """Start of the open speech not yet in a turn (moves on at a speaker change)."""
        self._holder: str | None = None
        """Who is seen speaking the open speech."""
        self._reach_back: float | None = None
        """After a speaker change: the previous turn's start. A line of the new speaker
        that began before the change (talking over the end of the last turn) starts her
        turn, back to there."""
        self._rival: str | None = None
        self._rival_since = self._rival_last = -math.inf
        self._both: deque[tuple[float, float]] = deque()
        """Spans where two faces spoke at once."""
        self._both_since: float | None = None
        self._cut: tuple[SpeechSegment, str | None, float | None] | None = None
        """Speech the end of the audio cut short (with its holder and reach-back), held
        until the lines it was saying can have arrived: at the end of the stream they
        come after it, since a line is known from its own end."""
        self._index = 0
        self._now = -math.inf
        self._media_now = -math.inf
        """How far the media (frames, speech events) has come; transcript lines may run ahead."""

    def push(self, item: Item) -> list[Turn]:
        self._now = max(self._now, item.pts)
        turns: list[Turn] = []
        if not isinstance(item, TranscriptLine):
            self._media_now = max(self._media_now, item.pts)
            if self._cut is not None and (isinstance(item, SpeechStarted | SpeechSegment)
                                          or item.pts > self._cut[0].pts + self.orphan_delay_s):
                turns.extend(self._close_cut())
        if isinstance(item, VideoFrame | PerceivedFrame):
            self._keep_frame(item)
            if isinstance(item, PerceivedFrame):
                self._track_overlap(item)
                turns.extend(self._follow_speaker(item))
        elif isinstance(item, TranscriptLine):
            self._lines.append(item)
        elif isinstance(item, SpeechStarted):
            self._open_start, self._holder, self._rival = item.start, None, None
            self._reach_back = None
        elif isinstance(item, SpeechSegment):
            start = item.start if self._open_start is None else max(item.start, self._open_start)
            holder, self._open_start, self._holder, self._rival = self._holder, None, None, None
            rest = SpeechSegment(pts=item.pts, start=start, end=item.end, cut=item.cut)
            if item.end > start and not self._short_rest(rest):
                if item.cut:
                    self._cut = (rest, holder, self._reach_back)
                else:
                    turns.extend(self._close_segment(rest, "silence", holder, self._reach_back))
            self._reach_back = None
        turns.extend(self._orphans(final=False))
        return turns

    def flush(self) -> list[Turn]:
        """End of stream: every line still waiting becomes a turn."""
        self._open_start = None
        return self._close_cut() + self._orphans(final=True)

    @property
    def held_since(self) -> float | None:
        """When the held cut-short speech was decided: nothing it emits is earlier."""
        return None if self._cut is None else self._cut[0].pts

    def _close_cut(self) -> list[Turn]:
        if self._cut is None:
            return []
        (segment, holder, reach_back), self._cut = self._cut, None
        turns = self._close_segment(segment, "end", holder, reach_back)
        # Known when let go, not when the audio ended: `emitted_at` says the wait.
        return [dataclasses.replace(turn, known_at=max(segment.pts, self._media_now))
                for turn in turns]

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
            while self._both and self._both[0][1] < horizon:
                self._both.popleft()
            while self._spoken and self._spoken[0].end < horizon:
                self._spoken.popleft()

    def _keyframes(self, start: float, end: float) -> tuple[VideoFrame | PerceivedFrame, ...]:
        """The key frames inside the turn; for a turn between two key frames, the recent
        frame nearest its middle; none when no frame was seen inside it."""
        inside = tuple(f for f in self._frames if start <= f.pts <= end)
        if inside:
            return inside
        recent = [f for f in self._fine if start <= f.pts <= end]
        middle = (start + end) / 2
        return (min(recent, key=lambda f: abs(f.pts - middle)),) if recent else ()

    # -- speaker changes and overlaps -----------------------------------------
    def _follow_speaker(self, frame: PerceivedFrame) -> list[Turn]:
        """Close the open speech's turn where a new speaker holds; see the module's doc."""
        if not self.config.split_on_speaker or self._open_start is None:
            return []
        who, now, hold = frame.speaker, frame.pts, self.config.change_hold_s
        if who is None or who == self._holder:
            if who is not None or now - self._rival_last > hold:
                self._rival = None
            return []
        if who != self._rival:
            self._rival, self._rival_since = who, now
        self._rival_last = now
        if now - self._rival_since < hold:
            return []
        since, self._rival = self._rival_since, None
        if self._holder is None:
            self._holder = who
            return []
        if not any(v.player == self._holder and v.detected
                   for t, players in self._seen if t >= since for v in players):
            return []  # she turned away or left the picture: nothing shows she stopped
        at, by_line = self._split_point(since, now, who)
        # Both faces spoke between her rise and her win: the turns overlap, the old one
        # ending where the new speaker won.
        end = at if by_line or not self._spoke_together(at, since) else since
        holder, self._holder = self._holder, who
        if end - self._open_start < self.config.min_turn_s:
            return []
        start, self._open_start = self._open_start, at
        turns = self._close_segment(SpeechSegment(pts=now, start=start, end=end), "speaker",
                                    holder, self._reach_back)
        self._reach_back = start
        return turns

    def _short_rest(self, rest: SpeechSegment) -> bool:
        """What is left of speech after a speaker change, shorter than `min_turn_s` and
        without words: the tail of the last speaker's speech (the voice hangover) that a
        listener's face happened to win, not a turn of the listener's."""
        return (self._reach_back is not None
                and rest.end - rest.start < self.config.min_turn_s
                and not any(self._belongs(line, rest) for line in self._lines))

    def _split_point(self, since: float, now: float, rival: str) -> tuple[float, bool]:
        """Where the change began: at a transcript line's end near it, else where the new
        speaker's share of speaking last left the floor (a face model reacts over a few
        frames, and the rise starts before the new speaker wins)."""
        assert self._open_start is not None
        earliest = max(since - self.config.snap_s, self._open_start)
        ends = [line.end for line in self._lines if earliest <= line.end <= now]
        if ends:
            return min(ends, key=lambda end: abs(end - since)), True
        quiet = [t for t, players in self._seen if earliest <= t <= since
                 and all(v.p_speaking <= self.config.rise_floor
                         for v in players if v.player == rival)]
        later = [t for t, _ in self._seen if quiet and quiet[-1] < t <= since]
        return (later[0] if later else since), False

    def _spoke_together(self, start: float, end: float) -> bool:
        spans = list(self._both)
        if self._both_since is not None:
            spans.append((self._both_since, self._media_now))
        return any(lo < end and hi > start for lo, hi in spans)

    def _track_overlap(self, frame: PerceivedFrame) -> None:
        speaking = sorted((v.p_speaking for v in frame.players), reverse=True)
        both = len(speaking) > 1 and speaking[1] >= self.config.overlap_share
        if both and self._both_since is None:
            self._both_since = frame.pts
        elif not both and self._both_since is not None:
            if frame.pts - self._both_since >= self.config.min_overlap_s:
                self._both.append((self._both_since, frame.pts))
            self._both_since = None

    def _overlaps(self, start: float, end: float,
                  lines: list[TranscriptLine]) -> tuple[tuple[float, float], ...]:
        """Where, inside [start, end], another line was spoken or two faces spoke at once."""
        others = [o for o in itertools.chain(self._spoken, self._lines) if o not in lines]
        spans = [(max(a.start, b.start), min(a.end, b.end)) for a in lines for b in others]
        spans += self._both
        if self._both_since is not None and self._media_now - self._both_since >= \
                self.config.min_overlap_s:
            spans.append((self._both_since, self._media_now))
        clipped = sorted((max(lo, start), min(hi, end)) for lo, hi in spans)
        merged: list[tuple[float, float]] = []
        for lo, hi in clipped:
            if hi - lo < self.config.min_overlap_s:
                continue
            if merged and lo <= merged[-1][1]:
                merged[-1] = (merged[-1][0], max(merged[-1][1], hi))
            else:
                merged.append((lo, hi))
        return tuple(merged)

    # -- turns -----------------------------------------------------------
    def _close_segment(self, segment: SpeechSegment, closed_by: str,
                       holder: str | None = None, reach_back: float | None = None
                       ) -> list[Turn]:
        """Turns for the speech in `segment`, one per transcript line it claims. Between
        lines with a pause the split is its middle; lines that overlap keep their own
        ends, so their turns overlap too."""
        claimed = [line for line in self._lines if self._belongs(line, segment)]
        self._lines = [line for line in self._lines if line not in claimed]
        claimed.sort(key=lambda line: line.start)
        first = segment.start
        if reach_back is not None and claimed:
            first = min(first, max(claimed[0].start, reach_back))
        starts, ends = [first], []
        for before, after in itertools.pairwise(claimed):
            middle = (before.end + after.start) / 2
            ends.append(before.end if after.start < before.end else middle)
            starts.append(after.start if after.start < before.end else middle)
        ends.append(segment.end)
        turns = []
        for i, lines in enumerate([[line] for line in claimed] or [[]]):
            start = min(max(starts[i], turns[-1].start if turns else first), segment.end)
            end = min(max(ends[i], start), segment.end)
            turns.append(self._turn(
                start, end, lines, segment.pts,
                (SpeechSegment(pts=segment.pts, start=start, end=end),), "speech",
                closed_by=closed_by if i == len(claimed) - 1 or not claimed else "line",
                holder=holder))
        self._spoken.extend(claimed)
        return turns

    def _belongs(self, line: TranscriptLine, segment: SpeechSegment) -> bool:
        """A line is judged by the part of it the audio reached: speech that the end of
        the audio cut short takes the line it was saying, rather than leaving an empty
        turn and the same words again as a transcript turn."""
        overlap = min(line.end, segment.end) - max(line.start, segment.start)
        heard_end = min(line.end, segment.end) if segment.cut else line.end
        length = max(heard_end - line.start, 1e-6)
        return overlap > 0 and overlap >= self.config.min_line_overlap * length

    def _orphans(self, final: bool) -> list[Turn]:
        turns = []
        for line in list(self._lines):
            if final:
                ready = line.start < self._media_now
            else:
                claimable = ((self._open_start is not None and self._open_start < line.end)
                             or (self._cut is not None and line.start < self._cut[0].end))
                ready = self._media_now >= line.end + self.orphan_delay_s and not claimable
            if not ready:
                continue
            self._lines.remove(line)
            turns.append(self._turn(line.start, line.end, [line], max(self._now, line.pts), (),
                                    "transcript", closed_by="transcript"))
            self._spoken.append(line)
        if final and self._lines:
            self.unused_lines += len(self._lines)
            log.warning("%d transcript line(s) start after the media's last moment (%.2fs) and "
                        "were not used (first: %s)", len(self._lines), self._media_now,
                        self._lines[0].origin or f"{self._lines[0].start:.2f}s")
            self._lines.clear()
        return turns

    def _turn(self, start: float, end: float, lines: list[TranscriptLine], pts: float,
              segments: tuple[SpeechSegment, ...], origin: str, *, closed_by: str,
              holder: str | None = None) -> Turn:
        speakers = {line.speaker for line in lines}
        keyframes = self._keyframes(start, end)
        seen = [players for t, players in self._seen if start <= t <= end]
        if holder is not None:
            # A speaker out of view is still the speaker: count the frames she was seen in.
            with_holder = [f for f in seen if any(v.player == holder for v in f)]
            seen = with_holder or seen
        turn = Turn(
            pts=pts, index=self._index, start=start, end=end,
            text=" ".join(line.text for line in lines),
            speaker_name=speakers.pop() if len(speakers) == 1 else None,
            segments=segments, origin=origin,
            keyframes=tuple(f.frame if isinstance(f, PerceivedFrame) else f for f in keyframes),
            views=tuple(f.players if isinstance(f, PerceivedFrame) else () for f in keyframes),
            vote=None if self.speaker is None else vote(seen, self.speaker),
            known_at=min(pts, self._media_now) if math.isfinite(self._media_now) else pts,
            overlap=self._overlaps(start, end, lines),
            closed_by=closed_by,
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

    def holdback(self) -> float | None:
        return self.core.held_since
