"""A durable log of each conversation's turns: what a session is rebuilt from.

A session's cache is a function of its turns, so the turns are what must survive: a
pool that evicted a session, or a new process after a crash, takes them again and has
the same cache (`SessionPool`). Per session, `folder/<session id, %-quoted>.jsonl`
holds one line per turn in the format the engine service receives turns in
(`turn_to_json`): its times, words, speaker, vote, and the key frames the engine takes
as PNG (lossless, so a rebuilt session sees the same pixels) with the players seen in
each. Each line is flushed with fsync before the turn is answered.

A line cut short by a crash is the last one and is left out (with a warning); the
turn it held had not been answered. The log grows with the conversation (about
0.5 MB per turn at 640x480 with two key frames) and lives until `forget` (the
conversation is over) or `prune` (no turn for a while: the engine service prunes
sessions idle for `--log-keep-hours`) removes it.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

import cv2
import numpy as np

from stream.frames import PlayerView, SpeakerVote, Turn, VideoFrame

log = logging.getLogger(__name__)


class TurnLogError(RuntimeError):
    pass


class TurnLog:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise TurnLogError(f"{folder}: cannot keep the turn log there ({e.strerror})"
                               ) from None

    def _path(self, session: str) -> Path:
        return self.folder / f"{quote(session, safe='')}.jsonl"

    def sessions(self) -> list[str]:
        return sorted(unquote(p.stem) for p in self.folder.glob("*.jsonl"))

    def append(self, session: str, turn: Turn) -> None:
        """The turn with the key frames it carries (give it only those the engine takes)."""
        with open(self._path(session), "a", encoding="utf-8") as out:
            out.write(json.dumps(turn_to_json(turn), allow_nan=False) + "\n")
            out.flush()
            os.fsync(out.fileno())

    def turns(self, session: str) -> list[Turn]:
        """The session's turns in order; [] for a session never logged."""
        path = self._path(session)
        if not path.is_file():
            return []
        lines = path.read_text(encoding="utf-8").split("\n")
        turns = []
        for number, text in enumerate(lines, 1):
            if not text:
                continue
            try:
                turns.append(turn_from_json(json.loads(text)))
            except (ValueError, KeyError, TypeError) as e:
                if number == len(lines):  # no newline: cut short while being written
                    log.warning("%s:%d: a turn cut short, left out (%s)", path, number, e)
                    break
                raise TurnLogError(f"{path}:{number}: not a logged turn ({e})") from None
        return turns

    def size(self, session: str) -> int:
        """Bytes logged for the session: changes whenever anyone appends to it."""
        try:
            return self._path(session).stat().st_size
        except FileNotFoundError:
            return 0

    def forget(self, session: str) -> None:
        self._path(session).unlink(missing_ok=True)

    def prune(self, idle_s: float) -> list[str]:
        """Remove the logs of sessions no turn was appended to for `idle_s` seconds; their
        ids. Such a conversation, if it ever comes back, starts afresh."""
        until = time.time() - idle_s
        gone = []
        for path in self.folder.glob("*.jsonl"):
            try:
                if path.stat().st_mtime < until:
                    path.unlink()
                    gone.append(unquote(path.stem))
            except FileNotFoundError:  # another replica pruned it first
                continue
        return sorted(gone)


def turn_to_json(turn: Turn) -> dict[str, Any]:
    """What the engine needs of a turn, as JSON; frames as base64 PNG."""
    frames = []
    for frame, views in zip(turn.keyframes, turn.views, strict=True):
        ok, png = cv2.imencode(".png", cv2.cvtColor(frame.image, cv2.COLOR_RGB2BGR))
        if not ok:
            raise ValueError(f"turn {turn.index}: a key frame cannot be encoded")
        frames.append({"png": base64.b64encode(png.tobytes()).decode("ascii"),
                       "pts": frame.pts, "source": frame.source, "seq": frame.seq,
                       "views": [_view(v) for v in views]})
    vote = turn.vote
    return {"index": turn.index, "pts": turn.pts, "start": turn.start, "end": turn.end,
            "text": turn.text, "speaker_name": turn.speaker_name, "frames": frames,
            "vote": None if vote is None else {
                "speaker": vote.speaker, "confidence": vote.confidence,
                "scores": vote.scores, "cues": vote.cues}}


def turn_from_json(data: dict[str, Any]) -> Turn:
    """The turn `turn_to_json` made; ValueError, KeyError or TypeError when it is not one."""
    keyframes, views = [], []
    for f in data["frames"]:
        png = np.frombuffer(base64.b64decode(f["png"], validate=True), np.uint8)
        image = cv2.imdecode(png, cv2.IMREAD_COLOR)
        if image is None:
            raise ValueError("a key frame is not a PNG")
        keyframes.append(VideoFrame(pts=float(f["pts"]), source=str(f["source"]),
                                    seq=int(f["seq"]), image=np.ascontiguousarray(
                                        cv2.cvtColor(image, cv2.COLOR_BGR2RGB))))
        views.append(tuple(PlayerView(**{**v, "box": tuple(v["box"])}) for v in f["views"]))
    vote = data["vote"]
    return Turn(pts=float(data["pts"]), index=int(data["index"]), start=float(data["start"]),
                end=float(data["end"]), text=str(data["text"]),
                speaker_name=data["speaker_name"], keyframes=tuple(keyframes),
                views=tuple(views), vote=None if vote is None else SpeakerVote(**vote))


def _view(v: PlayerView) -> dict[str, object]:
    return {"player": v.player, "track": v.track, "box": list(v.box), "detected": v.detected,
            "yaw": v.yaw, "mouth": v.mouth, "share": v.share, "p_speaking": v.p_speaking}
