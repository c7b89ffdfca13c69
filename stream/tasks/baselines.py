"""The honest baselines of `../shared/data/README.md`, computed in the same run as a
predictor so every figure has its yardstick beside it.

Each picks a candidate, except chance, which is an expected accuracy, not a pick. Where
the rule has nothing to go on (an empty history) it falls back to the first candidate,
the earliest player in the roster: with that fallback these rules give exactly the
README's figures on the dev files (STI previous speaker 80.9 %, PCR 58.7 %, MPP
45.2 % and 40.8 % mention-then-speaker).
"""

from __future__ import annotations

from stream.tasks.items import EvalItem, mentions


def chance(item: EvalItem) -> float:
    """Expected accuracy of a uniform pick among the candidates."""
    return 1.0 / len(item.candidates)


def previous_speaker(item: EvalItem) -> str:
    """The most recent other speaker in the history who is a candidate."""
    for utterance in reversed(item.history):
        for speaker in utterance.speakers():
            if speaker != item.speaker and speaker in item.candidates:
                return speaker
    return item.candidates[0]


def mention_then_speaker(item: EvalItem) -> str:
    """The candidate `[PlayerN]`-mentioned last in the history, else the previous speaker.
    The utterance itself is not read: for MPP its other names are, by construction, not
    the answer."""
    for utterance in reversed(item.history):
        named = [m for m in mentions(utterance.text) if m in item.candidates]
        if named:
            return named[-1]
    return previous_speaker(item)


BASELINES = {"previous_speaker": previous_speaker, "mention_then_speaker": mention_then_speaker}
