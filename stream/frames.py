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
    received: float | None = None
    """`time.monotonic()` when a live source handed it on (None for a file): how long it
    then waits in the pipeline says whether the CPU keeps up."""

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
    cut: bool = False
    """Ended by the end of the audio (the stream stopped, or its audio did) while still
    voiced, not by a pause: the speech may go on past `end`."""


@dataclass(frozen=True, kw_only=True)
class TranscriptLine(DataItem):
    """A line of text spoken in [start, end); known from `pts` (its end) onwards."""

    start: float
    end: float
    text: str
    speaker: str | None = None
    origin: str = ""
    """Where the line came from, e.g. `demo.srt:12`, for error messages."""


@dataclass(frozen=True, kw_only=True)
class Word(DataItem):
    """One recognised word spoken in [start, end); known from `pts` on (when the audio
    holding it was decoded, never before `end`)."""

    start: float
    end: float
    text: str
    """As the recognizer wrote it, with its leading space when it has one (Whisper's
    tokens carry it), so that joining a turn's words gives its text."""
    probability: float = 1.0
    origin: str = "asr"


@dataclass(frozen=True, kw_only=True)
class Transcribed(ControlItem):
    """The recognizer's progress: every word that starts before `until` has been sent.
    A turn waits for it before taking its words, so that none arrives after its turn."""

    until: float


@dataclass(frozen=True, kw_only=True)
class VoiceFrame(DataItem):
    """One voice-activity decision for the audio frame [start, pts)."""

    start: float
    voiced: bool


Box = tuple[float, float, float, float]
"""x0, y0, x1, y1 in pixels of the frame."""


@dataclass(frozen=True)
class PlayerView:
    """One person as seen in one frame."""

    player: str
    track: int
    box: Box
    detected: bool
    """False when the box was carried over from an earlier detection."""
    yaw: float
    """Head yaw from the face keypoints, -1..1; positive faces the right of the picture."""
    mouth: float
    """Smoothed mouth motion, with head motion taken out."""
    share: float
    """This person's part of all mouth motion in view, 0..1."""
    p_speaking: float
    """Probability this person is speaking now (share, gated by voice activity)."""


@dataclass(frozen=True, kw_only=True, eq=False)
class PerceivedFrame(DataItem):
    """A video frame with the people in it and who, if anyone, is speaking."""

    frame: VideoFrame
    players: tuple[PlayerView, ...]
    voiced: bool
    speaker: str | None
    confidence: float


@dataclass(frozen=True)
class SpeakerVote:
    """Who spoke a turn, from the frames inside it."""

    speaker: str | None
    """None when no face was seen or no one clearly won ("unknown")."""
    confidence: float
    scores: dict[str, float]
    """Mean share of mouth motion per player over the turn."""
    cues: dict[str, dict[str, float]]
    """Per player: mean mouth motion, mean yaw, share of frames visible."""


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
    views: tuple[tuple[PlayerView, ...], ...] = ()
    """People seen in each key frame (empty tuples without perception)."""
    vote: SpeakerVote | None = None
    """The speaker, when perception ran."""
    origin: str = "speech"
    """`speech` when voice activity delimited it, `transcript` when only the text did."""
    known_at: float | None = None
    """The media time by which the turn was known (the event's `emitted_at`); `pts` may be
    later: a transcript line read ahead of the media is processed at its own end time."""
    overlap: tuple[tuple[float, float], ...] = ()
    """Spans inside the turn where someone else spoke too (overlapping transcript lines, or
    two faces speaking at once), as far as was known when the turn was emitted."""
    closed_by: str = "silence"
    """`silence` (voice activity ended), `line` (a transcript line boundary inside speech),
    `speaker` (the seen speaker changed inside speech), `transcript` (a line no speech
    claimed) or `end` (the audio ended while voiced)."""
    words: tuple[Word, ...] = ()
    """The recognised words inside the turn, in time order (empty with a transcript: its
    lines have no word times)."""
    words_from: str | None = None
    """`transcript` (a sidecar or the MQTT inbox), `asr` (recognised from the audio) or
    None: no words were said inside the turn."""


@dataclass(frozen=True)
class Answer:
    """The answer to one question about a turn."""

    task: str
    """`addressee` (whom the speaker addresses), `pronoun` (whom a pronoun refers to) or
    `mentioned` (who is mentioned)."""
    question: str
    answer: str
    scores: dict[str, float]
    """The engine's: each candidate's mean log-probability per token (`Session.ask_many`);
    empty when no engine ran."""
    target: str | None = None
    """The pronoun, for `pronoun` answers; the name asked about, for `mentioned` ones."""
    probabilities: dict[str, float] = field(default_factory=dict)
    """The predictor's probability per candidate (they sum to 1)."""


@dataclass(frozen=True, eq=False)
class AttentionMap:
    """Where the engine's biased heads looked in a turn's last key frame while its words
    were prefilled (docs/engine.md), for drawing over the picture."""

    grid: np.ndarray
    """(rows, cols) over the frame as the model saw it: attention from the utterance's
    tokens to each patch, averaged over the biased layers' active heads and the tokens,
    over the frame's mean cell (1: the cell's fair share; 4: four times that)."""
    heads: int
    """How many (layer, head) pairs it averages."""
    frame_pts: float | None = None


@dataclass(frozen=True, kw_only=True, eq=False)
class Prediction(DataItem):
    """What the engine made of one turn; `pts` is the turn's."""

    turn: int
    start: float
    end: float
    speaker: str | None
    answers: tuple[Answer, ...]
    latency_s: float
    """Wall-clock seconds spent on the turn (prefill + questions, fusion)."""
    predictor: str = "engine"
    known_at: float | None = None
    """The media time the turn was known at (its event's `emitted_at`)."""
    attention: AttentionMap | None = None
    """With `--attention` and an engine model; never in the events (drawn only)."""


@dataclass(frozen=True, kw_only=True)
class Watermark(ControlItem):
    """Progress: the sender will emit nothing earlier than `pts` on this edge."""


@dataclass(frozen=True, kw_only=True)
class EndOfStream(ControlItem):
    """Nothing follows on this edge."""

    pts: float = field(default=float("inf"))
