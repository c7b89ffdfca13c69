"""Audio-visual synchrony: the correlation, and the tie-break between faces that all talk."""

from __future__ import annotations

import numpy as np
import pytest

from stream.frames import SAMPLE_RATE, VideoFrame
from stream.speaker.perception import Perception, PerceptionConfig, _Held
from stream.speaker.sync import HOP, Synchrony

FPS = 30


def _speech(seconds: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A tone whose loudness follows random syllables (4-6 a second), and that loudness
    per video frame."""
    rng = np.random.default_rng(seed)
    frames = int(seconds * FPS)
    envelope = np.zeros(frames + 8)
    at = 0
    while at < frames:
        length = int(rng.integers(5, 8))
        envelope[at:at + length] = np.sin(np.linspace(0, np.pi, length)) * rng.uniform(0.3, 1)
        at += length + int(rng.integers(0, 3))
    envelope = envelope[:frames]
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    loud = np.interp(t, np.arange(frames) / FPS, envelope)
    samples = (8000 * loud * np.sin(2 * np.pi * 180 * t)).astype(np.int16)
    return samples, envelope


def _fed(seconds: float = 3.0) -> tuple[Synchrony, list[float]]:
    samples, envelope = _speech(seconds)
    sync = Synchrony(window_s=1.0)
    for start in range(0, len(samples), 1000):  # chunks that do not line up with hops
        sync.audio(samples[start:start + 1000], start)
    times = [k / FPS for k in range(len(envelope))]
    level = np.log((8000 * envelope) ** 2 / 2 + 1)  # the tone's log energy per frame
    for k, t in enumerate(times):
        # Track 1 speaks: its mouth moves as much as its log energy changed since the last
        # frame. Track 2 mouths silently at 3 Hz; track 3 holds still.
        sync.motion(1, t, abs(level[k] - level[k - 1]) if k else 0.0)
        sync.motion(2, t, abs(np.sin(2 * np.pi * 3 * t) - np.sin(2 * np.pi * 3 * (t - 1 / FPS))))
        sync.motion(3, t, 0.0)
    return sync, times


def test_the_speakers_mouth_moves_with_the_sound_and_a_silent_one_does_not() -> None:
    sync, times = _fed()
    speaker = [sync.score(1, t) for t in times[FPS + 2:]]
    mumbler = [sync.score(2, t) for t in times[FPS + 2:]]
    # The speaker's motion is her loudness's change per frame, which the audio gives back
    # smeared over the 40 ms it is averaged on (most where a syllable starts from
    # silence): 0.53 to 0.79; the silent mouth's rhythm is unrelated to it: below 0.31.
    assert min(speaker) > 0.5 and max(mumbler) < 0.32  # type: ignore[type-var]
    assert np.mean(speaker) > 0.6 > 0.1 > np.mean(mumbler)  # type: ignore[operator]
    assert sync.score(3, times[-1]) is None, "a still mouth has no correlation"
    # A mouth that twitches once, just as a syllable starts, is not in sync: it hardly
    # moved (mean motion under min_motion), whatever its correlation.
    sync.motion(4, times[-FPS - 1], 0.0)
    for t in times[-FPS:]:
        sync.motion(4, t, 0.05 if t == times[-10] else 0.0)
    assert sync.score(4, times[-1]) is None
    sync.min_motion = 0.0
    assert sync.score(4, times[-1]) is not None, "without the floor the twitch would count"


def test_no_score_before_the_window_is_covered_or_beyond_the_audio() -> None:
    sync, times = _fed(2.0)
    assert sync.score(1, times[20]) is None, "0.67 s of history for a 1 s window"
    assert sync.score(1, times[FPS + 2]) is not None
    sync.motion(1, 2.5, 0.1)
    assert sync.score(1, 2.5) is None, "no audio after 2 s"
    assert sync.score(9, times[-1]) is None, "an unknown track"
    sync.forget({2})
    assert sync.score(1, times[-1]) is None and sync.score(2, times[-1]) is not None


def test_audio_gaps_count_as_silence_and_repeats_are_dropped() -> None:
    sync = Synchrony()
    loud = np.full(HOP * 4, 1000, np.int16)
    sync.audio(loud, 0)
    sync.audio(loud, HOP * 8)  # 4 hops missing
    sync.audio(loud[: HOP * 2], HOP * 10)  # repeats the last 2 hops
    loud = np.log(1000.0**2 + 1)
    assert sync._loud == pytest.approx([loud] * 4 + [0.0] * 4 + [loud] * 4, rel=1e-6)


class _Scores:
    def __init__(self, scores: dict[int, float | None]) -> None:
        self.scores = scores

    def score(self, track: int, pts: float) -> float | None:
        return self.scores[track]


def _held() -> _Held:
    frame = VideoFrame(pts=1.0, image=np.zeros((8, 8, 3), np.uint8))
    return _Held(frame, 25, {1: "P1", 2: "P2", 3: "P3"}, {})


def test_only_faces_that_all_look_like_talking_are_told_apart_by_synchrony() -> None:
    perception = Perception(PerceptionConfig(), detect=lambda image: [])
    perception.sync = _Scores({1: 0.6, 2: 0.3, 3: 0.0})  # type: ignore[assignment]
    both = perception._synchronised(_held(), {"P1": 0.9, "P2": 0.9, "P3": 0.2})
    # P2 trails P1 by 0.3: odds 9 / e^3; P1 (the best) and P3 (not contested) unchanged.
    assert both["P1"] == 0.9 and both["P3"] == 0.2
    assert both["P2"] == pytest.approx(9 * np.exp(-3) / (1 + 9 * np.exp(-3)), rel=1e-12)
    alone = {"P1": 0.9, "P2": 0.4, "P3": 0.2}
    assert perception._synchronised(_held(), alone) == alone, "one face talking: as it was"
    perception.sync = _Scores({1: 0.6, 2: None, 3: None})  # type: ignore[assignment]
    unknown = {"P1": 0.9, "P2": 0.9, "P3": 0.2}
    assert perception._synchronised(_held(), unknown) == unknown, "nothing to compare with"
