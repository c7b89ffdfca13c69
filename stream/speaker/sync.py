"""Audio-visual synchrony: whose mouth moves with the sound.

Light-ASD says whether a face looks like it is talking while there is speech, and a
listener who moves her lips without a sound (mumbling along, chewing, a silent "mm")
looks like that too: the released model rates such a listener as high as the speaker.
What tells them apart is timing. A speaker's mouth opens and closes with her syllables,
so the frame-to-frame motion of her mouth rises and falls with the frame-to-frame
change of the sound's loudness; a silent mouth keeps its own rhythm (audio-visual
synchrony as Hershey and Movellan measured it, NIPS 1999, and as SyncNet learned it).

Per face track, the Pearson correlation over the last `window_s` between the mouth's
motion (`stream.speaker.cues.MouthMotion`, already measured for every frame) and the
|change of the audio's log energy| over the same frame step, at lag 0. Only the past is
used: the frame being decided and the audio up to it.
"""

from __future__ import annotations

from collections import deque

import numpy as np

from stream.frames import SAMPLE_RATE

HOP = SAMPLE_RATE // 100
"""Loudness is kept per 10 ms."""
AROUND = 2
"""A frame's loudness: the mean log energy of the 10 ms hops within 20 ms of it."""
KEEP_S = 10.0


class Synchrony:
    """Feed audio and each track's mouth motion in media-time order; ask `score`."""

    def __init__(self, window_s: float = 1.0, min_motion: float = 0.002) -> None:
        self.window_s = window_s
        self.min_motion = min_motion
        """A mouth whose mean motion in the window is below this hardly moved: a twitch or
        two would decide its correlation, so it has none."""
        self._loud: list[float] = []
        """log(mean square + 1) per 10 ms hop, from `_first_hop` on."""
        self._first_hop = 0
        self._partial = np.zeros(0, np.float32)
        self._next_sample: int | None = None
        self._motion: dict[int, deque[tuple[float, float]]] = {}

    def audio(self, samples: np.ndarray, at: int) -> None:
        """`samples` (int16) starting at sample index `at`; a gap is taken as silence."""
        if self._next_sample is not None and at - self._next_sample > KEEP_S * SAMPLE_RATE:
            self._next_sample, self._loud, self._partial = None, [], np.zeros(0, np.float32)
        if self._next_sample is None:  # first audio, or after a gap longer than is kept
            self._next_sample = self._first_hop = at // HOP * HOP
            self._first_hop //= HOP
        if at > self._next_sample:
            samples = np.concatenate([np.zeros(at - self._next_sample, np.int16), samples])
        elif at < self._next_sample:
            samples = samples[self._next_sample - at:]
        self._next_sample += len(samples)
        data = np.concatenate([self._partial, samples.astype(np.float32)])
        whole = len(data) // HOP * HOP
        if whole:
            hops = data[:whole].reshape(-1, HOP)
            self._loud.extend(np.log(np.mean(hops * hops, axis=1) + 1.0).tolist())
        self._partial = data[whole:]
        extra = len(self._loud) - round(KEEP_S * 100)
        if extra > 0:
            del self._loud[:extra]
            self._first_hop += extra

    def motion(self, track: int, pts: float, value: float) -> None:
        history = self._motion.setdefault(track, deque())
        history.append((pts, value))
        while history and history[0][0] < pts - KEEP_S:
            history.popleft()

    def forget(self, live: set[int]) -> None:
        for track in [t for t in self._motion if t not in live]:
            del self._motion[track]

    def _loudness(self, t: float) -> float | None:
        hop = round(t * 100) - self._first_hop
        if hop - AROUND < 0 or hop + AROUND > len(self._loud):
            return None
        return float(np.mean(self._loud[hop - AROUND: hop + AROUND]))

    def score(self, track: int, pts: float) -> float | None:
        """The correlation for the window ending at `pts`; None when the track or the audio
        does not cover the window yet, the mouth hardly moved, or the sound is flat."""
        history = list(self._motion.get(track, ()))
        inside = [i for i, (t, _) in enumerate(history) if pts - self.window_s < t <= pts + 1e-9]
        if len(inside) < 2 or history[inside[0]][0] > pts - self.window_s + 0.1:
            return None
        # Each frame's motion is relative to the frame before it (the first one in the
        # history has none before it), and so is the change of loudness it is paired with.
        first, last = max(inside[0], 1), inside[-1]
        loudness = [self._loudness(t) for t, _ in history[first - 1:last + 1]]
        if None in loudness:
            return None
        a = np.array([m for _, m in history[first:last + 1]])
        b = np.abs(np.diff(np.array(loudness, dtype=float)))
        if len(a) < 3 or a.mean() < self.min_motion or a.std() == 0 or b.std() == 0:
            return None
        return float(np.corrcoef(a, b)[0, 1])
