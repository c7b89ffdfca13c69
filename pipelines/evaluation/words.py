"""Words of a replayed scene scored against its truth: WER, speaker-attributed cpWER, and
counts of turns that went wrong in ways the rates hide.

Both rates are on the turns' `text`, after Whisper's English text normaliser (case,
punctuation, contractions, spelled numbers), so that "It's 25." and "it is twenty five"
are the same words, as in published Whisper figures.

WER pairs the output with the truth by time, not by index: a turn of the output is
scored against the truth turn it overlaps most (its words against that turn's), so one
turn too many or too few early on does not misalign every later pair. A truth turn no
output turn overlaps is all deletions; an output turn that overlaps none is all
insertions. cpWER (meeteval) needs no pairing: each speaker's words are concatenated in
time order and speakers are matched one to one so as to minimise the errors, so words
given to the wrong person count even where WER sees none. An output turn without a
speaker counts as its own speaker, as in the who-spoke-when scores (`turns.py`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import jiwer
import numpy as np

from stream.engine.evaluate import most_overlapped

OVERLAP_SLACK_S = 0.01
"""Two turns sharing less than this are not overlapping: event times are rounded to the
millisecond, and this is below one voice-activity frame."""


@dataclass(frozen=True)
class Span:
    """One turn, of the output or of the truth, as far as the word scores need it."""

    start: float
    end: float
    speaker: str | None
    text: str
    overlap: tuple[tuple[float, float], ...] = ()
    """Where the turn says someone else spoke too (output turns only)."""

    @classmethod
    def of_event(cls, event: dict[str, Any]) -> Span:
        """From a turn event (`stream/events.py`)."""
        return cls(start=event["start"], end=event["end"], speaker=event["speaker"],
                   text=event["text"],
                   overlap=tuple((o["start"], o["end"]) for o in event.get("overlap", ())))

    @classmethod
    def of_truth(cls, turn: dict[str, Any]) -> Span:
        """From a `turns` entry of a `.truth.json`."""
        return cls(start=turn["start"], end=turn["end"], speaker=turn["speaker"],
                   text=turn["text"])


@dataclass(frozen=True)
class WordErrors:
    """Edit counts against `reference` words; the rate is their sum over `reference`."""

    reference: int
    substitutions: int = 0
    deletions: int = 0
    insertions: int = 0

    @property
    def errors(self) -> int:
        return self.substitutions + self.deletions + self.insertions

    @property
    def rate(self) -> float:
        """Errors per reference word; with no reference words, 0 if nothing was inserted,
        else the insertion count (as meeteval reports it, never a division by zero)."""
        return self.errors / self.reference if self.reference else float(self.errors)

    def __add__(self, other: WordErrors) -> WordErrors:
        return WordErrors(self.reference + other.reference,
                          self.substitutions + other.substitutions,
                          self.deletions + other.deletions, self.insertions + other.insertions)

    def to_json(self) -> dict[str, Any]:
        return {"rate": round(self.rate, 4), "reference_words": self.reference,
                "substitutions": self.substitutions, "deletions": self.deletions,
                "insertions": self.insertions}


@dataclass(frozen=True)
class WordScores:
    """One scene's word figures (or several scenes' summed with `+`)."""

    wer: WordErrors
    cpwer: WordErrors
    turns_out: int
    turns_truth: int
    empty_speech_turns: int
    """Output turns with no words although a truth turn overlaps them."""
    overlapping_turns: int
    """Pairs of output turns sharing time that neither declared as overlap."""

    def __add__(self, other: WordScores) -> WordScores:
        return WordScores(self.wer + other.wer, self.cpwer + other.cpwer,
                          self.turns_out + other.turns_out, self.turns_truth + other.turns_truth,
                          self.empty_speech_turns + other.empty_speech_turns,
                          self.overlapping_turns + other.overlapping_turns)

    def to_json(self) -> dict[str, Any]:
        return {"wer": self.wer.to_json(), "cpwer": self.cpwer.to_json(),
                "turns_out": self.turns_out, "turns_truth": self.turns_truth,
                "empty_speech_turns": self.empty_speech_turns,
                "overlapping_turns": self.overlapping_turns}


@functools.cache
def _english() -> Callable[[str], str]:
    # Imported here: it reads its spelling table on construction, once per process.
    from whisper_normalizer.english import EnglishTextNormalizer

    return EnglishTextNormalizer()


def normalise(text: str) -> str:
    """Whisper's English normalisation, whitespace collapsed."""
    return " ".join(_english()(text).split())


def shared(a: Span, b: Span) -> float:
    """Seconds two spans have in common."""
    return max(0.0, min(a.end, b.end) - max(a.start, b.start))


def pair_by_overlap(output: Sequence[Span], truth: Sequence[Span]) -> list[int | None]:
    """For each output turn, the index of the truth turn it overlaps most (the earlier on a
    tie), or None when it overlaps none."""
    spans = [(t.start, t.end) for t in truth]
    return [most_overlapped(turn.start, turn.end, spans) for turn in output]


def _in_time_order(spans: Iterable[Span]) -> list[Span]:
    return sorted(spans, key=lambda s: (s.start, s.end))


def word_error_rate(output: Sequence[Span], truth: Sequence[Span]) -> WordErrors:
    """Each truth turn against the output turns paired with it, in time order; output turns
    paired with none against nothing (all insertions)."""
    pairs = pair_by_overlap(output, truth)
    said: list[list[str]] = [[] for _ in range(len(truth) + 1)]  # the last: paired with none
    for turn, pair in sorted(zip(output, pairs, strict=True),
                             key=lambda tp: (tp[0].start, tp[0].end)):
        said[len(truth) if pair is None else pair].append(normalise(turn.text))
    references = [normalise(t.text) for t in truth] + [""]
    counts = jiwer.process_words(references, [" ".join(w for w in words if w) for words in said])
    return WordErrors(sum(len(r.split()) for r in references), counts.substitutions,
                      counts.deletions, counts.insertions)


def speaker_texts(spans: Sequence[Span]) -> dict[str, str]:
    """Each speaker's normalised words concatenated in time order; a turn without a speaker
    is a speaker of its own."""
    texts: dict[str, list[str]] = {}
    for k, span in enumerate(_in_time_order(spans)):
        texts.setdefault(span.speaker or f"unknown-{k}", []).append(normalise(span.text))
    return {speaker: " ".join(t for t in parts if t) for speaker, parts in texts.items()}


def cp_word_error_rate(output: Sequence[Span], truth: Sequence[Span]) -> WordErrors:
    """Concatenated minimum-permutation WER (meeteval's, the CHiME-6 definition)."""
    from meeteval.wer.wer.cp import cp_word_error_rate as cpwer

    # Already concatenated in time order: meeteval need not (and cannot, without times) sort.
    result = cpwer(speaker_texts(truth), speaker_texts(output), reference_sort=False,
                   hypothesis_sort=False)
    return WordErrors(result.length, result.substitutions, result.deletions,
                      result.insertions)


def empty_speech_turns(output: Sequence[Span], truth: Sequence[Span]) -> int:
    """Output turns without words where the truth says someone spoke."""
    return sum(1 for o in output if not o.text.strip()
               and any(shared(o, t) > 0 for t in truth))


def _covered(lo: float, hi: float, spans: Iterable[tuple[float, float]]) -> float:
    """Seconds of [lo, hi] inside the union of `spans`."""
    total, reached = 0.0, lo
    for start, end in sorted(spans):
        start, end = max(start, reached), min(end, hi)
        if end > start:
            total += end - start
            reached = end
    return total


def overlapping_turns(output: Sequence[Span], slack_s: float = OVERLAP_SLACK_S) -> int:
    """Pairs of output turns whose spans share more than `slack_s` outside the overlap
    either of them declared: two turns claiming the same speech."""
    count = 0
    ordered = _in_time_order(output)
    for i, a in enumerate(ordered):
        for b in ordered[i + 1:]:
            if b.start >= a.end:
                break
            lo, hi = b.start, min(a.end, b.end)
            if hi - lo - _covered(lo, hi, a.overlap + b.overlap) > slack_s:
                count += 1
    return count


def score_words(events: Sequence[dict[str, Any]], truth: Sequence[dict[str, Any]]) -> WordScores:
    """All word figures of one scene, from its turn events and its truth's `turns`."""
    output = [Span.of_event(e) for e in events]
    reference = [Span.of_truth(t) for t in truth]
    return WordScores(wer=word_error_rate(output, reference),
                      cpwer=cp_word_error_rate(output, reference),
                      turns_out=len(output), turns_truth=len(reference),
                      empty_speech_turns=empty_speech_turns(output, reference),
                      overlapping_turns=overlapping_turns(output))


def word_latencies(events: Iterable[dict[str, Any]]) -> list[float]:
    """Media seconds from each recognised turn's end to its words being out (`emitted_at`):
    how long the recogniser keeps a listener waiting, beyond the turn itself."""
    return [e["emitted_at"] - e["end"] for e in events if e.get("words_from") == "asr"]


def percentiles(values: Sequence[float]) -> dict[str, float | int | None]:
    """p50 and p95 in seconds (None with no values), and how many there were."""
    if not values:
        return {"n": 0, "p50_s": None, "p95_s": None}
    return {"n": len(values), "p50_s": round(float(np.percentile(values, 50)), 3),
            "p95_s": round(float(np.percentile(values, 95)), 3)}
