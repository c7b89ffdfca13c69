"""Scoring the active speaker against a ground-truth file (`*.truth.json` from the generator)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from stream.frames import PerceivedFrame, Turn


@dataclass(frozen=True)
class SpeakerScore:
    frame_accuracy: float
    """Share of speech frames (inside at least one true turn) whose per-frame speaker is
    someone speaking then. Each frame counts once: where two turns overlap, either
    speaker is right (counted once per turn, an overlap frame was always wrong once, and
    the handover scene could not pass 85.7 %)."""
    turn_accuracy: float
    """Share of turns whose voted speaker is the true one."""
    onset_lags: tuple[float, ...]
    """Per true turn: media seconds from its start to the first correct per-frame decision."""
    boundary_errors: tuple[float, ...] = ()
    """Per true turn start and end: seconds to the nearest emitted turn start (or end)."""
    refined_accuracy: float = 0.0
    """The same speech frames, each given the speaker of the turn holding it: the refined
    decision, which looks ahead as far as a turn waits (a change is known once the new
    speaker has held, and placed where her rise began)."""


def score(frames: Sequence[PerceivedFrame], turns: Sequence[Turn],
          truth: dict[str, Any]) -> SpeakerScore:
    lags = []
    for spoken in truth["turns"]:
        right = [f for f in frames
                 if spoken["start"] <= f.pts <= spoken["end"] and f.speaker == spoken["speaker"]]
        lags.append(right[0].pts - spoken["start"] if right else spoken["end"] - spoken["start"])
    speaking = [(f, {s["speaker"] for s in truth["turns"] if s["start"] <= f.pts <= s["end"]})
                for f in frames]
    speech = [(f, who) for f, who in speaking if who]
    hits = sum(1 for f, who in speech if f.speaker in who)
    refined = sum(1 for f, who in speech if refined_speakers(turns, f.pts) & who)
    total = len(speech)
    voted = sum(
        1 for turn, spoken in zip(turns, truth["turns"], strict=False)
        if turn.vote is not None and turn.vote.speaker == spoken["speaker"])
    return SpeakerScore(
        frame_accuracy=hits / total if total else 0.0,
        turn_accuracy=voted / len(truth["turns"]) if len(turns) == len(truth["turns"]) else 0.0,
        onset_lags=tuple(lags),
        boundary_errors=boundary_errors(turns, truth),
        refined_accuracy=refined / total if total else 0.0,
    )


def refined_speakers(turns: Sequence[Turn], t: float) -> set[str]:
    """Who the turns say spoke at `t` (two where turns overlap)."""
    return {turn.vote.speaker for turn in turns if turn.start <= t < turn.end
            and turn.vote is not None and turn.vote.speaker is not None}


def boundary_errors(turns: Sequence[Turn], truth: dict[str, Any]) -> tuple[float, ...]:
    """Starts are matched to starts and ends to ends: an overlapping reply has a start
    inside the previous turn, which one cut between the two could not find."""
    if not turns:
        return tuple(float("inf") for _ in range(2 * len(truth["turns"])))
    starts, ends = [t.start for t in turns], [t.end for t in turns]
    return tuple(
        round(min(abs(spoken[key] - t) for t in found), 3)
        for spoken in truth["turns"]
        for key, found in (("start", starts), ("end", ends)))
