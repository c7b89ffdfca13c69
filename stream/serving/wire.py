"""A turn as JSON: what the engine service receives, the MQTT bridge reads from a turn
event, and the turn log keeps.

Whatever arrives over a network is checked here before anything is decoded or
computed, so that a hostile or broken request costs a parse and a one-line reason, not
a replica: numbers must be finite, ids short, the text and the frames bounded, and a key
frame's size is read from its PNG header before its pixels are. The limits are far above
what an edge sends (a turn of a minute is about a thousand characters; the engine takes
two key frames of a camera's picture) and far below what hurts a replica.
"""

from __future__ import annotations

import base64
import binascii
import struct
from typing import Annotated, Any

import cv2
import numpy as np
from pydantic import (
    AllowInfNan,
    BaseModel,
    ConfigDict,
    Field,
    Strict,
    ValidationError,
    model_validator,
)

from stream.frames import PlayerView, SpeakerVote, Turn, VideoFrame

MAX_TEXT = 100_000
"""Characters of a turn's words (the engine takes at most `engine.max_turn_words` of
them; what is past this is not a turn but an attack)."""
MAX_FRAMES = 16
MAX_PIXELS = 3840 * 2160
"""Pixels of one key frame (4K)."""
MAX_PLAYERS = 64
"""People in one frame, or scored in one vote."""
MAX_INDEX = 2**31 - 1
MAX_ID = 128
"""Characters of a session id, a player id or a name."""
MAX_SOURCE = 4096
"""Characters of a frame's source (a path or a URL)."""

Number = Annotated[float, Strict(), AllowInfNan(False)]
MAX_PIXEL = 100_000
Coordinate = (Annotated[int, Strict(), Field(ge=-MAX_PIXEL, le=MAX_PIXEL)]
              | Annotated[float, Strict(), AllowInfNan(False),
                          Field(ge=-MAX_PIXEL, le=MAX_PIXEL)])
"""A pixel position; ints stay ints: a rebuilt session draws the boxes it drew the first
time."""
MAX_ASPECT = 100
"""Of a key frame's longer side to its shorter (vision processors refuse 200)."""
MAX_ELEMENTS = 50_000
"""Commas, objects and arrays in one body: a turn has a few thousand; a body of tiny
elements is gigabytes once parsed (about 700 bytes each), so it is counted first."""
Count = Annotated[int, Strict(), Field(ge=0, le=MAX_INDEX)]
Id = Annotated[str, Strict(), Field(min_length=1, max_length=MAX_ID)]


class _Wire(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class ViewWire(_Wire):
    player: Annotated[str, Strict(), Field(pattern=r"^[A-Za-z0-9_.:-]{1,128}$")]
    track: Annotated[int, Strict()]
    box: Annotated[list[Coordinate], Field(min_length=4, max_length=4)]
    detected: Annotated[bool, Strict()]
    yaw: Number
    mouth: Number
    share: Number
    p_speaking: Number

    @model_validator(mode="after")
    def _ordered(self) -> ViewWire:
        x0, y0, x1, y1 = self.box
        if x1 < x0 or y1 < y0:
            raise ValueError(f"box {self.box}: x1 must not be left of x0, nor y1 above y0")
        return self


class FrameWire(_Wire):
    png: Annotated[str, Strict(), Field(min_length=1)]
    pts: Number
    source: Annotated[str, Strict(), Field(max_length=MAX_SOURCE)]
    seq: Count
    views: Annotated[list[ViewWire], Field(max_length=MAX_PLAYERS)]


class VoteWire(_Wire):
    speaker: Id | None
    confidence: Number
    scores: Annotated[dict[Id, Number], Field(max_length=MAX_PLAYERS)]
    cues: Annotated[dict[Id, Annotated[dict[Id, Number], Field(max_length=8)]],
                    Field(max_length=MAX_PLAYERS)]


class TurnWire(_Wire):
    index: Count
    pts: Number
    start: Number
    end: Number
    text: Annotated[str, Strict(), Field(max_length=MAX_TEXT)]
    speaker_name: Id | None = None
    frames: Annotated[list[FrameWire], Field(max_length=MAX_FRAMES)]
    vote: VoteWire | None = None
    names: Annotated[dict[Id, Id], Field(max_length=MAX_PLAYERS)] | None = None
    """The edge's player names (`perception.names`), so that the service's predictor
    names people as the edge's would."""


class NotATurn(ValueError):
    """What was received is not a turn the engine takes; the message says why, in one line."""


def turn_to_json(turn: Turn, names: dict[str, str] | None = None) -> dict[str, Any]:
    """What the engine needs of a turn, as JSON; frames as base64 PNG (lossless, so a
    rebuilt session sees the same pixels)."""
    frames = []
    for frame, views in zip(turn.keyframes, turn.views, strict=True):
        ok, png = cv2.imencode(".png", cv2.cvtColor(frame.image, cv2.COLOR_RGB2BGR))
        if not ok:
            raise ValueError(f"turn {turn.index}: a key frame cannot be encoded")
        frames.append({"png": base64.b64encode(png.tobytes()).decode("ascii"),
                       "pts": frame.pts, "source": frame.source, "seq": frame.seq,
                       "views": [_view(v) for v in views]})
    vote = turn.vote
    data: dict[str, Any] = {
        "index": turn.index, "pts": turn.pts, "start": turn.start, "end": turn.end,
        "text": turn.text, "speaker_name": turn.speaker_name, "frames": frames,
        "vote": None if vote is None else {
            "speaker": vote.speaker, "confidence": vote.confidence,
            "scores": vote.scores, "cues": vote.cues}}
    if names:
        data["names"] = dict(names)
    return data


def count_elements(raw: bytes, where: str = "the body") -> None:
    """`NotATurn` for JSON with more elements than a turn has, counted before parsing
    (see `MAX_ELEMENTS`)."""
    elements = raw.count(b",") + raw.count(b"{") + raw.count(b"[")
    if elements > MAX_ELEMENTS:
        raise NotATurn(f"{where}: {elements:,} JSON elements, more than a turn has "
                       f"({MAX_ELEMENTS:,})")


def parse_turn(data: str | bytes | dict[str, Any], frames: int = 0) -> TurnWire:
    """The checked turn, from its JSON text or the object it parsed to; `NotATurn` when it
    is not one (too deep, not finite, too big, a field of the wrong type, more key frames
    than `frames`, the engine's `frames_per_turn`; 0: any up to `MAX_FRAMES`)."""
    try:
        if isinstance(data, dict):
            wire = TurnWire.model_validate(data)
        else:
            raw = data.encode() if isinstance(data, str) else data
            count_elements(raw)
            wire = TurnWire.model_validate_json(raw)
    except ValidationError as e:
        first = e.errors(include_url=False, include_input=False)[0]
        where = ".".join(str(part) for part in first["loc"]) or "the body"
        more = f" (and {e.error_count() - 1} more)" if e.error_count() > 1 else ""
        raise NotATurn(f"{where}: {first['msg']}{more}") from None
    except RecursionError:
        raise NotATurn("nested too deep") from None
    if frames and len(wire.frames) > frames:
        raise NotATurn(f"frames: {len(wire.frames)} key frames; the engine takes {frames}")
    return wire


def decode_turn(wire: TurnWire) -> Turn:
    """The `Turn` a checked turn describes, its key frames decoded; `NotATurn` for a frame
    that is not a PNG of at most `MAX_PIXELS`."""
    keyframes, views = [], []
    for number, f in enumerate(wire.frames):
        image = _png(f.png, f"frames.{number}.png")
        keyframes.append(VideoFrame(pts=f.pts, source=f.source, seq=f.seq, image=image))
        views.append(tuple(PlayerView(**{**v.model_dump(), "box": tuple(v.box)})
                           for v in f.views))
    vote = wire.vote
    return Turn(pts=wire.pts, index=wire.index, start=wire.start, end=wire.end,
                text=wire.text, speaker_name=wire.speaker_name, keyframes=tuple(keyframes),
                views=tuple(views),
                vote=None if vote is None else SpeakerVote(**vote.model_dump()))


def turn_from_json(data: str | bytes | dict[str, Any]) -> Turn:
    """The turn `turn_to_json` made; `NotATurn` (a ValueError) when it is not one."""
    return decode_turn(parse_turn(data))


def _png(text: str, where: str) -> np.ndarray:
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise NotATurn(f"{where}: not base64") from None
    # The size is in the header (IHDR, right after the signature): checked before a
    # small file can decode to gigabytes.
    if len(data) < 24 or data[:8] != b"\x89PNG\r\n\x1a\n" or data[12:16] != b"IHDR":
        raise NotATurn(f"{where}: not a PNG")
    width, height = struct.unpack(">II", data[16:24])
    if width and height and max(width, height) > MAX_ASPECT * min(width, height):
        raise NotATurn(f"{where}: {width}x{height} is narrower than 1:{MAX_ASPECT}")
    if width * height > MAX_PIXELS:
        raise NotATurn(f"{where}: {width}x{height} is more than {MAX_PIXELS:,} pixels; "
                       "send smaller key frames")
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        raise NotATurn(f"{where}: not a PNG")
    return np.ascontiguousarray(cv2.cvtColor(image, cv2.COLOR_BGR2RGB))


def _view(v: PlayerView) -> dict[str, object]:
    return {"player": v.player, "track": v.track, "box": list(v.box), "detected": v.detected,
            "yaw": v.yaw, "mouth": v.mouth, "share": v.share, "p_speaking": v.p_speaking}
