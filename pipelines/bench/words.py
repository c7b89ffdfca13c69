"""The recognizer alone: speed and word error rate, for docs/words.md.

`python -m pipelines.bench.words [MEDIA...] [--json]` decodes each clip's audio, finds its
speech with the VAD (not timed), and times only the recognizer over it, in the order the
pipeline feeds it, for each beam width and thread count asked. The model is loaded and
warmed up first (not timed). A clip with a transcript beside it (`.srt`, `.vtt`,
`.jsonl`) also gets its word error rate, twice: as the pipeline decodes it (each voiced
stretch when the VAD closes it), and as one monologue (its lines back to back, no pause,
so that every decode is an early cut at `max_chunk_s`) with how long after its end each
word was out (media seconds).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import av
import jiwer
import numpy as np

from stream.audio.recognizer import RecognizerConfig, SpeechRecognizer
from stream.audio.vad import VoiceActivity
from stream.audio.whisper_model import load_whisper
from stream.frames import SAMPLE_RATE, AudioChunk, Item, SpeechSegment, SpeechStarted, Word
from stream.transcript.readers import find_sidecar, read_transcript

CHUNK = 1024
"""Samples per audio chunk, as AAC frames come from a file."""
DEFAULT_MEDIA = ("examples/demo.mp4", "../shared/data/ami/dev00.wav")


def read_audio(path: str | Path) -> np.ndarray:
    """A file's first audio stream as 16 kHz mono int16."""
    pieces = []
    with av.open(str(path)) as container:
        resampler = av.AudioResampler(format="s16", layout="mono", rate=SAMPLE_RATE)
        for frame in container.decode(audio=0):
            pieces += [f.to_ndarray().reshape(-1) for f in resampler.resample(frame)]
        pieces += [f.to_ndarray().reshape(-1) for f in resampler.resample(None)]
    return np.concatenate(pieces).astype(np.int16)


def pipeline_items(audio: np.ndarray) -> list[Item]:
    """Audio chunks and VAD events in the order the recognizer's inputs merge them."""
    chunks = [AudioChunk(pts=at / SAMPLE_RATE, samples=audio[at: at + CHUNK])
              for at in range(0, len(audio), CHUNK)]
    vad = VoiceActivity()
    events: list[Item] = []
    for chunk in chunks:
        events += [e for e in vad.feed(chunk.samples, chunk.pts)
                   if isinstance(e, SpeechStarted | SpeechSegment)]
    events += vad.flush()
    ranked = [(c.pts, 0, i, c) for i, c in enumerate(chunks)]
    ranked += [(e.pts, 1, i, e) for i, e in enumerate(events)]
    return [item for *_, item in sorted(ranked, key=lambda r: r[:3])]


def monologue_items(audio: np.ndarray) -> list[Item]:
    """One open speech over all of `audio` (no pause for the VAD to close it)."""
    end = len(audio) / SAMPLE_RATE
    chunks = [AudioChunk(pts=at / SAMPLE_RATE, samples=audio[at: at + CHUNK])
              for at in range(0, len(audio), CHUNK)]
    return [chunks[0], SpeechStarted(pts=chunks[0].end, start=0.0), *chunks[1:],
            SpeechSegment(pts=end, start=0.0, end=end)]


def recognise(model: Any, config: RecognizerConfig, items: list[Item]
              ) -> tuple[list[Word], float, float]:
    """Every word, and the wall-clock and CPU seconds (all threads) the recognizer spent:
    on a busy machine the CPU time still says what the work costs."""
    core = SpeechRecognizer(config, model)
    began, cpu = time.perf_counter(), time.process_time()
    out = [o for item in items for o in core.push(item)] + core.flush()
    return ([o for o in out if isinstance(o, Word)], time.perf_counter() - began,
            time.process_time() - cpu)


def normalise(text: str) -> str:
    """Lower case, no punctuation, apostrophes dropped ("don't" = "dont")."""
    return " ".join(re.sub(r"[^a-z0-9]+", " ", text.lower().replace("'", "")).split())


def wer(reference: str, words: list[Word]) -> float:
    return float(jiwer.wer(normalise(reference), normalise("".join(w.text for w in words))))


@dataclass
class Clip:
    path: Path
    audio: np.ndarray
    reference: str | None
    lines: list[tuple[float, float]]

    @property
    def seconds(self) -> float:
        return len(self.audio) / SAMPLE_RATE

    def monologue(self) -> np.ndarray:
        return np.concatenate([self.audio[round(a * SAMPLE_RATE): round(b * SAMPLE_RATE)]
                               for a, b in self.lines])


def load_clip(path: Path) -> Clip:
    sidecar = find_sidecar(str(path))
    lines = read_transcript(sidecar).lines if sidecar is not None else []
    return Clip(path, read_audio(path), " ".join(line.text for line in lines) or None,
                [(line.start, line.end) for line in lines])


def bench(clips: list[Clip], beams: list[int], threads: list[int], repeat: int
          ) -> list[dict[str, Any]]:
    rows = []
    for count in threads:
        model = load_whisper(RecognizerConfig(threads=count))
        warm = SpeechRecognizer(RecognizerConfig(threads=count), model)
        warm.push(AudioChunk(pts=0.0, samples=clips[0].audio[:SAMPLE_RATE]))
        warm.push(SpeechSegment(pts=1.0, start=0.0, end=1.0))
        for beam in beams:
            config = RecognizerConfig(threads=count, beam_size=beam)
            for clip in clips:
                items = pipeline_items(clip.audio)
                runs = [recognise(model, config, items) for _ in range(repeat)]
                words = runs[0][0]
                seconds, cpu = min(r[1] for r in runs), min(r[2] for r in runs)
                row: dict[str, Any] = {
                    "media": clip.path.name, "threads": count, "beam_size": beam,
                    "media_s": round(clip.seconds, 2), "rtf": round(seconds / clip.seconds, 3),
                    "cpu_rtf": round(cpu / clip.seconds, 3),
                    "decodes": sum(isinstance(i, SpeechSegment) for i in items),
                    "words": len(words)}
                if clip.reference is not None:
                    row["wer"] = round(wer(clip.reference, words), 3)
                    said, spent, _ = recognise(model, config,
                                               monologue_items(clip.monologue()))
                    row["monologue_wer"] = round(wer(clip.reference, said), 3)
                    row["monologue_rtf"] = round(spent / (len(clip.monologue()) / SAMPLE_RATE),
                                                 3)
                    lags = [w.pts - w.end for w in said]
                    row["monologue_lag_s"] = {"mean": round(float(np.mean(lags)), 2),
                                              "max": round(float(np.max(lags)), 2)}
                rows.append(row)
                print(json.dumps(row), file=sys.stderr, flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("media", nargs="*", default=list(DEFAULT_MEDIA))
    parser.add_argument("--beam", type=int, nargs="+", default=[1, 5])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeat", type=int, default=2, help="timed runs (the fastest counts)")
    parser.add_argument("--json", action="store_true", help="one JSON list on stdout")
    args = parser.parse_args(argv)
    clips = [load_clip(Path(m)) for m in args.media]
    rows = bench(clips, args.beam, args.threads, args.repeat)
    if args.json:
        print(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
