"""Scoring prediction events against a scene's ground truth (`*.truth.json`)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from stream.engine.predict import NOBODY


def score_predictions(events: Iterable[dict[str, Any]], truth: dict[str, Any]
                      ) -> dict[str, tuple[int, int]]:
    """(correct, asked) per task, every question of the truth asked once.

    Each truth turn is paired with the prediction of the output turn that overlaps it
    most in time (turn indices drift apart as soon as the output has one turn more or
    less than the truth). `addressee`: the answer is the true addressee. `pronoun`: for
    each pronoun the truth resolves, the answer for that word. `mentioned`: the answer
    is one of the mentioned players, or `nobody` when no one is. A question with no
    prediction (no turn over the truth's, or a prediction that abstained) counts as
    asked and wrong, as in item eval.
    """
    predicted = [e for e in events if e.get("start") is not None and e.get("end") is not None]
    counts = {"addressee": [0, 0], "pronoun": [0, 0], "mentioned": [0, 0]}
    spans = [(e["start"], e["end"]) for e in predicted]
    for expected in truth["turns"]:
        paired = most_overlapped(expected["start"], expected["end"], spans)
        event = None if paired is None else predicted[paired]
        if expected.get("addressee"):
            answer = (event or {}).get("addressee") or {}
            counts["addressee"][1] += 1
            counts["addressee"][0] += answer.get("answer") == expected["addressee"]
        answered = {p["pronoun"]: p["answer"] for p in (event or {}).get("pronouns") or []}
        for pronoun in expected.get("pronouns", []):
            counts["pronoun"][1] += 1
            counts["pronoun"][0] += answered.get(pronoun["word"].lower()) == pronoun["player"]
        mentioned = expected.get("mentions", [])
        answer = ((event or {}).get("mentioned") or {}).get("answer")
        counts["mentioned"][1] += 1
        counts["mentioned"][0] += answer is not None and (
            answer in mentioned or (answer == NOBODY and not mentioned))
    return {task: (c[0], c[1]) for task, c in counts.items()}


def most_overlapped(start: float, end: float, spans: Sequence[tuple[float, float]]
                    ) -> int | None:
    """The index of the span sharing the most time with [start, end) (the earlier on a
    tie); None when none shares any. How outputs and truth are paired by time, here and
    in the word scores."""
    best, most = None, 0.0
    for i, (a, b) in enumerate(spans):
        seconds = min(end, b) - max(start, a)
        if seconds > most:
            best, most = i, seconds
    return best
