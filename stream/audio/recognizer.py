"""An optional offline recognizer: PocketSphinx (its wheel ships an English model).

Rough but real and local. Each speech segment's audio is decoded when voice
activity closes it, and becomes a transcript line known at that same moment,
so the turn it belongs to gets its words without waiting.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from stream.errors import UserError
from stream.frames import SAMPLE_RATE, AudioChunk, Item, SpeechSegment, TranscriptLine
from stream.runtime import Stage


class RecognizerConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = Field(False, description="transcribe speech with PocketSphinx when there "
                          "is no transcript (pip install 'socialstream[asr]')")
    memory_s: float = Field(120.0, gt=0, description="longest utterance kept for decoding")


class SpeechRecognizer:
    """The core: keeps recent audio, decodes each closed segment."""

    def __init__(self, config: RecognizerConfig | None = None) -> None:
        self.config = config or RecognizerConfig()
        try:
            from pocketsphinx import Decoder
        except ImportError as exc:
            raise UserError("the offline recognizer needs pocketsphinx: "
                            "pip install 'socialstream[asr]'") from exc
        self._decoder = Decoder(samprate=SAMPLE_RATE, loglevel="FATAL")
        self._audio = np.zeros(0, np.int16)
        self._audio_start = 0.0

    def push(self, item: Item) -> list[Item]:
        if isinstance(item, AudioChunk):
            if not len(self._audio):
                self._audio_start = item.pts
            self._audio = np.concatenate([self._audio, item.samples])
            excess = len(self._audio) - int(self.config.memory_s * SAMPLE_RATE)
            if excess > 0:
                self._audio = self._audio[excess:]
                self._audio_start += excess / SAMPLE_RATE
            return []
        if isinstance(item, SpeechSegment):
            words = self.transcribe(item.start, item.end)
            if words:
                return [TranscriptLine(pts=item.pts, start=item.start, end=item.end, text=words,
                                       origin="pocketsphinx")]
        return []

    def transcribe(self, start: float, end: float) -> str:
        lo = max(0, round((start - self._audio_start) * SAMPLE_RATE))
        hi = max(lo, round((end - self._audio_start) * SAMPLE_RATE))
        speech = self._audio[lo:hi]
        if not len(speech):
            return ""
        self._decoder.start_utt()
        self._decoder.process_raw(speech.tobytes(), full_utt=True)
        self._decoder.end_utt()
        hypothesis = self._decoder.hyp()
        return hypothesis.hypstr.strip() if hypothesis is not None else ""


class RecognizerStage(Stage):
    """Audio and speech segments in; transcript lines out."""

    name = "asr"

    def __init__(self, config: RecognizerConfig | None = None) -> None:
        self.config = config or RecognizerConfig()
        self.core: SpeechRecognizer | None = None

    async def start(self) -> None:
        self.core = SpeechRecognizer(self.config)

    async def process(self, item: Item) -> Sequence[Item]:
        assert self.core is not None, "start() loads the model"
        return self.core.push(item)
