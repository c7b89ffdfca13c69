"""Perception: faces -> tracks -> players -> speaking cue and head yaw -> active speaker.

`Perception` is the synchronous core; the face detector (and the Light-ASD
scorer) are passed in, so tests can drive it with hand-made faces.
`PerceptionStage` owns a real MediaPipe detector (created on start, closed on
stop) and, with `speaker.model: light_asd` and audio, the Light-ASD scorer.

With Light-ASD a frame's speaker is known once its 25 fps tick's score is final,
six ticks (240 ms of media) later: frames wait for it, in order, and come out
with their own time (the stage's holdback says how far back it still holds).
"""

from __future__ import annotations

import logging
import math
import statistics
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import cv2
import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from stream.frames import (
    SAMPLE_RATE,
    AudioChunk,
    Item,
    PerceivedFrame,
    PlayerView,
    VideoFrame,
    VoiceFrame,
)
from stream.runtime import Stage
from stream.speaker.active import ActiveSpeaker, SpeakerConfig
from stream.speaker.cues import MouthMotion
from stream.speaker.sync import Synchrony
from stream.vision.faces import Face, FaceConfig, FaceDetector
from stream.vision.players import PlayerRegistry
from stream.vision.tracker import FaceTracker, Track, TrackerConfig

if TYPE_CHECKING:
    from stream.speaker.asd import LightAsdScorer

log = logging.getLogger(__name__)


class PerceptionConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = Field(True, description="find faces and the active speaker")
    faces: FaceConfig = FaceConfig()
    tracker: TrackerConfig = TrackerConfig()
    speaker: SpeakerConfig = SpeakerConfig()
    names: dict[str, str] = Field(default_factory=dict, description="player id -> name")


GAP_TICKS = 12
"""A gap is a jump of more 25 fps ticks than this (0.48 s), and than three times the
usual spacing of the frames: not dropped frames, nor a low frame rate."""


@dataclass
class _Held:
    """A frame waiting for its tick's Light-ASD scores."""

    video: VideoFrame
    tick: int
    players: dict[int, str]
    views: dict[int, tuple[tuple[float, float, float, float], bool, float, float]]
    """track -> (box, detected, yaw, mouth motion)"""


class Perception:
    def __init__(self, config: PerceptionConfig, detect: Callable[[np.ndarray], list[Face]],
                 scorer: LightAsdScorer | None = None):
        self.config = config
        self.detect = detect
        self.scorer = scorer
        """Light-ASD when it runs; None: the mouth-motion cue."""
        self._held: deque[_Held] = deque()
        self._tick = -1
        """The last 25 fps tick a frame was taken for."""
        self._spacing: deque[int] = deque(maxlen=15)
        """Ticks between the last frames: a gap is a jump of several of them (at 1 fps a
        frame every 25 ticks is no gap)."""
        self._final = -1_000_000
        """The last tick whose scores are final."""
        self._scores: dict[int, dict[int, float]] = {}
        self._last_score: dict[int, float] = {}
        self.tracker = FaceTracker(config.tracker)
        self.players = PlayerRegistry(config.names)
        self.motion = MouthMotion()
        self.speaker = ActiveSpeaker(config.speaker)
        self.sync = self._synchrony() if scorer is not None else None
        """Light-ASD's tie-break between faces that all look like they talk."""
        self.audio_at = 0
        """The sample index after the last audio: where a new scorer's sound starts."""
        self._frames = 0
        self._since_detection = 0
        """Frames since the last detection pass: what the tracker counts in."""
        self._yaw: dict[int, float] = {}

    def _synchrony(self) -> Synchrony | None:
        speaker = self.config.speaker
        return Synchrony(speaker.sync_window_s, speaker.min_motion) if speaker.sync else None

    def voice(self, item: VoiceFrame) -> None:
        self.speaker.voice(item.pts, item.voiced, item.start)

    @property
    def model(self) -> str:
        return "light_asd" if self.scorer is not None else "mouth"

    def audio(self, chunk: AudioChunk) -> None:
        at = round(chunk.pts * SAMPLE_RATE)
        self.audio_at = at + len(chunk.samples)
        if self.scorer is not None:
            self.scorer.audio(chunk.samples, at)
        if self.sync is not None:
            self.sync.audio(chunk.samples, at)

    def holdback(self) -> float | None:
        return self._held[0].video.pts if self._held else None

    def frame(self, video: VideoFrame) -> list[PerceivedFrame]:
        """This frame's perception, or (Light-ASD) the held frames whose scores are now
        final, oldest first."""
        detecting = self._frames % self.config.faces.detect_every == 0
        self._frames += 1
        self._since_detection += 1
        if detecting:
            tracks = self.tracker.update(self.detect(video.image), self._since_detection)
            self._since_detection = 0
        else:
            tracks = self.tracker.confirmed()
        ids = self.players.assign(tracks)
        gray = cv2.cvtColor(video.image, cv2.COLOR_RGB2GRAY)
        motion: dict[str, float] = {}
        for track in tracks:
            seen = track.face if detecting else None
            if seen is not None:
                self._yaw[track.id] = seen.yaw
            motion[ids[track.id]] = self.motion.measure(
                track.id, gray, track.box, seen.mouth if seen is not None else None)
        live = {t.id for t in tracks}
        self.motion.forget(live)
        if self.sync is not None:
            for track in tracks:
                self.sync.motion(track.id, video.pts, motion[ids[track.id]])
            self.sync.forget(live)
        self._yaw = {t: y for t, y in self._yaw.items() if t in live}
        if self.scorer is not None:
            return self._scored(video, gray, tracks, ids, detecting, motion)
        cues, speaker, confidence = self.speaker.frame(video.pts, motion)
        views = tuple(sorted((
            PlayerView(player=ids[t.id], track=t.id, box=tuple(round(v, 1) for v in t.box),
                       detected=detecting and t.face is not None,
                       yaw=round(self._yaw.get(t.id, 0.0), 3),
                       mouth=round(cues[ids[t.id]][0], 5), share=round(cues[ids[t.id]][1], 4),
                       p_speaking=round(cues[ids[t.id]][2], 4))
            for t in tracks), key=lambda v: v.player))
        return [PerceivedFrame(pts=video.pts, source=video.source, seq=video.seq, frame=video,
                               players=views, voiced=self.speaker.voiced(video.pts),
                               speaker=speaker, confidence=round(confidence, 4))]

    def _scored(self, video: VideoFrame, gray: np.ndarray, tracks: Sequence[Track],
                ids: dict[int, str], detecting: bool, motion: dict[str, float]
                ) -> list[PerceivedFrame]:
        from stream.speaker.asd import FPS, face_crop

        assert self.scorer is not None
        tick = int(np.floor(video.pts * FPS + 1e-6))
        out: list[PerceivedFrame] = []
        if self._tick < 0:  # the first frame of a session, a reset or a retry: the present
            self._tick = tick - 1
        elif self._spacing and \
                tick - self._tick > max(GAP_TICKS, 3 * statistics.median(self._spacing)):
            # A gap (a stall, a reconnect): the frames before it go out with what is known,
            # and Light-ASD picks up at the present instead of scoring every tick of the
            # gap with the last crops (491 ticks for 20 s, blocking the event loop).
            log.info("active speaker: a gap of %.1f s before %.1f s; Light-ASD picks up "
                     "there", (tick - self._tick) / FPS, video.pts)
            self._scores.update(self.scorer.restart())
            out = self._release(None)
            self._tick = tick - 1
        elif tick > self._tick >= 0:
            self._spacing.append(tick - self._tick)
        if tick > self._tick:  # each tick takes the first frame at or after it
            crops = {track.id: face_crop(gray, track.box) for track in tracks}
        for t in range(self._tick + 1, tick + 1):
            final = self.scorer.tick(t, crops)
            self._scores.update(final)
            self._final = max([self._final, *final])
        self._tick = max(self._tick, tick)
        self._held.append(_Held(video, tick, {t.id: ids[t.id] for t in tracks}, {
            t.id: (t.box, detecting and t.face is not None, self._yaw.get(t.id, 0.0),
                   motion[ids[t.id]]) for t in tracks}))
        return out + self._release(self._final)

    def fall_back(self) -> list[PerceivedFrame]:
        """Light-ASD stops: the frames it holds go out with what it has computed, and later
        frames get their speaker from mouth motion (measured all along)."""
        out = self.finish()
        self.scorer = None
        self.sync = None
        return out

    def resume(self, scorer: LightAsdScorer) -> None:
        """Light-ASD again, from the next frame on, as at the start of a session (at the
        present: not fed the ticks since it stopped)."""
        self.scorer = scorer
        self.sync = self._synchrony()
        self._tick, self._final = -1, -1_000_000
        self._spacing.clear()
        self._scores.clear()
        self._last_score.clear()

    def finish(self) -> list[PerceivedFrame]:
        """End of the media: what the scorer holds is computed, then the last frames go out
        with the last scores each track had."""
        if self.scorer is not None:
            self._scores.update(self.scorer.flush())
        return self._release(None)

    def _release(self, final: int | None) -> list[PerceivedFrame]:
        out = []
        while self._held and (final is None or self._held[0].tick <= final):
            held = self._held.popleft()
            scores = self._scores.get(held.tick, {})
            for track, p in scores.items():
                self._last_score[track] = p
            probability = self._synchronised(held, {
                held.players[t]: scores.get(t, self._last_score.get(t, 0.0))
                for t in held.players})
            cues, speaker, confidence = self.speaker.probabilities(held.video.pts, probability)
            views = tuple(sorted((
                PlayerView(player=player, track=track, box=tuple(round(v, 1) for v in box),
                           detected=detected, yaw=round(yaw, 3), mouth=round(mouth, 5),
                           share=round(cues[player][1], 4),
                           p_speaking=round(cues[player][2], 4))
                for track, player in held.players.items()
                for box, detected, yaw, mouth in (held.views[track],)), key=lambda v: v.player))
            out.append(PerceivedFrame(
                pts=held.video.pts, source=held.video.source, seq=held.video.seq,
                frame=held.video, players=views, voiced=self.speaker.voiced(held.video.pts),
                speaker=speaker, confidence=round(confidence, 4)))
        for old in [t for t in self._scores if final is None or t <= final]:
            del self._scores[old]
        waiting = {t for h in self._held for t in h.players}  # a gone track's id never returns
        self._last_score = {t: p for t, p in self._last_score.items() if t in waiting}
        return out

    def _synchronised(self, held: _Held, probability: dict[str, float]) -> dict[str, float]:
        """When two or more faces look like they talk (Light-ASD >= 0.5), each one's odds
        are divided by exp(sync_strength x how far its mouth's synchrony with the sound
        trails the best of them); one face alone, or no synchrony yet (a mouth that
        hardly moved has none), is left as it is."""
        if self.sync is None:
            return probability
        contested = [t for t, player in held.players.items() if probability[player] >= 0.5]
        if len(contested) < 2:
            return probability
        known = {t: c for t in contested
                 if (c := self.sync.score(t, held.video.pts)) is not None}
        if len(known) < 2:
            return probability
        best = max(known.values())
        strength = self.config.speaker.sync_strength
        adjusted = dict(probability)
        for track, correlation in known.items():
            player = held.players[track]
            p = min(max(probability[player], 1e-4), 1 - 1e-4)
            odds = p / (1 - p) * math.exp(-strength * (best - correlation))
            adjusted[player] = odds / (1 + odds)
        return adjusted


class PerceptionStage(Stage):
    """Video frames, voice decisions and (Light-ASD) audio in; perceived frames out, one
    per video frame."""

    name = "perception"

    def __init__(self, config: PerceptionConfig | None = None, has_audio: bool = True,
                 pace: float | None = None) -> None:
        """`pace`: media seconds per wall-clock second when the input comes in real time
        (live, or a paced replay): then Light-ASD that falls `fallback_lag_s` behind gives
        way to mouth motion, and is tried again later. None: as fast as it goes, never
        behind."""
        self.config = config or PerceptionConfig()
        self.has_audio = has_audio
        self.pace = pace
        self._clock: tuple[float, float] | None = None
        """(wall-clock, media time) of the first video frame since Light-ASD (re)started."""
        self.fell_back_at: float | None = None
        """The media time at which Light-ASD last gave way to mouth motion."""
        self.fallbacks = 0
        self._retry_at: float | None = None
        """The media time at which Light-ASD is tried again (None: not waiting to)."""
        self._resumed_at = 0.0
        self._scorer: LightAsdScorer | None = None
        """The loaded weights, kept while mouth motion stands in."""
        self._backoff = 1
        self._detector: FaceDetector | None = None
        self.core: Perception | None = None

    @property
    def model(self) -> str:
        """Which speaking cue the session uses: Light-ASD needs audio, else mouth motion."""
        if self.config.speaker.model == "light_asd" and self.has_audio:
            return "light_asd"
        return "mouth"

    @property
    def running(self) -> str:
        """Which speaking cue runs now: `model`, or mouth motion while Light-ASD waits to be
        tried again after falling behind."""
        if self.core is not None and self.core.scorer is None and self.model == "light_asd":
            return "mouth"
        return self.model

    async def start(self) -> None:
        self._detector = FaceDetector(self.config.faces)
        self.core = self._core()
        speaker = self.config.speaker
        if self.model == "light_asd":
            log.info("active speaker: Light-ASD (%s weights, %.1f s window)", speaker.weights,
                     speaker.window_s)
        elif speaker.model == "light_asd":
            log.warning("active speaker: mouth motion (the media has no audio for Light-ASD)")
        else:
            log.info("active speaker: mouth motion")

    def _core(self) -> Perception:
        assert self._detector is not None
        scorer = None
        if self.model == "light_asd":
            if self._scorer is None:
                from stream.speaker.asd import LightAsdScorer

                speaker = self.config.speaker
                self._scorer = LightAsdScorer.load(speaker.weights, speaker.window_s,
                                                   speaker.batch_ticks, speaker.bfloat16)
            elif not self._standing_in:  # a reset: the weights, not the state
                self._scorer = self._scorer.renewed(self.core.audio_at if self.core else 0)
            scorer = None if self._standing_in else self._scorer
        return Perception(self.config, self._detector.detect, scorer)

    @property
    def _standing_in(self) -> bool:
        """Mouth motion stands in for Light-ASD that fell behind: until its retry, or for
        good without one."""
        return self._retry_at is not None or (
            self.fell_back_at is not None and self.config.speaker.fallback_retry_s is None)

    def reset(self) -> None:
        """Forget players, tracks and cues (people changed seats, a new group sat down).
        Light-ASD that fell behind waits for its retry: the CPU is no faster for a new
        group."""
        if self._detector is not None:
            self.core = self._core()

    def holdback(self) -> float | None:
        return self.core.holdback() if self.core is not None else None

    async def process(self, item: Item) -> Sequence[Item]:
        assert self.core is not None, "start() creates the detector"
        if isinstance(item, AudioChunk):
            self.core.audio(item)
            return ()
        if isinstance(item, VoiceFrame):
            self.core.voice(item)
            return ()
        if isinstance(item, VideoFrame):
            if self._retry_at is not None and item.pts >= self._retry_at:
                self._take_up_again(item.pts)
            out = self.core.frame(item)
            if self.core.scorer is not None and self.pace is not None:
                out += self._keep_up(item)
            return out
        return ()

    def lag(self, frame: VideoFrame) -> float:
        """Seconds this frame has waited since the live source handed it on, or (a paced
        replay) since the media time it stands for at the source's pace, against the
        first frame since Light-ASD (re)started."""
        assert self.pace is not None
        now = time.monotonic()
        if frame.received is not None:
            return now - frame.received
        if self._clock is None:
            self._clock = (now, frame.pts)
        return now - self._clock[0] - (frame.pts - self._clock[1]) / self.pace

    def _keep_up(self, frame: VideoFrame) -> list[PerceivedFrame]:
        """Light-ASD's cost is fixed per media second: on a CPU that cannot pay it in real
        time the delay only grows, so past `fallback_lag_s` mouth motion takes over, and
        Light-ASD is tried again `fallback_retry_s` later (twice as late each time it
        falls behind again soon after)."""
        assert self.core is not None
        limit = self.config.speaker.fallback_lag_s
        lag = self.lag(frame)
        if limit is None or lag <= limit:
            return []
        speaker, pts = self.config.speaker, frame.pts
        self.fell_back_at = pts
        self.fallbacks += 1
        retry = speaker.fallback_retry_s
        if retry is not None:
            kept_up = pts - self._resumed_at
            self._backoff = 1 if kept_up > 16 * retry or self.fallbacks == 1 else \
                min(self._backoff * 2, 16)
            self._retry_at = pts + retry * self._backoff
        log.warning("active speaker: Light-ASD is %.1f s behind the media at %.1f s (this "
                    "CPU cannot run it in real time now); mouth motion %s "
                    "(perception.speaker.fallback_lag_s, fallback_retry_s)", lag, pts,
                    "from now on" if self._retry_at is None else
                    f"until {self._retry_at:.1f} s, then Light-ASD again")
        return self.core.fall_back()

    def _take_up_again(self, pts: float) -> None:
        assert self.core is not None and self._scorer is not None
        self._retry_at, self._clock, self._resumed_at = None, None, pts
        self._scorer = self._scorer.renewed(self.core.audio_at)
        self.core.resume(self._scorer)
        log.warning("active speaker: Light-ASD again from %.1f s (it fell behind at %.1f s)",
                    pts, self.fell_back_at)

    async def finish(self) -> Sequence[Item]:
        return self.core.finish() if self.core is not None else ()

    async def stop(self) -> None:
        if self._detector is not None:
            self._detector.close()
            self._detector = None
