"""Voice activity as a four-state machine (quiet, starting, speaking, stopping).

Each audio frame is classified voiced or not by webrtcvad (`model: webrtc`, 10-30 ms
frames, a GMM on band energies) or by Silero VAD (`model: silero`, 32 ms frames, a
small trained network shipped with its weights in the `silero-vad` wheel, speech
when its probability reaches `threshold` and until it falls below `threshold - 0.15`).

Start and stop delays are configured in seconds and turned into frame counts.
Speech is confirmed after `min_speech_s` of voiced frames and closed after
`hangover_s` of silence; the closed segment ends at its last voiced frame.

Audio may stop while the rest of the media goes on (a file whose audio track is
shorter, a live feed stopped mid-sentence). Open speech is then closed at the
audio's own last moment: the stage holds its progress there while speech is
open, and closes the segment once the media has moved `AUDIO_GONE_S` past the
last audio it heard.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from enum import Enum
from typing import Literal

import numpy as np
import webrtcvad
from pydantic import BaseModel, ConfigDict, Field, model_validator

from stream.frames import (
    SAMPLE_RATE,
    AudioChunk,
    Item,
    SpeechSegment,
    SpeechStarted,
    VoiceFrame,
)
from stream.runtime import Stage

AUDIO_GONE_S = 1.0
"""Media time without audio after which open speech is closed where the audio stopped."""


class VadConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    model: Literal["webrtc", "silero"] = Field(
        "webrtc", description="frame classifier: webrtc (webrtcvad) or silero (Silero VAD)")
    frame_ms: Literal[10, 20, 30] = Field(20, description="webrtcvad frame length (silero: 32)")
    aggressiveness: int = Field(2, ge=0, le=3, description="webrtc: 0 keeps most speech, 3 "
                                                           "least noise")
    threshold: float = Field(0.5, gt=0.15, lt=1, description="silero: speech probability "
                                                              "that starts speech")
    min_speech_s: float = Field(0.12, gt=0, description="voiced time before speech starts")
    hangover_s: float = Field(0.4, gt=0, description="silence before speech stops")

    @model_validator(mode="after")
    def _hangover_covers_a_frame(self) -> VadConfig:
        if self.hangover_s < self.frame_s:
            raise ValueError(f"hangover_s ({self.hangover_s}) must be at least one frame "
                             f"({self.frame_s * 1000:g} ms)")
        return self

    @property
    def frame_s(self) -> float:
        return SILERO_FRAME / SAMPLE_RATE if self.model == "silero" else self.frame_ms / 1000


SILERO_FRAME = 512
"""Samples per Silero VAD call at 16 kHz (the model's fixed window)."""


class _Webrtc:
    def __init__(self, config: VadConfig) -> None:
        self._vad = webrtcvad.Vad(config.aggressiveness)

    def reset(self) -> None:
        pass

    def voiced(self, frame: np.ndarray) -> bool:
        return self._vad.is_speech(frame.tobytes(), SAMPLE_RATE)


class _Silero:
    def __init__(self, config: VadConfig) -> None:
        import warnings

        import torch
        from silero_vad import load_silero_vad

        self._torch = torch
        with warnings.catch_warnings():  # its loader's own importlib/jit deprecations
            warnings.simplefilter("ignore", DeprecationWarning)
            self._model = load_silero_vad()
        self._on, self._off = config.threshold, config.threshold - 0.15
        self.reset()

    def reset(self) -> None:
        self._model.reset_states()
        self._speaking = False

    def voiced(self, frame: np.ndarray) -> bool:
        audio = self._torch.from_numpy(frame.astype(np.float32) / 32768.0)
        with self._torch.inference_mode():
            probability = float(self._model(audio, SAMPLE_RATE))
        self._speaking = probability >= (self._off if self._speaking else self._on)
        return self._speaking


class _State(Enum):
    QUIET = "quiet"
    STARTING = "starting"
    SPEAKING = "speaking"
    STOPPING = "stopping"


class VoiceActivity:
    """The pure core: feed audio, get `SpeechStarted` and `SpeechSegment` events."""

    def __init__(self, config: VadConfig | None = None, *, emit_frames: bool = False) -> None:
        self.config = config or VadConfig()
        self.emit_frames = emit_frames
        """Also emit a `VoiceFrame` per audio frame (for active-speaker fusion)."""
        self._frame = round(self.config.frame_s * SAMPLE_RATE)
        frame_s = self.config.frame_s
        self._start_frames = max(1, math.ceil(self.config.min_speech_s / frame_s - 1e-9))
        self._stop_frames = max(1, math.ceil(self.config.hangover_s / frame_s - 1e-9))
        self._classifier = _Silero(self.config) if self.config.model == "silero" \
            else _Webrtc(self.config)
        self.reset()

    def reset(self) -> None:
        self.state = _State.QUIET
        self._classifier.reset()
        self._buffer = np.zeros(0, np.int16)
        self._buffer_pts = 0.0
        self._count = 0
        self._run_start = 0.0
        self._last_voiced_end = 0.0

    def feed(self, samples: np.ndarray, pts: float) -> list[Item]:
        expected = self._buffer_pts + len(self._buffer) / SAMPLE_RATE
        if len(self._buffer) == 0 or abs(pts - expected) > self.config.frame_s:
            self._buffer, self._buffer_pts = samples, pts  # first chunk, or a gap: resync
        else:
            self._buffer = np.concatenate([self._buffer, samples])
        events: list[Item] = []
        whole = len(self._buffer) // self._frame * self._frame
        for at in range(0, whole, self._frame):
            start = self._buffer_pts + at / SAMPLE_RATE
            end = start + self.config.frame_s
            voiced = self._classifier.voiced(self._buffer[at: at + self._frame])
            if self.emit_frames:
                events.append(VoiceFrame(pts=end, start=start, voiced=voiced))
            events.extend(self._step(voiced, start, end))
        self._buffer = self._buffer[whole:]
        self._buffer_pts += whole / SAMPLE_RATE
        return events

    @property
    def heard(self) -> float:
        """Media time up to which audio has been fed."""
        return self._buffer_pts + len(self._buffer) / SAMPLE_RATE

    @property
    def speaking(self) -> bool:
        """A segment is open: it will be emitted, at the latest when the audio ends."""
        return self.state in (_State.SPEAKING, _State.STOPPING)

    @property
    def closes_at(self) -> float:
        """The media time an open segment would be emitted at if the audio ended now."""
        return max(self.heard, self._last_voiced_end)

    def flush(self) -> list[Item]:
        """End of audio: close an open segment at its last voiced frame."""
        events: list[Item] = []
        if self.speaking:
            events.append(SpeechSegment(pts=self.closes_at, start=self._run_start,
                                        end=self._last_voiced_end, cut=True))
        self.reset()
        return events

    def _step(self, voiced: bool, start: float, end: float) -> list[Item]:
        s = self.state
        if s is _State.QUIET and voiced:
            self._run_start, self._count, self.state = start, 0, _State.STARTING
            s = _State.STARTING
        if s is _State.STARTING:
            if not voiced:
                self.state = _State.QUIET
                return []
            self._count += 1
            self._last_voiced_end = end
            if self._count >= self._start_frames:
                self.state = _State.SPEAKING
                return [SpeechStarted(pts=end, start=self._run_start)]
            return []
        if voiced:
            self._last_voiced_end, self._count, self.state = end, 0, _State.SPEAKING
            return []
        if s is _State.QUIET:
            return []
        self._count = 1 if s is _State.SPEAKING else self._count + 1
        self.state = _State.STOPPING
        if self._count < self._stop_frames:
            return []
        self.state = _State.QUIET
        return [SpeechSegment(pts=end, start=self._run_start, end=self._last_voiced_end)]


class VadStage(Stage):
    """Audio chunks in; speech-start and speech-segment events out."""

    name = "vad"

    def __init__(self, config: VadConfig | None = None, *, emit_frames: bool = False) -> None:
        self.core = VoiceActivity(config, emit_frames=emit_frames)

    async def process(self, item: Item) -> Sequence[Item]:
        if isinstance(item, AudioChunk):
            return self.core.feed(item.samples, item.pts)
        return ()

    async def finish(self) -> Sequence[Item]:
        return self.core.flush()

    def holdback(self) -> float | None:
        return self.core.closes_at if self.core.speaking else None

    async def advance(self, pts: float) -> Sequence[Item]:
        if self.core.speaking and pts > self.core.heard + AUDIO_GONE_S:
            return self.core.flush()  # the audio stopped mid-speech; the media goes on
        return ()
