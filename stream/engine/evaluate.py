"""Scoring prediction events against a scene's ground truth (`*.truth.json`)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from stream.engine.predict import NOBODY


def score_predictions(events: Iterable[dict[str, Any]], truth: dict[str, Any]
                      ) -> dict[str, tuple[int, int]]:
    """(correct, asked) per task.

    `addressee`: the answer is the true addressee. `pronoun`: for each pronoun the
    truth resolves, the answer for that word. `mentioned`: the answer is one of the
    mentioned players, or `nobody` when no one is.
    """
    by_turn = {t["turn"]: t for t in truth["turns"]}
    counts = {"addressee": [0, 0], "pronoun": [0, 0], "mentioned": [0, 0]}
    for event in events:
        expected = by_turn.get(event["turn"])
        if expected is None:
            continue
        if event["addressee"] is not None and expected.get("addressee"):
            counts["addressee"][1] += 1
            counts["addressee"][0] += event["addressee"]["answer"] == expected["addressee"]
        answered = {p["pronoun"]: p["answer"] for p in event["pronouns"]}
        for pronoun in expected.get("pronouns", []):
            counts["pronoun"][1] += 1
            counts["pronoun"][0] += answered.get(pronoun["word"].lower()) == pronoun["player"]
        if event["mentioned"] is not None:
            mentioned = expected.get("mentions", [])
            answer = event["mentioned"]["answer"]
            counts["mentioned"][1] += 1
            counts["mentioned"][0] += answer in mentioned or (answer == NOBODY and not mentioned)
    return {task: (c[0], c[1]) for task, c in counts.items()}
