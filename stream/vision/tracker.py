"""Face tracks with stable ids: constant-velocity prediction, Hungarian assignment.

The cost of pairing a track with a detection mixes IoU with the predicted box
and centre distance in face sizes, so faces that cross keep their ids and a
face missed for a few frames is picked up again. A track is confirmed after
`min_hits` detections in a row and dropped after `max_misses` frames unseen.

Detection may run on every n-th frame only (`faces.detect_every`): each update
says how many frames have passed since the previous one, so unseen time,
velocity and reach are counted in frames, whatever n is.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from pydantic import BaseModel, ConfigDict, Field
from scipy.optimize import linear_sum_assignment

from stream.frames import Box
from stream.vision.faces import Face

INFEASIBLE = 1e6


class TrackerConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    min_hits: int = Field(2, ge=1, description="detections in a row before a track counts")
    max_misses: int = Field(30, ge=0, description="frames a track survives unseen")
    max_cost: float = Field(0.85, gt=0, le=1, description="worst pairing cost still accepted")
    max_jump: float = Field(0.75, gt=0,
                            description="largest centre jump per frame, in face sizes")


@dataclass
class Track:
    id: int
    box: Box
    face: Face | None
    hits: int = 1
    misses: int = 0
    """Frames since the track was last seen."""
    confirmed: bool = False
    velocity: np.ndarray = field(default_factory=lambda: np.zeros(2))
    """Pixels per frame."""

    @property
    def centre(self) -> np.ndarray:
        return np.array([(self.box[0] + self.box[2]) / 2, (self.box[1] + self.box[3]) / 2])

    @property
    def size(self) -> float:
        return max(self.box[2] - self.box[0], self.box[3] - self.box[1], 1.0)

    def predicted(self, frames: int = 1) -> Box:
        """Where the box is `frames` frames after the last update."""
        dx, dy = self.velocity * (self.misses + frames)
        x0, y0, x1, y1 = self.box
        return (x0 + dx, y0 + dy, x1 + dx, y1 + dy)


def iou(a: Box, b: Box) -> float:
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    if w <= 0 or h <= 0:
        return 0.0
    inter = w * h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _centre(box: Box) -> np.ndarray:
    return np.array([(box[0] + box[2]) / 2, (box[1] + box[3]) / 2])


class FaceTracker:
    """Feed each frame's detections; read back the confirmed tracks."""

    def __init__(self, config: TrackerConfig | None = None) -> None:
        self.config = config or TrackerConfig()
        self.tracks: list[Track] = []
        self._next_id = 1

    def update(self, faces: list[Face], frames: int = 1) -> list[Track]:
        """This frame's detections; `frames` have passed since the previous update."""
        if frames < 1:
            raise ValueError(f"an update comes at least one frame after the last, got {frames}")
        cost = self._cost(faces, frames)
        matched_tracks, matched_faces = set(), set()
        if cost.size:
            rows, cols = linear_sum_assignment(cost)
            for r, c in zip(rows, cols, strict=True):
                if cost[r, c] <= self.config.max_cost:
                    self._hit(self.tracks[r], faces[c], frames)
                    matched_tracks.add(r)
                    matched_faces.add(c)
        for r, track in enumerate(self.tracks):
            if r not in matched_tracks:
                track.misses += frames
                track.hits = 0
                track.face = None
        self.tracks = [t for t in self.tracks if self._alive(t)]
        for c, face in enumerate(faces):
            if c not in matched_faces:
                self.tracks.append(Track(self._next_id, face.box, face,
                                         confirmed=self.config.min_hits <= 1))
                self._next_id += 1
        return self.confirmed()

    def confirmed(self) -> list[Track]:
        return [t for t in self.tracks if t.confirmed]

    def _alive(self, track: Track) -> bool:
        limit = self.config.max_misses if track.confirmed else 0
        return track.misses <= limit

    def _hit(self, track: Track, face: Face, frames: int) -> None:
        step = track.misses + frames
        track.velocity = 0.5 * track.velocity + 0.5 * (_centre(face.box) - track.centre) / step
        track.box, track.face = face.box, face
        track.hits += 1
        track.misses = 0
        if track.hits >= self.config.min_hits:
            track.confirmed = True

    def _cost(self, faces: list[Face], frames: int) -> np.ndarray:
        cost = np.full((len(self.tracks), len(faces)), INFEASIBLE)
        for r, track in enumerate(self.tracks):
            predicted = track.predicted(frames)
            reach = track.size * self.config.max_jump * (track.misses + frames)
            for c, face in enumerate(faces):
                distance = float(np.linalg.norm(_centre(face.box) - _centre(predicted)))
                overlap = iou(predicted, face.box)
                if overlap == 0 and distance > reach:
                    continue
                cost[r, c] = 0.5 * (1 - overlap) + 0.5 * min(1.0, distance / reach)
        return cost
