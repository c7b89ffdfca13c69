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
RESUME_S = 0.5
"""Where new timestamps resume: at least this far past the newest media time. More than
the audio converter's resync threshold (`decoding.RESYNC_S`, 0.2 s) plus an audio frame
and codec priming (`decoding.MAX_PRIMING_S`), so that the audio's count starts again
with the new run instead of counting on across it, out of step with the video."""


RESTLESS_S = 10.0
"""More than three jumps within this long (two senders on one port, a broken encoder)
are one warning, not one each."""


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

    def wall(self) -> float:
        """Session seconds now, by the wall clock (for inputs without timestamps)."""
        with self._lock:
            self.last = max(self._elapsed(), self.last + 0.001)
            return self.last

    def _elapsed(self) -> float:
        """Wall seconds since the session's first frame (the first call starts the clock);
        under `_lock`."""
        now = self._now()
        if self.start is None:
            self.start = now
        return now - self.start

    def _resume_at(self) -> float:
        """Where a new run of timestamps starts: the present, and past everything so far;
        under `_lock`."""
        return max(self._elapsed(), self.last + RESUME_S)


@dataclass
class _Kind:
    offset: float
    raw: float
    wall: float
    mapped: float


@dataclass
class _Epoch:
    """A kind's new run of timestamps: where it began (raw, and on the session clock),
    its offset, and the kinds that have yet to jump to it."""

    raw: float
    at: float
    offset: float
    waiting: set[str]


class Connection:
    """Maps one connection's stream times, per kind ("audio", "video"), to session time."""

    def __init__(self, clock: SessionClock, start: float | None) -> None:
        self.clock, self.start = clock, start
        self._kinds: dict[str, _Kind] = {}
        self._base: float | None = None
        """The offset a kind takes at its first frame: the latest run's."""
        self._epoch: _Epoch | None = None
        """The last jump, while another kind may still jump to it."""
        self._jumps: list[float] = []
        """Wall times of the jumps in the last `RESTLESS_S`."""

    def __call__(self, kind: str, raw: float) -> float:
        with self.clock._lock:
            t, warning = self._map(kind, raw)
        if warning:  # outside the lock every reader thread takes
            log.warning("%s: %s", self.clock.uri, warning)
        return t

    def _map(self, kind: str, raw: float) -> tuple[float, str | None]:
        wall, warning = self.clock._now(), None
        state = self._kinds.get(kind)
        if state is None:
            if self._base is None:  # the connection's first frame: anchored at the present
                self._base = (raw if self.start is None else self.start) - \
                    self.clock._resume_at()
            state = self._kinds[kind] = _Kind(self._base, raw, wall, -math.inf)
        elif raw < state.raw - BACK_S or raw > state.raw + (wall - state.wall) + JUMP_S:
            state.offset, warning = self._jump(kind, raw, raw - state.raw)
        t = raw - state.offset
        epoch = self._epoch
        if epoch is not None and kind in epoch.waiting and t > epoch.at + JUMP_S:
            epoch.waiting.discard(kind)  # on its old run well past the jump: it did not jump
        behind = max((k.mapped for name, k in self._kinds.items() if name != kind),
                     default=-math.inf) - MAX_SKEW_S - t
        if behind > 0:
            self.clock.resyncs += 1
            warning = (f"{kind} is {behind + MAX_SKEW_S:.1f} s behind the other stream at "
                       f"{t:.1f} s; brought up to it")
            state.offset -= behind + MAX_SKEW_S
            t = raw - state.offset
        state.raw, state.wall, state.mapped = raw, wall, max(state.mapped, t)
        self.clock.last = max(self.clock.last, t)
        return t, warning

    def _jump(self, kind: str, raw: float, step: float) -> tuple[float, str | None]:
        """The offset after `kind`'s timestamps jumped to `raw`: the one another kind chose
        if `raw` falls in that kind's new run (however late it arrives), else one that
        resumes at the present."""
        epoch = self._epoch
        if epoch is not None and kind in epoch.waiting:
            runs_to = max(self._kinds[k].raw for k in self._kinds if k not in epoch.waiting)
            if epoch.raw - JUMP_S < raw < runs_to + JUMP_S:
                epoch.waiting.discard(kind)
                return epoch.offset, None
        self.clock.resyncs += 1
        at = self.clock._resume_at()
        self._epoch = _Epoch(raw, at, raw - at, set(self._kinds) - {kind})
        self._base = self._epoch.offset
        wall = self.clock._now()
        self._jumps = [w for w in self._jumps if w > wall - RESTLESS_S] + [wall]
        if len(self._jumps) > 3:  # one warning for a storm, not one per jump
            return self._epoch.offset, None
        return self._epoch.offset, (
            f"the {kind} timestamps jumped {'back' if step < 0 else 'ahead'} {abs(step):.1f} s "
            f"(a loop, or the sender restarted); the session goes on at {at:.1f} s"
            + ("; they keep jumping (two senders on one port?): further jumps within "
               f"{RESTLESS_S:.0f} s are counted, not logged" if len(self._jumps) == 3 else ""))
