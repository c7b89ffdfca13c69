"""Item types that travel between stages.

Every item carries `pts`: seconds on the session clock (derived from the
container's presentation timestamps, never from wall-clock time). For items
that summarise a span (a speech segment, a transcript line, a turn) `pts` is the
media time at which the item became *known*, so that every edge carries items
in non-decreasing `pts` and stages can be merged deterministically.

Three families, as in pipecat: data items carry content, control items mark
structure (speech start, progress, end of stream) and are never dropped, and
system items (start/stop/cancel) are handled by the runtime's lifecycle methods
rather than travelling as items.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

SAMPLE_RATE = 16_000
"""Audio inside the pipeline is always 16 kHz mono int16."""


@dataclass(frozen=True, kw_only=True)
class Item:
    pts: float
    source: str = ""
    seq: int = 0


@dataclass(frozen=True, kw_only=True)
class DataItem(Item):
    pass


@dataclass(frozen=True, kw_only=True)
class ControlItem(Item):
    pass


@dataclass(frozen=True, kw_only=True, eq=False)
class VideoFrame(DataItem):
    """One decoded picture, RGB uint8 of shape (H, W, 3)."""

    image: np.ndarray

    @property
    def width(self) -> int:
        return int(self.image.shape[1])

    @property
    def height(self) -> int:
        return int(self.image.shape[0])


@dataclass(frozen=True, kw_only=True, eq=False)
class AudioChunk(DataItem):
    """Mono int16 samples at `SAMPLE_RATE`; `pts` is the time of the first sample."""

    samples: np.ndarray

    @property
    def duration(self) -> float:
        return len(self.samples) / SAMPLE_RATE

    @property
    def end(self) -> float:
        return self.pts + self.duration


@dataclass(frozen=True, kw_only=True)
class SpeechStarted(ControlItem):
    """Voice activity confirmed; `start` is when the speech began (before `pts`)."""

    start: float


@dataclass(frozen=True, kw_only=True)
class SpeechSegment(DataItem):
    """A stretch of voiced audio [start, end); `pts` is when its end was decided."""

    start: float
    end: float


@dataclass(frozen=True, kw_only=True)
class TranscriptLine(DataItem):
    """A line of text spoken in [start, end); known from `pts` (its end) onwards."""

    start: float
    end: float
    text: str
    speaker: str | None = None
    origin: str = ""
    """Where the line came from, e.g. `demo.srt:12`, for error messages."""


@dataclass(frozen=True, kw_only=True, eq=False)
class Turn(DataItem):
    """One utterance: its span, its words and the media inside it."""

    index: int
    start: float
    end: float
    text: str
    speaker_name: str | None = None
    segments: tuple[SpeechSegment, ...] = ()
    keyframes: tuple[VideoFrame, ...] = ()
    origin: str = "speech"
    """`speech` when voice activity delimited it, `transcript` when only the text did."""


@dataclass(frozen=True, kw_only=True)
class Watermark(ControlItem):
    """Progress: the sender will emit nothing earlier than `pts` on this edge."""


@dataclass(frozen=True, kw_only=True)
class EndOfStream(ControlItem):
    """Nothing follows on this edge."""

    pts: float = field(default=float("inf"))
