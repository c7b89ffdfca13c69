"""Word scores of a scene (`pipelines/evaluation/words.py`) on hand-made turn events.

Every expected figure is counted by hand in the comment beside it, so a scorer that pairs
by index, ignores speakers or skips the normaliser fails here.
"""

from __future__ import annotations

from typing import Any

import pytest

from pipelines.evaluation.words import (
    Span,
    WordErrors,
    WordScores,
    normalise,
    overlapping_turns,
    pair_by_overlap,
    percentiles,
    score_words,
    word_latencies,
)
from stream.events import turn_event
from stream.frames import SpeakerVote, Turn, Word


def _event(index: int, start: float, end: float, speaker: str | None, text: str,
           overlap: tuple[tuple[float, float], ...] = (), words_from: str | None = None,
           known_at: float | None = None) -> dict[str, Any]:
    """A real turn event (the same keys the sinks write), made from a hand-made turn."""
    vote = SpeakerVote(speaker=speaker, confidence=1.0, scores={}, cues={}) \
        if speaker else None
    words = tuple(Word(pts=end, start=start, end=end, text=f" {w}") for w in text.split()) \
        if words_from == "asr" else ()
    turn = Turn(pts=end, index=index, start=start, end=end, text=text, vote=vote,
                overlap=overlap, words=words, words_from=words_from,
                known_at=end + 0.5 if known_at is None else known_at)
    return turn_event(turn, "scene")


def _truth(*turns: tuple[float, float, str, str]) -> list[dict[str, Any]]:
    return [{"turn": k, "start": s, "end": e, "speaker": who, "text": text}
            for k, (s, e, who, text) in enumerate(turns)]


# 3 + 2 + 3 = 8 words, P1 speaking first and last.
TRUTH = _truth((0.0, 2.0, "P1", "Good morning, Eli."), (2.5, 4.0, "P2", "Hello there."),
               (4.5, 6.0, "P1", "How are you?"))


def _output(*speakers: str | None, texts: tuple[str, ...] | None = None) -> list[dict[str, Any]]:
    """The truth's turns as output events, with these speakers (and texts)."""
    texts = texts or tuple(t["text"] for t in TRUTH)
    return [_event(k, t["start"], t["end"], who, text)
            for k, (t, who, text) in enumerate(zip(TRUTH, speakers, texts, strict=True))]


def test_the_truth_itself_scores_zero() -> None:
    scores = score_words(_output("P1", "P2", "P1"), TRUTH)
    assert scores == WordScores(WordErrors(8), WordErrors(8), turns_out=3, turns_truth=3,
                                empty_speech_turns=0, overlapping_turns=0)


def test_a_dropped_word_is_one_deletion_in_both_rates() -> None:
    output = _output("P1", "P2", "P1", texts=("Good morning, Eli.", "Hello there.", "How you?"))
    scores = score_words(output, TRUTH)
    assert scores.wer == scores.cpwer == WordErrors(8, deletions=1)
    assert scores.wer.rate == pytest.approx(1 / 8)


def test_a_turn_given_to_the_wrong_speaker_costs_cpwer_but_not_wer() -> None:
    scores = score_words(_output("P1", "P2", "P2"), TRUTH)
    assert scores.wer == WordErrors(8)
    # P1 said "good morning eli how are you", P2 "hello there"; the output has P1 "good
    # morning eli", P2 "hello there how are you". Either pairing of the speakers costs 6
    # edits (3 deleted + 3 inserted, or 4 substituted + 1 deleted + 1 inserted).
    assert scores.cpwer.errors == 6 and scores.cpwer.rate == pytest.approx(6 / 8)


def test_cpwer_does_not_care_what_the_speakers_are_called() -> None:
    # Every turn relabelled consistently: the same partition of the words, no error.
    assert score_words(_output("P2", "P7", "P2"), TRUTH).cpwer == WordErrors(8)


def test_turns_without_a_speaker_are_speakers_of_their_own() -> None:
    truth = _truth((0.0, 2.0, "P1", "Good morning, Eli."), (2.5, 4.0, "P2", "Hello there."),
                   (4.5, 6.0, "P2", "See you."))
    output = [_event(0, 0.0, 2.0, "P1", "Good morning, Eli."),
              _event(1, 2.5, 4.0, None, "Hello there."), _event(2, 4.5, 6.0, None, "See you.")]
    scores = score_words(output, truth)
    assert scores.wer == WordErrors(7)
    # P2's "hello there see you" matches one unknown speaker (2 words deleted), the other
    # unknown is a speaker too many (2 words inserted).
    assert scores.cpwer.errors == 4 and scores.cpwer.reference == 7


def test_pairs_are_made_by_time_not_by_index() -> None:
    # Two spurious turns in silences, the first of them before the rest in index order:
    # one inserted word each, not every turn scored against its neighbour's words.
    output = [_event(0, 6.2, 6.4, "P2", "Okay"), _event(1, 2.05, 2.4, "P2", "Right.")] + [
        _event(k + 2, t["start"], t["end"], t["speaker"], t["text"])
        for k, t in enumerate(TRUTH)]
    scores = score_words(output, TRUTH)
    assert scores.wer == WordErrors(8, insertions=2)
    assert pair_by_overlap([Span.of_event(e) for e in output],
                           [Span.of_truth(t) for t in TRUTH]) == [None, None, 0, 1, 2]


def test_a_turn_over_two_truth_turns_is_scored_against_the_one_it_overlaps_most() -> None:
    # One output turn 1.5-4.0 holds all five words; it overlaps "hello there" 1.5 s and
    # "good morning eli" 0.5 s: 3 words inserted there, 3 deleted from the first turn.
    output = [_event(0, 1.5, 4.0, "P1", "Good morning Eli, hello there."),
              _event(1, 4.5, 6.0, "P1", "How are you?")]
    scores = score_words(output, TRUTH)
    assert scores.wer == WordErrors(8, deletions=3, insertions=3)
    assert scores.turns_out == 2 and scores.turns_truth == 3


def test_the_normaliser_makes_spelling_punctuation_and_numbers_equal() -> None:
    assert normalise("It's twenty-five past, Mr. Smith!") == normalise("it is 25 past mister "
                                                                      "smith")
    truth = _truth((0.0, 2.0, "P1", "It's twenty-five past."))
    assert score_words([_event(0, 0.0, 2.0, "P1", "it is 25 past")], truth).wer.errors == 0


def test_an_empty_turn_over_speech_is_counted_and_its_words_deleted() -> None:
    output = _output("P1", "P2", "P1", texts=("Good morning, Eli.", "", "How are you?"))
    output.append(_event(3, 7.0, 8.0, None, ""))  # empty, but nobody spoke then
    scores = score_words(output, TRUTH)
    assert scores.empty_speech_turns == 1
    assert scores.wer == WordErrors(8, deletions=2)


def _spans(*turns: tuple[float, float, tuple[tuple[float, float], ...]]) -> list[Span]:
    return [Span(start=s, end=e, speaker=None, text="x", overlap=o) for s, e, o in turns]


def test_overlapping_turns_are_pairs_sharing_time_neither_declared() -> None:
    assert overlapping_turns(_spans((0.0, 2.0, ()), (1.0, 3.0, ()))) == 1
    # Declared by either turn (the first one may not have known yet): not counted.
    assert overlapping_turns(_spans((0.0, 2.0, ()), (1.0, 3.0, ((1.0, 2.0),)))) == 0
    assert overlapping_turns(_spans((0.0, 2.0, ((1.0, 1.5),)), (1.0, 3.0, ((1.5, 2.0),)))) == 0
    # Half declared: the other half is two turns claiming the same speech.
    assert overlapping_turns(_spans((0.0, 2.0, ()), (1.0, 3.0, ((1.0, 1.5),)))) == 1
    # Touching, or sharing a millisecond of rounding: not overlapping.
    assert overlapping_turns(_spans((0.0, 2.0, ()), (2.0, 3.0, ()), (2.999, 4.0, ()))) == 0
    # One long turn over two others, which also overlap each other: three pairs.
    assert overlapping_turns(_spans((0.0, 9.0, ()), (1.0, 3.0, ()), (2.0, 4.0, ()))) == 3


def test_scene_scores_add_up_as_word_counts_not_as_rates() -> None:
    one = score_words(_output("P1", "P2", "P1", texts=("Good morning.", "Hello there.",
                                                        "How are you?")), TRUTH)
    both = one + score_words(_output("P1", "P2", "P1"), TRUTH)
    assert both.wer == WordErrors(16, deletions=1) and both.turns_truth == 6
    assert both.to_json()["wer"] == {"rate": 0.0625, "reference_words": 16,
                                     "substitutions": 0, "deletions": 1, "insertions": 0}


def test_word_latency_is_from_a_recognised_turns_end_to_its_words_out() -> None:
    events = [_event(0, 0.0, 2.0, "P1", "Good morning", words_from="asr", known_at=2.4),
              _event(1, 2.5, 4.0, "P2", "Hello there", words_from="transcript"),
              _event(2, 4.5, 6.0, "P1", "How are you", words_from="asr", known_at=7.0)]
    assert events[0]["words"][0] == {"start": 0.0, "end": 2.0, "word": " Good",
                                     "probability": 1.0}
    assert word_latencies(events) == pytest.approx([0.4, 1.0])
    assert percentiles(word_latencies(events)) == {"n": 2, "p50_s": 0.7, "p95_s": 0.97}
    assert percentiles([]) == {"n": 0, "p50_s": None, "p95_s": None}
