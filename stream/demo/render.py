"""Lay out a scene in time and draw its frames.

Timing comes from the synthesized speech itself, so the ground truth is exact:
a line's start and end are the first and last voiced samples placed on the
timeline. While a player speaks their jaw follows the speech envelope and they
face the person they address; listeners face the speaker.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from stream.demo import portrait as pt
from stream.demo.scene import Scene
from stream.demo.speech import envelope
from stream.frames import SAMPLE_RATE

TABLE_TOP = 400
YAW_TIME_CONSTANT = 0.25
LIGHT_PERIOD_S = 7.0
MOUTH_RELEASE = 0.5
"""Per-frame decay of mouth opening when the voice drops (jaw closes smoothly)."""
SWAY_YAW = 0.6
SWAY_HZ = 0.7
"""A swaying listener's head yaw swings this far either side of her gaze, this often."""


@dataclass(frozen=True)
class PlacedLine:
    index: int
    start: float
    end: float
    audio: np.ndarray


def layout(scene: Scene, audios: list[np.ndarray]) -> tuple[list[PlacedLine], float]:
    """Place each line after the previous one; return them and the clip's duration."""
    placed, t = [], scene.lead_in
    for i, audio in enumerate(audios):
        t = round(t * SAMPLE_RATE) / SAMPLE_RATE
        end = t + len(audio) / SAMPLE_RATE
        placed.append(PlacedLine(i, t, end, audio))
        t = end + scene.gaps[i % len(scene.gaps)]
    return placed, placed[-1].end + scene.tail


def mix(placed: list[PlacedLine], duration: float, noise: float = 0.0,
        seed: int = 0) -> np.ndarray:
    track = np.zeros(int(np.ceil(duration * SAMPLE_RATE)), np.float32)
    if noise > 0:
        track += np.random.default_rng(seed).normal(0, noise, track.size).astype(np.float32)
    for line in placed:
        at = round(line.start * SAMPLE_RATE)
        track[at: at + len(line.audio)] += line.audio
    return np.clip(track, -1.0, 1.0)


def seat_centres(scene: Scene) -> list[int]:
    if scene.seat_xs is not None:
        return list(scene.seat_xs)
    n = len(scene.players)
    return [round(scene.width * (i + 0.5) / n) for i in range(n)]


def background(scene: Scene) -> np.ndarray:
    rows = np.linspace(0.0, 1.0, scene.height, dtype=np.float32)[:, None, None]
    wall = (1 - rows) * np.array([214, 205, 190], np.float32) + rows * np.array([150, 140, 128])
    image = np.broadcast_to(wall, (scene.height, scene.width, 3)).astype(np.uint8).copy()
    image[TABLE_TOP:] = (110, 78, 52)
    return image


class Renderer:
    """Draws frame after frame; keeps the smoothed head and jaw state between calls."""

    def __init__(self, scene: Scene, placed: list[PlacedLine]) -> None:
        self.scene, self.placed = scene, placed
        self.backdrop = background(scene)
        self.centres = seat_centres(scene)
        self.ids = [p.id for p in scene.players]
        self.portraits = [pt.portrait(p.look) for p in scene.players]
        n = len(self.ids)
        self.yaw = np.zeros(n)
        self.target = np.zeros(n)
        self.mouth = np.zeros(n)
        self.nod = np.zeros(n)
        self.voices = [
            envelope(pl.audio, np.arange(0.0, pl.end - pl.start, 1.0 / scene.fps)) for pl in placed
        ]

    def frame(self, t: float) -> np.ndarray:
        self._update(t)
        image = self.backdrop.copy()
        for i, p in enumerate(self.portraits):
            player = self.scene.players[i]
            face = pt.animate(p, float(self.mouth[i]), float(self.yaw[i]), player.mouth,
                              float(self.nod[i]))
            if any(a.player == self.ids[i] and a.start <= t < a.end for a in self.scene.away):
                face = pt.back_of_head(p, face)
            self._paste(image, i, face, p)
        image[TABLE_TOP:] = self.backdrop[TABLE_TOP:]
        if self.scene.light_swing > 0:
            gain = 1 + self.scene.light_swing * np.sin(2 * np.pi * t / LIGHT_PERIOD_S)
            image = np.clip(image.astype(np.float32) * gain, 0, 255).astype(np.uint8)
        if self.scene.video_noise > 0:
            rng = np.random.default_rng(round(t * self.scene.fps))
            noisy = image + rng.normal(0, self.scene.video_noise, image.shape)
            image = np.clip(noisy, 0, 255).astype(np.uint8)
        return image

    def _update(self, t: float) -> None:
        # Every line being spoken moves its speaker's mouth (handovers without a pause and
        # overlaps animate both people); the line that started last leads everyone's gaze.
        near = [pl for pl in self.placed if pl.start - 0.3 <= t <= pl.end + 0.3]
        voice = np.zeros(len(self.ids))
        if near:
            spoken = self.scene.lines[max(near, key=lambda pl: pl.start).index]
            speaker = self.ids.index(spoken.speaker)
            addressee = self.ids.index(spoken.addressee)
            for i in range(len(self.ids)):
                self.target[i] = self._facing(i, addressee if i == speaker else speaker)
        for line in near:
            speaker = self.ids.index(self.scene.lines[line.index].speaker)
            frame = round((t - line.start) * self.scene.fps)
            said = 0.0
            if line.start <= t <= line.end and frame < len(self.voices[line.index]):
                said = self.voices[line.index][frame]
                voice[speaker] = max(voice[speaker], said)
            for i, player in enumerate(self.scene.players):
                if player.mumbles and i != speaker and line.start <= t <= line.end:
                    # Silent lips and a nod while listening: motion that is not speech.
                    voice[i] = 0.6 * max(0.0, np.sin(2 * np.pi * 3.0 * t))
                    self.nod[i] = 5.0 * max(0.0, np.sin(2 * np.pi * 0.8 * t))
                if player.echoes and i != speaker:
                    # Mouthing the words along, silently: lips that move with the sound.
                    voice[i] = max(voice[i], player.echoes * said)
        for i, player in enumerate(self.scene.players):
            if player.turned:
                self.target[i] = player.turned
        step = 1.0 / self.scene.fps
        goal = self._swayed(t, near)
        self.yaw += (goal - self.yaw) * (1 - np.exp(-step / YAW_TIME_CONSTANT))
        self.mouth = np.maximum(voice, self.mouth * MOUTH_RELEASE)

    def _swayed(self, t: float, near: list[PlacedLine]) -> np.ndarray:
        """The yaw each head turns towards: its target, swung to and fro for a swaying
        listener (no one else's is touched, so scenes without one render as before)."""
        goal = self.target.copy()
        speaking = {self.scene.lines[pl.index].speaker for pl in near if pl.start <= t <= pl.end}
        for i, player in enumerate(self.scene.players):
            if player.sways and self.ids[i] not in speaking:
                swing = SWAY_YAW * np.sin(2 * np.pi * SWAY_HZ * t)
                goal[i] = np.clip(goal[i] + swing, -1.0, 1.0)
        return goal

    def _facing(self, i: int, j: int) -> float:
        if i == j:
            return 0.0
        distance = (self.centres[j] - self.centres[i]) / (self.scene.width / 2)
        return float(np.clip(distance * 1.5, -1.0, 1.0))

    def _paste(self, image: np.ndarray, seat: int, face: np.ndarray, p: pt.Portrait) -> None:
        player = self.scene.players[seat]
        scale = player.scale or self.scene.scale
        h = round(pt.HEIGHT * scale)
        top = self.scene.top + round(pt.HEIGHT * (self.scene.scale - scale) * 0.5)
        # A head turned by about 45 degrees shows about cos(45) = 0.7 of its width.
        w = round(pt.WIDTH * scale * (1 - 0.3 * abs(player.turned)))
        face = cv2.resize(face, (w, h), interpolation=cv2.INTER_AREA)
        alpha = cv2.resize(p.alpha, (w, h), interpolation=cv2.INTER_AREA)[..., None]
        x0 = self.centres[seat] - w // 2
        x1, y1 = min(x0 + w, image.shape[1]), min(top + h, image.shape[0])
        xs = max(x0, 0)
        region = image[top:y1, xs:x1].astype(np.float32)
        src = face[: y1 - top, xs - x0: x1 - x0].astype(np.float32)
        a = alpha[: y1 - top, xs - x0: x1 - x0]
        image[top:y1, xs:x1] = (a * src + (1 - a) * region).astype(np.uint8)
