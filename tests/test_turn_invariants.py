"""The turn assembler's invariants (its module doc), on generated timelines.

Each timeline is a conversation of 2-4 people: utterances with handovers that have no
pause, short pauses voice activity bridges, and long ones; voice activity that hears
only part of an utterance; per-frame speaker scores that are clear, or hover near a tie
between the speaker and a look-alike (within the change margin); and the words as
transcript lines (one per utterance) or as recognised words with their times.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stream.frames import (
    Item,
    PerceivedFrame,
    PlayerView,
    SpeechSegment,
    SpeechStarted,
    Transcribed,
    TranscriptLine,
    Turn,
    VideoFrame,
    Word,
)
from stream.speaker.active import SpeakerConfig
from stream.turns.assembler import TurnAssembler, TurnConfig
from tests.conftest import assert_overlaps_declared

FPS = 20
HANGOVER = 0.4
IMAGE = np.zeros((2, 2, 3), np.uint8)
CONFIG = TurnConfig()
EXAMPLES = 1000


@dataclass(frozen=True)
class Utterance:
    speaker: int
    start: float
    end: float
    tie: int | None
    """A look-alike whose score hovers level with the speaker's, or None (clear)."""


@st.composite
def conversations(draw: st.DrawFn) -> tuple[int, list[Utterance], list[tuple[float, float]]]:
    people = draw(st.integers(2, 4))
    t, utterances = 0.5, []
    for _ in range(draw(st.integers(1, 6))):
        t += draw(st.sampled_from([0.0, 0.0, 0.15, 0.3, 1.0, 1.8]))
        length = draw(st.floats(0.4, 4.0))
        speaker = draw(st.integers(0, people - 1))
        tie = draw(st.one_of(st.none(), st.integers(0, people - 1).filter(
            lambda p, s=speaker: p != s)))
        utterances.append(Utterance(speaker, round(t, 2), round(t + length, 2), tie))
        t += length
    # Voice activity bridges pauses under 0.5 s, and sometimes stops early.
    segments: list[tuple[float, float]] = []
    for u in utterances:
        if segments and u.start - segments[-1][1] < 0.5:
            segments[-1] = (segments[-1][0], u.end)
        else:
            segments.append((u.start, u.end))
    missed = draw(st.lists(st.floats(0.0, 0.6), min_size=len(segments),
                           max_size=len(segments)))
    segments = [(lo, max(lo + 0.05, hi - cut * (hi - lo))) for (lo, hi), cut
                in zip(segments, missed, strict=True)]
    return people, utterances, segments


def frames(people: int, utterances: list[Utterance], segments: list[tuple[float, float]],
           noise: np.random.Generator) -> list[PerceivedFrame]:
    end = max(u.end for u in utterances) + 1.0
    out = []
    for n in range(round(end * FPS) + 1):
        t = n / FPS
        voiced = any(lo <= t < hi for lo, hi in segments)
        now = next((u for u in utterances if u.start <= t < u.end), None)
        scores = [0.0] * people
        if voiced and now is not None:
            scores = [0.02] * people
            if now.tie is None:
                scores[now.speaker] = 0.85
            else:  # a near tie: both within the change margin of each other
                scores[now.speaker] = float(noise.uniform(0.42, 0.58))
                scores[now.tie] = float(noise.uniform(0.42, 0.58))
        views = tuple(PlayerView(player=f"P{i + 1}", track=i, box=(0, 0, 1, 1), detected=True,
                                 yaw=0.0, mouth=0.0, share=s, p_speaking=s)
                      for i, s in enumerate(scores))
        out.append(PerceivedFrame(pts=t, frame=VideoFrame(pts=t, image=IMAGE), players=views,
                                  voiced=voiced, speaker=None, confidence=0.0))
    return out


def speech(segments: list[tuple[float, float]]) -> list[Item]:
    out: list[Item] = []
    for lo, hi in segments:
        out += [SpeechStarted(pts=lo + 0.1 if hi > lo + 0.1 else hi, start=lo),
                SpeechSegment(pts=hi + HANGOVER, start=lo, end=hi)]
    return out


def lines(utterances: list[Utterance]) -> list[TranscriptLine]:
    return [TranscriptLine(pts=u.end, start=u.start, end=u.end, speaker=None,
                           text=" ".join(f"l{i}w{j}" for j in range(3 + i % 4)))
            for i, u in enumerate(utterances)]


def words(utterances: list[Utterance], segments: list[tuple[float, float]]) -> list[Item]:
    """Recognised words, each sent when the recognizer decoded the segment holding it
    (words the voice activity never heard are never decoded), then its progress."""
    out: list[Item] = []
    for i, u in enumerate(utterances):
        count = 2 + i % 4
        step = (u.end - u.start) / count
        for j in range(count):
            lo, hi = u.start + j * step, u.start + (j + 1) * step - 0.02
            home = next(((a, b) for a, b in segments if a <= (lo + hi) / 2 < b), None)
            if home is not None:  # times clipped to the audio decoded
                out.append(Word(pts=home[1] + HANGOVER, start=lo, end=min(hi, home[1]),
                                text=f" u{i}w{j}"))
    for _, hi in segments:
        out.append(Transcribed(pts=hi + HANGOVER, until=hi))
    return out


def assemble(items: list[Item], text: str) -> list[Turn]:
    core = TurnAssembler(CONFIG, orphan_delay_s=HANGOVER + 0.02, speaker=SpeakerConfig(),
                         text=text)  # type: ignore[arg-type]
    rank = {TranscriptLine: 0, Word: 0, Transcribed: 1}
    turns: list[Turn] = []
    for item in sorted(items, key=lambda i: (i.pts, rank.get(type(i), 2))):
        turns += core.push(item)
    return turns + core.flush()


def check_common(turns: list[Turn], frames_: list[PerceivedFrame]) -> None:
    assert [t.index for t in turns] == list(range(len(turns)))
    for a, b in itertools.pairwise(turns):
        assert b.start >= a.start - 1e-9, "turns come in time order"
        assert b.known_at >= a.known_at
    assert_overlaps_declared(turns)
    for turn in turns:
        assert turn.start <= turn.end
        assert all(f.pts <= turn.known_at + 1e-9 for f in turn.keyframes)
        assert all(w.pts <= turn.known_at + 1e-9 for w in turn.words)
        inside = [f for f in frames_ if turn.start <= f.pts < turn.end]
        means = {f"P{i + 1}": np.mean([f.players[i].share for f in inside])
                 for i in range(len(frames_[0].players))} if inside else {}
        best = max(means.values(), default=0.0)
        if best > 0:
            assert turn.vote is not None and turn.vote.speaker is not None
            assert means[turn.vote.speaker] >= best - 1e-3, "the speaker the scores favour"
        else:
            assert turn.vote is None or turn.vote.speaker is None


def check_held_changes(turns: list[Turn], utterances: list[Utterance]) -> None:
    """A turn closed inside speech by a speaker change: someone took over there (scores
    hovering near a tie inside an utterance never close a turn)."""
    for turn in turns:
        if turn.closed_by == "speaker":
            # The split may have moved to a line's end up to `snap_s` before the change.
            reach = CONFIG.change_hold_s + CONFIG.snap_s
            after = [u for u in utterances if abs(u.start - turn.end) <= reach]
            assert after, f"turn {turn.index} closed at {turn.end:.2f} on no held change"


@settings(max_examples=EXAMPLES, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(conversations(), st.integers(0, 2**32 - 1))
def test_invariants_with_transcript_lines(conversation, seed: int) -> None:
    people, utterances, segments = conversation
    seen = frames(people, utterances, segments, np.random.default_rng(seed))
    said = lines(utterances)
    turns = assemble([*seen, *speech(segments), *said], "transcript")
    check_common(turns, seen)
    check_held_changes(turns, utterances)
    # Every word of every line lands in exactly one turn.
    out = [w for t in turns for w in t.text.split()]
    assert sorted(out) == sorted(w for line in said for w in line.text.split())
    # A line is one turn unless a held speaker change runs through it.
    for line in said:
        holding = [t for t in turns if set(line.text.split()) & set(t.text.split())]
        if len(holding) > 1:
            assert any(t.closed_by == "speaker" for t in holding[:-1]), line.text
    # No speech turn is empty where a line it could have known lies mostly inside it.
    for turn in turns:
        if turn.origin == "speech" and not turn.text:
            for line in said:
                inside = min(line.end, turn.end) - max(line.start, turn.start)
                assert not (line.end <= turn.known_at and inside > (line.end - line.start) / 2)


@settings(max_examples=EXAMPLES, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(conversations(), st.integers(0, 2**32 - 1))
def test_invariants_with_recognised_words(conversation, seed: int) -> None:
    people, utterances, segments = conversation
    seen = frames(people, utterances, segments, np.random.default_rng(seed))
    heard = [w for w in words(utterances, segments) if isinstance(w, Word)]
    turns = assemble([*seen, *speech(segments), *words(utterances, segments)], "asr")
    check_common(turns, seen)
    check_held_changes(turns, utterances)
    # Every word lands in exactly one turn, and a turn's words lie in its time.
    out = [w for t in turns for w in t.words]
    assert sorted(w.text for w in out) == sorted(w.text for w in heard)
    for turn in turns:
        assert "".join(w.text for w in turn.words).strip() == turn.text
        assert (turn.words_from == "asr") == bool(turn.words)
        for w in turn.words:
            assert turn.start - 1e-9 <= (w.start + w.end) / 2 <= turn.end + 1e-9
        if not turn.words:  # no word's middle falls inside a turn emitted without words
            assert not any(turn.start < (w.start + w.end) / 2 < turn.end for w in heard)
