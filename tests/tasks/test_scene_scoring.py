"""A scene's predictions scored against its truth: paired by time, abstentions counted."""

from __future__ import annotations

from typing import Any

from stream.engine.evaluate import score_predictions

TRUTH = {"turns": [
    {"turn": 0, "start": 0.0, "end": 2.0, "speaker": "P1", "addressee": "P2",
     "pronouns": [], "mentions": ["P2"]},
    {"turn": 1, "start": 2.5, "end": 4.0, "speaker": "P2", "addressee": "P1",
     "pronouns": [{"word": "he", "player": "P3"}], "mentions": []},
    {"turn": 2, "start": 4.5, "end": 6.0, "speaker": "P3", "addressee": "P2",
     "pronouns": [], "mentions": ["P1"]}]}


def _event(turn: int, start: float, end: float, addressee: str | None,
           mentioned: str | None, pronouns: dict[str, str] | None = None) -> dict[str, Any]:
    return {"turn": turn, "start": start, "end": end,
            "addressee": None if addressee is None else {"answer": addressee},
            "pronouns": [{"pronoun": w, "answer": p} for w, p in (pronouns or {}).items()],
            "mentioned": None if mentioned is None else {"answer": mentioned}}


def test_an_extra_turn_shifts_nothing() -> None:
    """Output turn 1 is a short extra one (a cough): paired by index, every later turn
    was compared with the wrong truth (all right read 1/3)."""
    events = [_event(0, 0.0, 2.0, "P2", "P2"), _event(1, 2.05, 2.3, "P3", "nobody"),
              _event(2, 2.5, 4.0, "P1", "nobody", {"he": "P3"}),
              _event(3, 4.5, 6.0, "P2", "P1")]
    assert score_predictions(events, TRUTH) == {
        "addressee": (3, 3), "pronoun": (1, 1), "mentioned": (3, 3)}


def test_an_abstention_or_a_missing_turn_counts_as_wrong() -> None:
    """1 of 3 right read 1/1 when the other two abstained or had no turn; item eval
    counts an abstention wrong."""
    events = [_event(0, 0.0, 2.0, "P2", None), _event(1, 2.5, 4.0, None, "nobody")]
    assert score_predictions(events, TRUTH) == {
        "addressee": (1, 3), "pronoun": (0, 1), "mentioned": (1, 3)}
