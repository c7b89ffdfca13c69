"""The versioned JSON events the sinks write (schemas: `stream/schemas/*.schema.json`)."""

from __future__ import annotations

import json
import re
import secrets
from importlib import resources
from typing import Any

from stream.errors import UserError
from stream.frames import PerceivedFrame, PlayerView, Prediction, Turn

TURN_SCHEMA = "socialstream.turn/6"
SPEAKER_SCHEMA = "socialstream.speaker/1"
PREDICTION_SCHEMA = "socialstream.prediction/3"


_NOT_IN_A_SESSION_ID = re.compile(r"[/+#\x00-\x1f\x7f]")
"""Topic separators and wildcards (MQTT), and control characters."""


def check_session(session: str, what: str = "--session") -> str:
    """A session id is one MQTT topic level: no '/', '+' or '#', not empty."""
    if not session or _NOT_IN_A_SESSION_ID.search(session):
        raise UserError(f"{what} {session!r}: a session id must be non-empty and free of '/', "
                        "'+', '#' and control characters (it is one MQTT topic level)")
    return session


def safe_session(name: str) -> str:
    """A session id made from a name (a media file's stem): forbidden characters become '_'."""
    return _NOT_IN_A_SESSION_ID.sub("_", name) or "session"


def new_run() -> str:
    """An id for one run of a session: event ids stay unique across runs of the same
    session, so a subscriber that drops duplicates by id never drops a later run's events."""
    return secrets.token_hex(4)


def _t(seconds: float) -> float:
    return round(seconds, 3)


def turn_event(turn: Turn, session: str, names: dict[str, str] | None = None,
               run: str = "0") -> dict[str, Any]:
    """One turn as a JSON-ready dict; times in seconds on the session clock, to the ms."""
    vote = turn.vote
    speaker = vote.speaker if vote is not None else None
    name = (names or {}).get(speaker) if speaker is not None else None
    return {
        "schema": TURN_SCHEMA,
        "id": f"{session}/{run}/turn/{turn.index}",
        "session": session,
        "run": run,
        "turn": turn.index,
        "start": _t(turn.start),
        "end": _t(turn.end),
        "emitted_at": _t(turn.known_at if turn.known_at is not None else turn.pts),
        "origin": turn.origin,
        "text": turn.text,
        "speaker": speaker,
        "speaker_name": name or turn.speaker_name,
        "speaker_confidence": round(vote.confidence, 3) if vote is not None else None,
        "speaker_scores": dict(vote.scores) if vote is not None else {},
        "players": dict(vote.cues) if vote is not None else {},
        "segments": [{"start": _t(s.start), "end": _t(s.end)} for s in turn.segments],
        "overlap": [{"start": _t(lo), "end": _t(hi)} for lo, hi in turn.overlap],
        "closed_by": turn.closed_by,
        "words": [{"start": _t(w.start), "end": _t(w.end), "word": w.text,
                   "probability": round(w.probability, 3)} for w in turn.words],
        "words_from": turn.words_from,
        "keyframes": [
            {"t": _t(frame.pts), "players": [_view(v) for v in views]}
            for frame, views in zip(turn.keyframes, turn.views or [()] * len(turn.keyframes),
                                    strict=True)
        ],
    }


def prediction_event(prediction: Prediction, session: str, run: str = "0") -> dict[str, Any]:
    """The answers about one turn (the MQTT `prediction` topic).

    Deterministic for a given predictor and input except `latency_s`, the one wall-clock
    field, so replays compare with it left out (and `id`, `run`).
    """
    answers: dict[str, Any] = {"addressee": None, "pronouns": [], "mentioned": None}
    for a in prediction.answers:
        entry = {"answer": a.answer, "question": a.question,
                 "probabilities": {k: round(v, 4) for k, v in a.probabilities.items()},
                 "scores": {k: round(v, 4) for k, v in a.scores.items()}}
        if a.task == "pronoun":
            answers["pronouns"].append({"pronoun": a.target, **entry})
        elif a.task == "mentioned":
            answers[a.task] = {**entry, "name": a.target}
        else:
            answers[a.task] = entry
    waited = (prediction.known_at - prediction.end) if prediction.known_at is not None else 0.0
    return {
        "schema": PREDICTION_SCHEMA,
        "id": f"{session}/{run}/prediction/{prediction.turn}",
        "session": session,
        "run": run,
        "turn": prediction.turn,
        "start": _t(prediction.start),
        "end": _t(prediction.end),
        "speaker": prediction.speaker,
        "predictor": prediction.predictor,
        "latency_s": round(max(0.0, waited) + prediction.latency_s, 4),
        **answers,
    }


def speaker_event(frame: PerceivedFrame, session: str) -> dict[str, Any]:
    """Who is speaking in one frame (the MQTT `speaker` topic)."""
    return {
        "schema": SPEAKER_SCHEMA,
        "session": session,
        "t": _t(frame.pts),
        "speaker": frame.speaker,
        "confidence": frame.confidence,
        "voiced": frame.voiced,
        "width": frame.frame.width,
        "height": frame.frame.height,
        "players": [{"id": v.player, "box": [round(b, 1) for b in v.box],
                     "p_speaking": v.p_speaking} for v in frame.players],
    }


def _view(view: PlayerView) -> dict[str, Any]:
    return {"id": view.player, "box": [round(v, 1) for v in view.box], "detected": view.detected,
            "yaw": view.yaw, "mouth": view.mouth, "p_speaking": view.p_speaking}


def dumps(event: dict[str, Any]) -> str:
    """Stable serialisation: same event, same bytes. Strict JSON: NaN and Infinity raise
    (readers reject them first, so this is a last guard)."""
    return json.dumps(event, ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def turn_schema() -> dict[str, Any]:
    return _schema("turn")


def prediction_schema() -> dict[str, Any]:
    return _schema("prediction")


def _schema(name: str) -> dict[str, Any]:
    text = resources.files("stream.schemas").joinpath(f"{name}.schema.json").read_text("utf-8")
    return json.loads(text)
