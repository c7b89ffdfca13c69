"""Perception: faces -> tracks -> players -> mouth motion and head yaw -> active speaker.

`Perception` is the synchronous core; the face detector is passed in, so tests
can drive it with hand-made faces. `PerceptionStage` owns a real MediaPipe
detector (created on start, closed on stop).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import cv2
import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from stream.frames import Item, PerceivedFrame, PlayerView, VideoFrame, VoiceFrame
from stream.runtime import Stage
from stream.speaker.active import ActiveSpeaker, SpeakerConfig
from stream.speaker.cues import MouthMotion
from stream.vision.faces import Face, FaceConfig, FaceDetector
from stream.vision.players import PlayerRegistry
from stream.vision.tracker import FaceTracker, TrackerConfig


class PerceptionConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = Field(True, description="find faces and the active speaker")
    faces: FaceConfig = FaceConfig()
    tracker: TrackerConfig = TrackerConfig()
    speaker: SpeakerConfig = SpeakerConfig()
    names: dict[str, str] = Field(default_factory=dict, description="player id -> name")


class Perception:
    def __init__(self, config: PerceptionConfig, detect: Callable[[np.ndarray], list[Face]]):
        self.config = config
        self.detect = detect
        self.tracker = FaceTracker(config.tracker)
        self.players = PlayerRegistry(config.names)
        self.motion = MouthMotion()
        self.speaker = ActiveSpeaker(config.speaker)
        self._frames = 0
        self._since_detection = 0
        """Frames since the last detection pass: what the tracker counts in."""
        self._yaw: dict[int, float] = {}

    def voice(self, item: VoiceFrame) -> None:
        self.speaker.voice(item.pts, item.voiced)

    def frame(self, video: VideoFrame) -> PerceivedFrame:
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
        self._yaw = {t: y for t, y in self._yaw.items() if t in live}
        cues, speaker, confidence = self.speaker.frame(video.pts, motion)
        views = tuple(sorted((
            PlayerView(player=ids[t.id], track=t.id, box=tuple(round(v, 1) for v in t.box),
                       detected=detecting and t.face is not None,
                       yaw=round(self._yaw.get(t.id, 0.0), 3),
                       mouth=round(cues[ids[t.id]][0], 5), share=round(cues[ids[t.id]][1], 4),
                       p_speaking=round(cues[ids[t.id]][2], 4))
            for t in tracks), key=lambda v: v.player))
        return PerceivedFrame(pts=video.pts, source=video.source, seq=video.seq, frame=video,
                              players=views, voiced=self.speaker.voiced(video.pts),
                              speaker=speaker, confidence=round(confidence, 4))


class PerceptionStage(Stage):
    """Video frames and voice decisions in; perceived frames out, one per video frame."""

    name = "perception"

    def __init__(self, config: PerceptionConfig | None = None) -> None:
        self.config = config or PerceptionConfig()
        self._detector: FaceDetector | None = None
        self.core: Perception | None = None

    async def start(self) -> None:
        self._detector = FaceDetector(self.config.faces)
        self.core = Perception(self.config, self._detector.detect)

    def reset(self) -> None:
        """Forget players, tracks and cues (people changed seats, a new group sat down)."""
        if self._detector is not None:
            self.core = Perception(self.config, self._detector.detect)

    async def process(self, item: Item) -> Sequence[Item]:
        assert self.core is not None, "start() creates the detector"
        if isinstance(item, VoiceFrame):
            self.core.voice(item)
            return ()
        if isinstance(item, VideoFrame):
            return [self.core.frame(item)]
        return ()

    async def stop(self) -> None:
        if self._detector is not None:
            self._detector.close()
            self._detector = None
