"""Turn assembly: speech, perceived frames and words in; turns out.

Two parts, each a reader can follow:

1. Who holds the floor (`stream/turns/floor.py`): a state machine over voice activity
   and the refined per-frame speaker scores closes a span at a pause or where a new
   speaker takes and holds the lead (hysteresis: `change_margin` for `change_hold_s`).
2. Settling (here): closed spans wait, in order, until their words are known, then take
   them and become turns. Words from the recognizer are known once its progress
   (`Transcribed`) passes the span's end; transcript lines are known from their own end,
   so a span waits a hangover for them, and a span without a line waits up to
   `line_wait_s` for one that covers it.

How words go to turns:
- a recognised word goes to the span holding its middle; a speaker boundary inside a
  word moves to the word's edge, so a turn ends between words;
- a transcript line goes whole to the span holding it, and a line several spans share
  is split at their boundary, its words divided by time, only where the speaker change
  between them held (a line spanning a pause of one speaker joins the two spans);
- a speaker boundary within `snap_s` of a line's end moves there (words place a
  handover better than a face model that needs a moment to react);
- a span holding several lines is split at their boundaries (midway through a pause);
- what no speech claims (a line or words where voice activity heard nothing) becomes a
  turn of its own, `origin: transcript`, after the last turn;
- a rest of speech shorter than `min_turn_s` without words after a speaker change (the
  listener's face winning the voice's hangover) is no turn.

Invariants (tests/test_turn_invariants.py checks them on generated timelines):
- turns come in time order and never overlap, except by the overlap the later one
  declares (two people talking at once);
- every line and every word lands in exactly one turn (a line split at a held speaker
  change lands in the turns on either side, its words divided);
- a turn has words whenever words were said inside it and known when it was emitted;
- a turn's speaker is the one the scores favour over its span, None only when no face
  scored;
- a turn is closed inside speech only where a new speaker led by `change_margin` for
  `change_hold_s`;
- nothing a turn carries is later than its emission (`known_at`).
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import math
from collections import deque
from collections.abc import Sequence
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from stream.frames import (
    Item,
    PerceivedFrame,
    PlayerView,
    SpeechSegment,
    SpeechStarted,
    Transcribed,
    TranscriptLine,
    Turn,
    VideoFrame,
    Word,
)
from stream.runtime import Stage
from stream.speaker.active import SpeakerConfig, vote
from stream.turns.floor import Floor, FloorRules, Span
from stream.turns.frames import KeyFrames, Overlaps

log = logging.getLogger(__name__)

TextSource = Literal["transcript", "asr", "both"]
"""Where a turn's words come from: transcript lines, the recognizer, or both (a live
session's MQTT inbox beside the recognizer: a line wins over the words of its time)."""


class TurnConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    keyframes_per_s: float = Field(2.0, gt=0, le=30, description="key frames sampled per second")
    frame_memory_s: float = Field(
        30.0, gt=0, description="how far back key frames are kept (bounds memory on long turns)")
    split_on_speaker: bool = Field(
        True, description="close a turn inside speech where the speaker changes")
    change_margin: float = Field(
        0.2, ge=0, le=1, description="how far a new speaker's score must lead the current "
                                     "one's to challenge the turn")
    change_hold_s: float = Field(
        0.2, ge=0, le=2, description="how long that lead must hold to close the turn")
    min_turn_s: float = Field(
        0.3, gt=0, description="shortest turn a speaker change closes (a shorter start joins "
                               "the new speaker's turn) or leaves (a shorter rest without "
                               "words is no turn)")
    snap_s: float = Field(
        0.6, ge=0, le=2, description="a transcript line ending this near a speaker change "
                                      "places the split at its end")
    rise_floor: float = Field(
        0.1, ge=0, lt=1, description="a new speaker's share of speaking below this is the "
                                     "floor her rise to the turn starts from")
    overlap_share: float = Field(
        0.3, gt=0, le=0.5, description="two people each with this share of speaking in a "
                                        "frame speak at once")
    min_overlap_s: float = Field(0.1, ge=0, description="shortest overlap reported")
    line_wait_s: float = Field(
        3.0, ge=0, le=30, description="with a transcript, how long speech without a line "
                                      "waits for one that covers it (lines are known at "
                                      "their end)")


class TurnAssembler:
    """The pure core. Feed items in media-time order; it returns finished turns."""

    def __init__(self, config: TurnConfig | None = None, *, has_audio: bool = True,
                 orphan_delay_s: float = 0.0, speaker: SpeakerConfig | None = None,
                 text: TextSource | None = "transcript", lines_optional: bool = False
                 ) -> None:
        """`lines_optional`: transcript lines may never come (an MQTT inbox nobody
        publishes to): until the first one has, speech does not wait for lines."""
        self.config = config or TurnConfig()
        self.speaker = speaker
        """How to vote a turn's speaker from perceived frames (None: no vote)."""
        self.has_audio = has_audio
        self.text = text
        """Where words come from: they are waited for accordingly."""
        self.lines_optional = lines_optional
        self.heard_lines = False
        self.orphan_delay_s = orphan_delay_s if has_audio else 0.0
        """How long after a line's end a segment could still claim it (the VAD's hangover)."""
        self.unused_lines = 0
        """Lines that start after the media ended (or after an interruption), never turned."""
        self.reset()

    def reset(self) -> None:
        c = self.config
        self._seen: deque[tuple[float, tuple[PlayerView, ...]]] = deque()
        """Who was seen in every perceived frame (no pixels), for the floor and the vote."""
        self._floor = Floor(FloorRules(c.change_margin, c.change_hold_s, c.min_turn_s,
                                       c.rise_floor, c.snap_s, c.overlap_share,
                                       c.split_on_speaker), self._seen)
        self._keyframes = KeyFrames(c.keyframes_per_s, c.frame_memory_s)
        self._overlaps = Overlaps(c.overlap_share, c.min_overlap_s)
        self._pending: list[Span] = []
        self._lines: list[TranscriptLine] = []
        self._words: list[Word] = []
        self._transcribed = -math.inf
        self._last: Turn | None = None
        """The last turn emitted: nothing later overlaps it but by a declared overlap."""
        self._index = 0
        self._now = -math.inf
        self._media_now = -math.inf
        """How far the media (frames, speech events) has come; transcript lines may run ahead."""

    # -- events ----------------------------------------------------------------------
    def push(self, item: Item) -> list[Turn]:
        self._now = max(self._now, item.pts)
        if not isinstance(item, TranscriptLine):  # words come from decoded audio
            self._media_now = max(self._media_now, item.pts)
        if isinstance(item, VideoFrame | PerceivedFrame):
            self._keyframes.keep(item)
            if isinstance(item, PerceivedFrame):
                self._see(item)
                self._close(self._floor.frame(item))
        elif isinstance(item, TranscriptLine):
            self._lines.append(item)
            self.heard_lines = True
        elif isinstance(item, Word):
            self._words.append(item)
        elif isinstance(item, Transcribed):
            self._transcribed = max(self._transcribed, item.until)
        elif isinstance(item, SpeechStarted):
            self._floor.speech_started(item)
        elif isinstance(item, SpeechSegment):
            self._close(self._floor.speech_ended(item))
        return self._settle(final=False)

    def flush(self) -> list[Turn]:
        """End of stream: every closed span and every line and word still waiting."""
        return self._settle(final=True)

    def _see(self, frame: PerceivedFrame) -> None:
        self._seen.append((frame.pts, frame.players))
        horizon = frame.pts - self.config.frame_memory_s
        while self._seen and self._seen[0][0] < horizon:
            self._seen.popleft()
        self._overlaps.see(frame, horizon)

    def _close(self, span: Span | None) -> None:
        if span is not None:
            self._pending.append(span)

    # -- settling ----------------------------------------------------------------------
    def _settle(self, final: bool) -> list[Turn]:
        turns: list[Turn] = []
        while self._pending and (final or self._ready(self._pending[0])):
            turns += self._emit_span(self._pending.pop(0))
        turns += self._orphans(final)
        return turns

    def _ready(self, span: Span) -> bool:
        if self.text in ("asr", "both") and self._transcribed < span.end:
            return False
        if self.text in ("asr", None) or (self.lines_optional and not self.heard_lines):
            return True
        # Closed at a pause, a span was decided a hangover after its end: lines ending
        # by then are in. Lines a speaker change or the end of the audio cut through are
        # known at their own end, later.
        if span.cut:
            return self._media_now >= span.end + self.orphan_delay_s
        covered = any(self._share(line, span) > 0 for line in self._lines)
        waited = self._media_now >= span.end + self.config.line_wait_s
        return covered or waited or self._transcript_past(span)

    def _transcript_past(self, span: Span) -> bool:
        """A line that starts after the span has ended: no later line covers the span
        (lines are known in order of their ends)."""
        return any(line.start >= span.end for line in self._lines)

    def _share(self, line: TranscriptLine, span: Span) -> float:
        return min(line.end, span.end) - max(line.start, span.start)

    def _emit_span(self, span: Span) -> list[Turn]:
        # Closed by a speaker change: the next span starts at this one's end (or before
        # it, where both spoke at once), so the boundary between them may move.
        adjacent = span.closed_by == "speaker"
        lines, end = self._claim_lines(span, adjacent)
        words, start, end = self._claim_words(span.start, end, adjacent)
        if adjacent and not lines and not words and self.text is not None:
            # No words before the change: the scores changed hands before the words did
            # (a face model's lag, a listener's lips), so the time is the next speaker's.
            self._move_boundary(span.end, span.start)
            return []
        if adjacent:
            self._move_boundary(span.end, end)
        after_change = self._last is not None and self._last.closed_by == "speaker" \
            and self._last.end >= start - 1e-9
        fresh = end - max(start, self._last.end if self._last is not None else start)
        if after_change and not lines and not words and fresh < self.config.min_turn_s:
            return []  # the listener's face winning the voice's hangover: no turn
        return self._turns(span, start, end, lines, words)

    def _move_boundary(self, old: float, new: float) -> None:
        """The next span (closed or still open) starts where this one now ends."""
        if new == old:
            return
        if self._pending:
            nxt = self._pending[0]
            if nxt.start >= old - 1e-9 or new < nxt.start:
                self._pending[0] = dataclasses.replace(nxt, start=min(new, nxt.end))
        elif self._floor.start >= old - 1e-9 or new < self._floor.start:
            self._floor.start = new

    def _nothing_after(self, until: float) -> bool:
        """No other speech closed or open before `until` (after the span being settled)."""
        open_from = self._floor.start if self._floor.speaking else math.inf
        return not self._pending and open_from >= until

    def _claim_lines(self, span: Span, adjacent: bool) -> tuple[list[TranscriptLine], float]:
        """The lines the span holds, and where it ends now. Across a held speaker change a
        line reaching less than `snap_s` (and less than it has inside) into the next span
        moves the boundary to its end, one mostly the next speaker's stays for her, and
        any other is split there. Past a pause a line goes whole to the span holding most
        of it."""
        snap, end = self.config.snap_s, span.end
        claimed: list[TranscriptLine] = []
        split = False
        for line in sorted(self._lines, key=lambda ln: ln.start):
            inside, beyond = self._share(line, span), line.end - span.end
            if inside <= 0:
                continue
            if beyond <= 0:
                claimed.append(line)
            elif not adjacent:
                if inside < beyond and not self._nothing_after(line.end):
                    continue  # mostly the next speech's line
                claimed.append(line)
                if not span.cut and self._nothing_after(line.end):
                    end = max(end, line.end)  # what the voice activity missed of it
            elif beyond <= snap and inside >= beyond:
                claimed.append(line)
                end = max(end, line.end)
            elif inside < min(snap, beyond):
                continue  # mostly the next speaker's line
            else:
                head, tail = split_line(line, span.end)
                self._lines.append(tail)
                self._lines.remove(line)
                claimed.append(head)
                split = True
                continue
            self._lines.remove(line)
        if adjacent and claimed and not split and end == span.end:
            last_end = max(line.end for line in claimed)
            if 0 < end - last_end <= snap and last_end - span.start >= self.config.min_turn_s:
                end = last_end
        return claimed, end

    def _claim_words(self, start: float, end: float, adjacent: bool
                     ) -> tuple[list[Word], float, float]:
        """Words whose middle is inside the span, and any before it no earlier turn took;
        a boundary inside a word moves to the word's edge. Past a pause, a word that
        starts inside the span is its own (the recognizer's times run a little over)."""
        words = [w for w in self._words
                 if (w.start + w.end) / 2 < end or (not adjacent and w.start < end)]
        if not words:
            return [], start, end
        for w in words:
            self._words.remove(w)
        words.sort(key=lambda w: w.start)
        floor = self._last.end if self._last is not None else -math.inf
        start = min(start, max(words[0].start, floor))
        end = max(end, words[-1].end)
        if adjacent and self._words:
            end = min(end, max(min(w.start for w in self._words), words[-1].end))
        return words, start, end

    # -- orphans ---------------------------------------------------------------------
    def _orphans(self, final: bool) -> list[Turn]:
        """Lines and words that no speech claimed become turns of their own, once no
        speech can claim them any more."""
        if self._pending:
            return []
        turns: list[Turn] = []
        open_from = self._floor.start if self._floor.speaking else math.inf
        for line in sorted(self._lines, key=lambda ln: ln.start):
            if final:
                ready = line.start < self._media_now
            else:
                ready = self._media_now >= line.end + self.orphan_delay_s \
                    and line.end <= open_from
            if ready:
                self._lines.remove(line)
                turns += self._loose([line], [], line.start, line.end,
                                     max(self._now, line.pts))
        if final and self._lines:
            self.unused_lines += len(self._lines)
            log.warning("%d transcript line(s) start after the media's last moment (%.2fs) and "
                        "were not used (first: %s)", len(self._lines), self._media_now,
                        self._lines[0].origin or f"{self._lines[0].start:.2f}s")
            self._lines.clear()
        wait = self.orphan_delay_s + self.config.line_wait_s
        loose = sorted((w for w in self._words if final or (
            w.end <= min(open_from, self._transcribed) and self._media_now >= w.end + wait)),
            key=lambda w: w.start)
        if loose:
            for w in loose:
                self._words.remove(w)
            turns += self._loose([], loose, loose[0].start, loose[-1].end,
                                 max(self._now, loose[-1].pts))
        return turns

    def _loose(self, lines: list[TranscriptLine], words: list[Word], start: float,
               end: float, pts: float) -> list[Turn]:
        if self._last is not None:
            start = max(start, self._last.end)
            end = max(end, start)
        span = Span(start, end, pts, None, "transcript")
        return self._turns(span, start, end, lines, words, origin="transcript")

    # -- turns -----------------------------------------------------------------------
    def _turns(self, span: Span, start: float, end: float, lines: list[TranscriptLine],
               words: list[Word], origin: str = "speech") -> list[Turn]:
        """One turn per line the span holds, split midway between them; lines that
        overlap keep their own ends, and the later turn declares the overlap."""
        lines.sort(key=lambda line: line.start)
        if span.closed_by != "transcript" and lines and lines[0].start < start:
            # Her line began before the speech did (talking over the end of the last
            # turn): the turn reaches back to it, but not before the last turn began.
            start = max(lines[0].start, self._last.start if self._last is not None
                        else -math.inf)
        starts, ends = [start], []
        for before, after in itertools.pairwise(lines):
            middle = (before.end + after.start) / 2
            ends.append(before.end if after.start < before.end else middle)
            starts.append(after.start if after.start < before.end else middle)
        ends.append(end)
        groups = [[line] for line in lines] or [[]]
        turns: list[Turn] = []
        for i, group in enumerate(groups):
            lo = min(max(starts[i], turns[-1].start if turns else start), end)
            hi = min(max(ends[i], lo), end)
            last = i == len(groups) - 1
            mine = [w for w in words if last or (w.start + w.end) / 2 < hi]
            words = [w for w in words if w not in mine]
            turns.append(self._turn(lo, hi, group, mine, span, origin,
                                    closed_by=span.closed_by if last else "line"))
        return turns

    def _turn(self, start: float, end: float, lines: list[TranscriptLine], words: list[Word],
              span: Span, origin: str, *, closed_by: str) -> Turn:
        speakers = {line.speaker for line in lines}
        keyframes = self._keyframes.within(start, end)
        seen = [players for t, players in self._seen if start <= t < end]
        holder = span.holder
        if holder is not None:
            # A speaker out of view is still the speaker: count the frames she was seen in.
            with_holder = [f for f in seen if any(v.player == holder for v in f)]
            seen = with_holder or seen
        # Known now: a turn waits for its words, and is emitted when they are in.
        pts = max(span.pts, self._now)
        text = " ".join(line.text for line in lines) if lines else \
            "".join(w.text for w in words).strip()
        turn = Turn(
            pts=pts, index=self._index, start=start, end=end, text=text,
            speaker_name=speakers.pop() if len(speakers) == 1 else None,
            segments=(SpeechSegment(pts=span.pts, start=start, end=end),)
            if origin == "speech" else (),
            origin=origin,
            keyframes=tuple(f.frame if isinstance(f, PerceivedFrame) else f for f in keyframes),
            views=tuple(f.players if isinstance(f, PerceivedFrame) else () for f in keyframes),
            vote=None if self.speaker is None else vote(seen, self.speaker),
            known_at=min(pts, self._media_now) if math.isfinite(self._media_now) else pts,
            overlap=self._overlaps.within(start, end, lines, self._lines, self._last),
            closed_by=closed_by,
            words=tuple(sorted(words, key=lambda w: w.start)),
            words_from=("transcript" if lines else "asr" if words else None),
        )
        self._overlaps.spoken(lines)
        self._index += 1
        self._last = turn
        return turn


def split_line(line: TranscriptLine, at: float) -> tuple[TranscriptLine, TranscriptLine]:
    """A line cut at `at`, its words divided by time (a line has no word times: each word
    is taken to last in proportion to its letters)."""
    words = line.text.split()
    share = (at - line.start) / max(line.end - line.start, 1e-9)
    letters = [len(w) + 1 for w in words]
    total, run, cut = sum(letters), 0, 0
    for i, n in enumerate(letters):
        if run + n / 2 > share * total:
            break
        run += n
        cut = i + 1
    head = dataclasses.replace(line, end=at, text=" ".join(words[:cut]))
    tail = dataclasses.replace(line, start=at, text=" ".join(words[cut:]))
    return head, tail


class TurnStage(Stage):
    """Video frames, speech events, transcript lines and words in; turns out."""

    name = "turns"

    def __init__(self, core: TurnAssembler) -> None:
        self.core = core

    async def process(self, item: Item) -> Sequence[Item]:
        return self.core.push(item)

    async def finish(self) -> Sequence[Item]:
        return self.core.flush()
