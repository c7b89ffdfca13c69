"""Words from the audio: faster-whisper (CTranslate2), streaming, in media time.

Whisper base (MIT, from its two wheels: `whisper_model.py`) runs on the CPU by
default; any local CTranslate2 Whisper folder can take its place (`model`, `device`,
`compute_type`; docs/words.md).

Whisper reads a whole stretch of audio at once, so the recognizer decides when to
decode. Each voiced stretch is decoded when voice activity closes it, with a little
audio on either side so that soft onsets and final consonants are kept. Speech that
stays open longer than `max_chunk_s` is not left waiting for its pause: its first
`max_chunk_s` are decoded early, and the words that end before a cut at the quietest
20 ms of the last second go out at once; decoding carries on from the cut. A word that
spans the cut (a quiet consonant inside it, or no pause at all) is held back and heard
again whole in the next decode, which starts at the last word sent, so that it begins
at its onset; that last word is not sent twice. Every decode ends with a `Transcribed`
saying how far the words are complete, also when nothing was decoded, so a turn
waiting for its words never stalls. docs/words.md has the measurements behind this.

Whisper invents text for near-silence: voiced stretches shorter than `MIN_DECODE_S`
are not decoded, and a segment Whisper itself thinks is probably not speech is dropped.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from stream.frames import (
    SAMPLE_RATE,
    AudioChunk,
    Item,
    SpeechSegment,
    SpeechStarted,
    Transcribed,
    Word,
)
from stream.runtime import Stage

PAD_S = 0.2
"""Audio kept on each side of a voiced stretch: VAD frames miss soft onsets and endings
("trip" ends as "3" when the audio stops at its last voiced frame)."""
MIN_DECODE_S = 0.2
"""Shorter voiced stretches are not decoded: Whisper turns clicks and breaths into words."""
CUT_SEARCH_S = 1.0
"""An early cut falls at the quietest frame of this last stretch before `max_chunk_s`."""
CUT_FRAME_S = 0.02
MIN_PROGRESS_S = 1.0
"""An early decode moves on at least this far, even if a word spanning its cut must go."""
NO_SPEECH = 0.6
"""A segment whose no-speech probability is above this is dropped (Whisper's own default
threshold; faster-whisper drops it only when its text is also improbable)."""


class RecognizerConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = Field(True, description="recognise words when there is no transcript "
                                            "(sidecar or MQTT inbox)")
    model: str | None = Field(None, description="a local CTranslate2 Whisper folder (small, "
                                                "large-v3, distil...); null: the bundled "
                                                "Whisper base")
    device: Literal["cpu", "cuda", "auto"] = Field("cpu", description="where CTranslate2 "
                                                   "runs the model")
    compute_type: str = Field("int8", description="CTranslate2 compute type: int8, "
                                                  "int8_float16, float16, float32...")
    language: str | None = Field("en", description="spoken language code; null: detect "
                                                   "it in every decoded stretch")
    beam_size: int = Field(5, ge=1, le=16, description="beam search width (1: greedy)")
    max_chunk_s: float = Field(5.0, ge=2.0, le=28.0, description="longest stretch of "
                               "speech decoded at once: a monologue gets its words this "
                               "often")
    threads: int = Field(2, ge=1, le=64, description="CPU threads for CTranslate2")
    memory_s: float = Field(120.0, gt=0, description="audio kept for decoding, in seconds")

    @model_validator(mode="after")
    def _memory_holds_a_chunk(self) -> RecognizerConfig:
        if self.memory_s < self.max_chunk_s + 2 * PAD_S:
            raise ValueError(f"memory_s ({self.memory_s}) must hold a whole chunk "
                             f"(max_chunk_s {self.max_chunk_s} + {2 * PAD_S:g})")
        return self


class SpeechRecognizer:
    """The pure core: audio and speech events in, words and progress out.

    `model` is a faster-whisper `WhisperModel` (or anything with its `transcribe`)."""

    def __init__(self, config: RecognizerConfig, model: Any) -> None:
        self.config, self.model = config, model
        self.reset()

    def reset(self) -> None:
        self._audio = np.zeros(0, np.int16)
        self._audio_start = 0.0
        self._done = 0.0
        """Media time up to which audio has been decoded (or passed over)."""
        self._open: float | None = None
        """Where the open speech's next decode starts; None while no speech is open."""
        self._pts = -math.inf

    @property
    def heard(self) -> float:
        return self._audio_start + len(self._audio) / SAMPLE_RATE

    def push(self, item: Item) -> list[Item]:
        if isinstance(item, AudioChunk):
            self._append(item)
            if self._open is not None and self.heard >= self._open + self.config.max_chunk_s:
                return self._early(item.end)
        elif isinstance(item, SpeechStarted):
            if self._open is None:
                self._open = max(item.start - PAD_S, self._done)
        elif isinstance(item, SpeechSegment):
            start = self._open if self._open is not None else max(item.start - PAD_S,
                                                                  self._done)
            self._open = None
            end = min(item.end + PAD_S, item.pts)
            if item.end - item.start < MIN_DECODE_S:
                return self._decode(end, end, item.pts)  # a click or a breath: skip it
            return self._decode(start, end, item.pts)
        return []

    def flush(self) -> list[Item]:
        """End of the audio with speech still open (no segment came to close it)."""
        if self._open is None:
            return []
        start, self._open = self._open, None
        return self._decode(start, self.heard, self.heard)

    def _append(self, chunk: AudioChunk) -> None:
        if not len(self._audio):
            self._audio_start = chunk.pts
        gap = round((chunk.pts - self.heard) * SAMPLE_RATE)
        samples = chunk.samples
        if gap > self.config.memory_s * SAMPLE_RATE:  # a long outage: start afresh there
            self._audio, self._audio_start = np.zeros(0, np.int16), chunk.pts
        elif gap > 0:  # a gap in the feed: silence keeps sample times right
            samples = np.concatenate([np.zeros(gap, np.int16), samples])
        elif gap < 0:  # overlapping timestamps: keep the audio already heard
            samples = samples[-gap:]
        self._audio = np.concatenate([self._audio, samples])
        excess = len(self._audio) - round(self.config.memory_s * SAMPLE_RATE)
        if excess > 0:
            self._audio = self._audio[excess:]
            self._audio_start += excess / SAMPLE_RATE

    def _early(self, pts: float) -> list[Item]:
        """Open speech reached `max_chunk_s`: decode it all, send the words before a quiet
        cut, and go on from the cut (from the start of a word that spans it)."""
        assert self._open is not None
        start = self._open
        limit = start + self.config.max_chunk_s
        cut = self._quietest(limit - CUT_SEARCH_S, limit)
        return self._decode(start, limit, pts, cut=cut)

    def _quietest(self, lo: float, hi: float) -> float:
        """The middle of the quietest 20 ms frame in [lo, hi) (hi when there is none)."""
        samples = self._slice(lo, hi).astype(np.float32)
        frame = round(CUT_FRAME_S * SAMPLE_RATE)
        frames = len(samples) // frame
        if frames == 0:
            return hi
        energy = (samples[: frames * frame].reshape(frames, frame) ** 2).mean(axis=1)
        # the latest of equally quiet frames: the longest chunk, the fewest decodes
        best = frames - 1 - int(np.argmin(energy[::-1]))
        return max(lo, self._audio_start) + (best + 0.5) * CUT_FRAME_S

    def _slice(self, lo: float, hi: float) -> np.ndarray:
        a = max(0, round((lo - self._audio_start) * SAMPLE_RATE))
        b = max(a, round((hi - self._audio_start) * SAMPLE_RATE))
        return self._audio[a:b]

    def _decode(self, start: float, end: float, pts: float, *,
                cut: float | None = None) -> list[Item]:
        """Words of the audio [start, end) at `pts`, then how far they are complete: to
        `end`, or to `cut` when the speech goes on (what follows is decoded again later).

        `start` may lie before the progress so far (the start of the last word sent, as
        context for the next one); words already sent are not sent again."""
        start, end = max(start, self._audio_start), min(end, self.heard)
        pts = self._pts = max(pts, self._pts)
        words = self._recognise(start, end, pts) if end > max(start, self._done) else []
        until = max(end, self._done)
        if cut is not None:
            words, until, self._open = _before(words, max(start, self._done), cut)
        self._done = until
        return [*words, Transcribed(pts=pts, until=until)]

    def _recognise(self, start: float, end: float, pts: float) -> list[Word]:
        """Whisper on [start, end): words in time order inside it, none before `_done`."""
        audio = self._slice(start, end).astype(np.float32) / 32768.0
        segments, _ = self.model.transcribe(
            audio, language=self.config.language, beam_size=self.config.beam_size,
            temperature=[0.0], word_timestamps=True, vad_filter=False,
            condition_on_previous_text=False)
        words: list[Word] = []
        floor = self._done
        for segment in segments:
            if segment.no_speech_prob > NO_SPEECH:
                continue
            for word in segment.words or ():
                w_start, w_end = start + float(word.start), start + float(word.end)
                if not word.word.strip() or (w_start + w_end) / 2 < self._done:
                    continue  # empty, or sent already (the context before a cut)
                w_start = min(max(w_start, floor), end)
                w_end = min(max(w_end, w_start), end)
                words.append(Word(pts=pts, start=w_start, end=w_end, text=word.word,
                                  probability=float(word.probability)))
                floor = w_start
        return words


def _before(words: list[Word], start: float, cut: float) -> tuple[list[Word], float, float]:
    """After an early decode: the words that end by `cut`, how far they are complete, and
    where the next decode's audio starts. That is the cut, unless a word spans it: then
    the words go as far as the one before it, and the next decode starts at that word's
    start, so that the spanning word is heard again whole, from its onset."""
    done = [w for w in words if w.end <= cut]
    spanning = next((w for w in words if w.start < cut < w.end), None)
    if spanning is None:
        return done, cut, cut
    if done and done[-1].end >= start + MIN_PROGRESS_S:
        last = done[-1]
        return done, last.end, last.start if last.start >= start + MIN_PROGRESS_S else last.end
    return [*done, spanning], spanning.end, spanning.end  # one long word: send it anyway


class RecognizerStage(Stage):
    """Audio and speech events in; words and progress out.

    The model loads in `start` (not on construction), and decoding runs in a worker
    thread so that the event loop (web view, MQTT keep-alives) goes on meanwhile; items
    are still handled one at a time, in order."""

    name = "asr"

    def __init__(self, config: RecognizerConfig | None = None) -> None:
        self.config = config or RecognizerConfig()
        self.core: SpeechRecognizer | None = None

    async def start(self) -> None:
        from stream.audio.whisper_model import load_whisper

        model = await asyncio.to_thread(load_whisper, self.config)
        self.core = SpeechRecognizer(self.config, model)

    async def process(self, item: Item) -> Sequence[Item]:
        assert self.core is not None, "start() loads the model"
        if isinstance(item, AudioChunk | SpeechStarted | SpeechSegment):
            return await asyncio.to_thread(self.core.push, item)
        return ()

    async def finish(self) -> Sequence[Item]:
        assert self.core is not None, "start() loads the model"
        return await asyncio.to_thread(self.core.flush)
