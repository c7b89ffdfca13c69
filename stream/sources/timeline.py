"""One session clock for a live feed, whatever its timestamps do.

A live feed's timestamps are not to be trusted for long: a sender that loops a file
or restarts starts again near zero (or anywhere: MPEG-TS encoders start at random), a
camera that reconnects starts its own clock, and an encoder may let audio and video
drift apart. Inside the pipeline every edge needs non-decreasing media time, and
Light-ASD needs a face and the sound of the same moment.

So each connection maps its stream's times onto the session clock with an offset
that holds while the timestamps advance as the wall clock does, and is re-anchored
at the present when they jump (back, or forward by more than the time that passed).
Audio and video jump together at a loop or a restart: the second one to jump takes
the offset the first one chose, so they stay in step. A kind that falls more than
`MAX_SKEW_S` behind the other is brought up to it (a gap in that kind, never an
overlap). Each event is logged once, as a warning; the clock never goes back.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger(__name__)

JUMP_S = 2.0
"""A stream's time moving this much further than the wall clock did, or back by more than
`BACK_S`, is a jump: new timestamps, not new media."""
BACK_S = 0.5
"""Decoded frames come in presentation order; a step back smaller than this is a broken
timestamp (the converters drop or re-count it), not a restart."""
MAX_SKEW_S = 2.0
"""Audio and video further apart than this on the session clock have drifted; the mux of
a healthy stream keeps them well within a second."""
RESUME_S = 0.21
"""Where new timestamps resume: at least this far past the newest media time, room for
audio that precedes the picture (codec priming, `decoding.MAX_PRIMING_S`)."""


class SessionClock:
    """Session seconds since the first frame, shared by every input and connection."""

    def __init__(self, uri: str, now: Callable[[], float] = time.monotonic) -> None:
        self.uri, self._now = uri, now
        self.start: float | None = None
        self.last = -math.inf
        """The newest media time handed out."""
        self.resyncs = 0
        """Timestamp jumps and drifts taken up, over the session."""
        self._lock = threading.Lock()

    def connection(self, start: float | None) -> Connection:
        """A new connection whose stream starts at `start` (seconds; None: its first frame)."""
        return Connection(self, start)

    def elapsed(self) -> float:
        """Wall seconds since the session's first frame (the first call starts the clock)."""
        now = self._now()
        if self.start is None:
            self.start = now
        return now - self.start

    def wall(self) -> float:
        """Session seconds now, by the wall clock (for inputs without timestamps)."""
        with self._lock:
            self.last = max(self.elapsed(), self.last + 0.001)
            return self.last

    def resume_at(self) -> float:
        """Where a new run of timestamps starts: the present, and past everything so far."""
        return max(self.elapsed(), self.last + RESUME_S)

    def seen(self, t: float) -> None:
        with self._lock:
            self.last = max(self.last, t)


@dataclass
class _Kind:
    offset: float
    raw: float
    wall: float
    mapped: float


@dataclass(frozen=True)
class _Epoch:
    """Where a kind's new run of timestamps began, and its offset."""

    kind: str
    raw: float
    offset: float


class Connection:
    """Maps one connection's stream times, per kind ("audio", "video"), to session time."""

    def __init__(self, clock: SessionClock, start: float | None) -> None:
        self.clock, self.start = clock, start
        self._kinds: dict[str, _Kind] = {}
        self._base: float | None = None
        """The offset a kind takes at its first frame."""
        self._epoch: _Epoch | None = None
        """The last jump, until the other kind has taken it."""

    def __call__(self, kind: str, raw: float) -> float:
        with self.clock._lock:
            wall = self.clock._now()
            state = self._kinds.get(kind)
            if state is None:
                state = self._first(kind, raw, wall)
            elif raw < state.raw - BACK_S or raw > state.raw + (wall - state.wall) + JUMP_S:
                state.offset = self._jump(kind, raw, raw - state.raw)
            t = raw - state.offset
            behind = max((k.mapped for name, k in self._kinds.items() if name != kind),
                         default=-math.inf) - MAX_SKEW_S - t
            if behind > 0:
                self.clock.resyncs += 1
                log.warning("%s: %s is %.1f s behind the other stream at %.1f s; brought "
                            "up to it", self.clock.uri, kind, behind + MAX_SKEW_S, t)
                state.offset -= behind + MAX_SKEW_S
                t = raw - state.offset
            state.raw, state.wall, state.mapped = raw, wall, max(state.mapped, t)
            self.clock.last = max(self.clock.last, t)
            return t

    def _first(self, kind: str, raw: float, wall: float) -> _Kind:
        if self._base is None:  # the connection's first frame: anchored at the present
            self._base = (raw if self.start is None else self.start) - self.clock.resume_at()
        state = _Kind(self._base, raw, wall, -math.inf)
        self._kinds[kind] = state
        return state

    def _jump(self, kind: str, raw: float, step: float) -> float:
        """The offset after `kind`'s timestamps jumped to `raw`: the one the other kind
        chose if it jumped to the same place, else one that resumes at the present."""
        epoch = self._epoch
        other = self._kinds.get(epoch.kind) if epoch is not None else None
        if epoch is not None and other is not None and epoch.kind != kind and \
                epoch.raw - JUMP_S < raw < other.raw + JUMP_S:
            # Within the other kind's new run of timestamps, however late it arrives.
            self._epoch = None  # both kinds are on it; the next jump starts another
            return epoch.offset
        self.clock.resyncs += 1
        at = self.clock.resume_at()
        log.warning("%s: the %s timestamps jumped %s %.1f s (a loop, or the sender "
                    "restarted); the session goes on at %.1f s", self.clock.uri, kind,
                    "back" if step < 0 else "ahead", abs(step), at)
        self._epoch = _Epoch(kind, raw, raw - at)
        self._base = self._epoch.offset
        return self._epoch.offset
