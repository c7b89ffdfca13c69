"""What the pipeline knows, drawn over the picture: one renderer for the annotated video
and the web view, so both show the same thing.

It draws what was known at each frame's media time, as a live viewer would have seen
it: a turn's words appear once the turn is emitted (a hangover after it ends), never
ahead of time. Per frame: every person's box, coloured from grey (silent) to green by
their speaking probability, labelled with id, name and probability; the frame's
speaker in a thick yellow box. From the latest turn: its words as a subtitle (until
the next turn, at most `subtitle_s`), an arrow from its speaker to the predicted
addressee and a mark on each mentioned player; with `--attention`, under all of it, where
the engine's speaker-biased heads looked while reading those words, as a heat map.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from stream.frames import (
    AttentionMap,
    Box,
    PerceivedFrame,
    PlayerView,
    Prediction,
    Turn,
    VideoFrame,
)

SILENT = (150, 150, 150)
SPEAKING = (40, 220, 90)
SPEAKER = (255, 200, 0)
"""The current speaker's box and label: a colour no probability ramp reaches."""
ADDRESSEE = (0, 190, 255)
MENTIONED = (235, 60, 200)
TEXT = (255, 255, 255)
SUBTITLE_BAND = (0, 0, 0, 150)
HEAT_TAG = (255, 150, 0)
HEAT_ALPHA = 0.6
HEAT_FULL = 4.0
"""A cell with this many times its fair share of attention is drawn at full heat
(`HEAT_ALPHA`, yellow); one with its share or less is not drawn: a model that looks
everywhere alike leaves the picture as it is."""


def ramp(p: float) -> tuple[int, int, int]:
    """Grey at probability 0 to green at 1."""
    p = min(max(p, 0.0), 1.0)
    return tuple(round(s + (e - s) * p) for s, e in zip(SILENT, SPEAKING, strict=True))  # type: ignore[return-value]


@dataclass
class Scene:
    """What is drawn over one frame."""

    pts: float
    players: tuple[PlayerView, ...]
    speaker: str | None
    subtitle: str | None
    addressee: str | None
    mentioned: tuple[str, ...]
    turn_speaker: str | None
    attention: AttentionMap | None = None


class Overlay:
    """Keeps the latest turn and prediction; draws them and a frame's players."""

    def __init__(self, names: dict[str, str] | None = None, subtitle_s: float = 4.0) -> None:
        self.names = names or {}
        self.subtitle_s = subtitle_s
        self.turn: Turn | None = None
        self.prediction: Prediction | None = None
        self._fonts: dict[int, ImageFont.FreeTypeFont | ImageFont.ImageFont] = {}
        self._heat: tuple[AttentionMap, tuple[int, int], np.ndarray, np.ndarray] | None = None
        """The last heat map at the last picture size: what to keep of the picture and
        what to add (the blend is the same for every frame it is drawn on)."""

    def add(self, item: Turn | Prediction) -> None:
        if isinstance(item, Turn):
            self.turn, self.prediction = item, None
        elif self.turn is not None and item.turn == self.turn.index:
            self.prediction = item

    def label(self, player: str | None) -> str:
        if player is None:
            return "unknown"
        name = self.names.get(player)
        return f"{player} {name}" if name else player

    def scene(self, frame: PerceivedFrame | VideoFrame) -> Scene:
        players = frame.players if isinstance(frame, PerceivedFrame) else ()
        speaker = frame.speaker if isinstance(frame, PerceivedFrame) else None
        subtitle = addressee = turn_speaker = None
        mentioned: tuple[str, ...] = ()
        attention = None
        turn = self.turn
        shown_from = turn.known_at if turn is not None and turn.known_at is not None \
            else turn.pts if turn is not None else None
        if turn is not None and shown_from is not None \
                and shown_from <= frame.pts <= shown_from + self.subtitle_s:
            turn_speaker = turn.vote.speaker if turn.vote is not None else None
            who = turn.speaker_name or self.names.get(turn_speaker or "") or turn_speaker
            subtitle = f"{who or 'unknown'}: {turn.text.strip() or '(no words)'}"
            # Answers are player ids, or "nobody": only ids in view are drawn.
            if self.prediction is not None:
                attention = self.prediction.attention
                for answer in self.prediction.answers:
                    if answer.task == "addressee":
                        addressee = answer.answer
                    elif answer.task == "mentioned":
                        mentioned += (answer.answer,)
        return Scene(frame.pts, players, speaker, subtitle, addressee, mentioned, turn_speaker,
                     attention)

    def draw(self, frame: PerceivedFrame | VideoFrame) -> np.ndarray:
        """The frame's picture with the overlay, as a new RGB array."""
        video = frame.frame if isinstance(frame, PerceivedFrame) else frame
        scene = self.scene(frame)
        image = video.image
        if scene.attention is not None:
            image = self._blend(image, scene.attention)
        picture = Image.fromarray(image)
        draw = ImageDraw.Draw(picture, "RGBA")
        size = max(12, video.height // 32)
        font = self._font(size)
        if scene.attention is not None:
            _tag(draw, (4, 4), f"attention, {scene.attention.heads} heads",
                 font, HEAT_TAG, below=True)
        thin = max(2, video.height // 240)
        boxes = {view.player: view.box for view in scene.players}
        for view in scene.players:
            speaking = view.player == scene.speaker
            colour = SPEAKER if speaking else ramp(view.p_speaking)
            x0, y0, x1, y1 = view.box
            draw.rectangle((x0, y0, x1, y1), outline=colour, width=thin * (2 if speaking else 1))
            tag = f"{self.label(view.player)} {view.p_speaking:.2f}"
            _tag(draw, (x0, y0), tag, font, colour)
            if view.player in scene.mentioned:
                _tag(draw, (x0, y1 + thin), "mentioned", font, MENTIONED, below=True)
        if scene.turn_speaker in boxes and scene.addressee in boxes \
                and scene.addressee != scene.turn_speaker:
            _arrow(draw, boxes[scene.turn_speaker], boxes[scene.addressee], thin * 2)
        if scene.subtitle:
            _subtitle(draw, picture.size, scene.subtitle, self._font(size + 2))
        return np.asarray(picture)

    def _blend(self, image: np.ndarray, attention: AttentionMap) -> np.ndarray:
        """The picture under the heat map: the map's cells stretched over the whole frame
        (the model saw the whole frame, resized), from transparent to red to yellow."""
        size = (image.shape[1], image.shape[0])
        if self._heat is None or self._heat[0] is not attention or self._heat[1] != size:
            heat = np.clip((attention.grid - 1) / (HEAT_FULL - 1), 0, 1)
            cells = Image.fromarray((heat * 255).round().astype(np.uint8))
            level = np.asarray(cells.resize(size, Image.Resampling.BILINEAR),
                               np.float32)[..., None] / 255
            colour = np.concatenate([np.full_like(level, 255), 255 * level,
                                     np.zeros_like(level)], axis=-1)
            alpha = HEAT_ALPHA * level
            self._heat = (attention, size, 1 - alpha, colour * alpha)
        _, _, keep, add = self._heat
        return (image.astype(np.float32) * keep + add).round().astype(np.uint8)

    def _font(self, size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
        if size not in self._fonts:
            self._fonts[size] = ImageFont.load_default(size=size)
        return self._fonts[size]


def _tag(draw: ImageDraw.ImageDraw, at: tuple[float, float], text: str,
         font: ImageFont.FreeTypeFont | ImageFont.ImageFont, colour: tuple[int, int, int],
         below: bool = False) -> None:
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    w, h = right - left + 6, bottom - top + 6
    x, y = at[0], at[1] if below else at[1] - h
    if y < 0:
        y = at[1]
    draw.rectangle((x, y, x + w, y + h), fill=colour)
    draw.text((x + 3 - left, y + 3 - top), text, fill=(0, 0, 0), font=font)


def _centre(box: Box) -> np.ndarray:
    return np.array([(box[0] + box[2]) / 2, (box[1] + box[3]) / 2])


def _arrow(draw: ImageDraw.ImageDraw, source: Box, target: Box, width: int) -> None:
    start, end = _centre(source), _centre(target)
    direction = end - start
    length = float(np.hypot(*direction))
    if length < 1:
        return
    unit = direction / length
    # From the edge of the speaker's box area to short of the addressee's centre.
    start = start + unit * min(length / 4, (source[3] - source[1]) / 2)
    end = end - unit * min(length / 4, (target[3] - target[1]) / 2)
    draw.line((*start, *end), fill=ADDRESSEE, width=width)
    head = 4 * width
    normal = np.array([-unit[1], unit[0]])
    base = end - unit * head
    draw.polygon([tuple(end), tuple(base + normal * head / 2), tuple(base - normal * head / 2)],
                 fill=ADDRESSEE)


def _subtitle(draw: ImageDraw.ImageDraw, size: tuple[int, int], text: str,
              font: ImageFont.FreeTypeFont | ImageFont.ImageFont) -> None:
    width, height = size
    lines = _wrap(draw, text, font, width - 20)[-3:]
    line_h = draw.textbbox((0, 0), "Ag", font=font)[3] + 4
    top = height - line_h * len(lines) - 12
    draw.rectangle((0, top - 6, width, height), fill=SUBTITLE_BAND)
    for i, line in enumerate(lines):
        draw.text((10, top + i * line_h), line, fill=TEXT, font=font)


def _wrap(draw: ImageDraw.ImageDraw, text: str,
          font: ImageFont.FreeTypeFont | ImageFont.ImageFont, width: int) -> list[str]:
    lines: list[str] = []
    current = ""
    for word in text.split():
        trial = f"{current} {word}".strip()
        if current and draw.textlength(trial, font=font) > width:
            lines.append(current)
            current = word
        else:
            current = trial
    return [*lines, current] if current else lines
