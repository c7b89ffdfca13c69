"""The versioned JSON events the sinks write (schema: `stream/schemas/turn.schema.json`)."""

from __future__ import annotations

import json
from importlib import resources
from typing import Any

from stream.frames import Turn

TURN_SCHEMA = "socialstream.turn/1"


def _t(seconds: float) -> float:
    return round(seconds, 3)


def turn_event(turn: Turn, session: str) -> dict[str, Any]:
    """One turn as a JSON-ready dict; times in seconds on the session clock, to the ms."""
    return {
        "schema": TURN_SCHEMA,
        "id": f"{session}/turn/{turn.index}",
        "session": session,
        "turn": turn.index,
        "start": _t(turn.start),
        "end": _t(turn.end),
        "emitted_at": _t(turn.pts),
        "origin": turn.origin,
        "text": turn.text,
        "speaker_name": turn.speaker_name,
        "segments": [{"start": _t(s.start), "end": _t(s.end)} for s in turn.segments],
        "keyframes": [_t(f.pts) for f in turn.keyframes],
    }


def dumps(event: dict[str, Any]) -> str:
    """Stable serialisation: same event, same bytes."""
    return json.dumps(event, ensure_ascii=False, separators=(",", ":"))


def turn_schema() -> dict[str, Any]:
    text = resources.files("stream.schemas").joinpath("turn.schema.json").read_text("utf-8")
    return json.loads(text)
