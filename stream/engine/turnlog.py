"""A durable log of each conversation's turns: what a session is rebuilt from.

A session's cache is a function of its turns, so the turns are what must survive: a
pool that evicted a session, or a new process after a crash, takes them again and has
the same cache (`SessionPool`). Per session, in `folder/<session id, %-quoted>/`:

- `turns.jsonl`: one JSON object per turn (its times, words, speaker, vote and the
  players seen in each key frame), written after its frames and flushed with fsync,
  so a line that is there has its pictures;
- `frames/<turn>-<k>.png`: the key frames the engine takes (`frames_per_turn` of
  them, chosen as the engine chooses), lossless, so a rebuilt session sees the same
  pixels.

A line cut short by a crash is the last one and is left out (with a warning); the
turn it held had not been answered. The log grows with the conversation and lives
until `forget` (the conversation is over) removes it: about 0.5 MB per turn at
640x480 with two key frames.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
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

    def _dir(self, session: str) -> Path:
        return self.folder / quote(session, safe="")

    def sessions(self) -> list[str]:
        return sorted(unquote(p.name) for p in self.folder.iterdir()
                      if (p / "turns.jsonl").is_file())

    def append(self, session: str, turn: Turn) -> None:
        """The turn with the key frames it carries (give it only those the engine takes)."""
        where = self._dir(session)
        (where / "frames").mkdir(parents=True, exist_ok=True)
        frames = []
        for k, (frame, views) in enumerate(zip(turn.keyframes, turn.views, strict=True)):
            name = f"{turn.index}-{k}.png"
            ok, png = cv2.imencode(".png", cv2.cvtColor(frame.image, cv2.COLOR_RGB2BGR))
            if not ok:
                raise TurnLogError(f"{where}: cannot encode frame {name}")
            _write(where / "frames" / name, png.tobytes())
            frames.append({"file": name, "pts": frame.pts, "source": frame.source,
                           "seq": frame.seq, "views": [_view(v) for v in views]})
        vote = turn.vote
        line = {"index": turn.index, "pts": turn.pts, "start": turn.start, "end": turn.end,
                "text": turn.text, "speaker_name": turn.speaker_name, "frames": frames,
                "vote": None if vote is None else {
                    "speaker": vote.speaker, "confidence": vote.confidence,
                    "scores": vote.scores, "cues": vote.cues}}
        with open(where / "turns.jsonl", "a", encoding="utf-8") as out:
            out.write(json.dumps(line, allow_nan=False) + "\n")
            out.flush()
            os.fsync(out.fileno())

    def turns(self, session: str) -> list[Turn]:
        """The session's turns in order; [] for a session never logged."""
        where = self._dir(session)
        path = where / "turns.jsonl"
        if not path.is_file():
            return []
        lines = path.read_text(encoding="utf-8").split("\n")
        turns = []
        for number, text in enumerate(lines, 1):
            if not text:
                continue
            try:
                turns.append(_turn(json.loads(text), where / "frames"))
            except (ValueError, KeyError, TypeError) as e:
                if number == len(lines):  # no newline: cut short while being written
                    log.warning("%s:%d: a turn cut short, left out (%s)", path, number, e)
                    break
                raise TurnLogError(f"{path}:{number}: not a logged turn ({e})") from None
        return turns

    def forget(self, session: str) -> None:
        shutil.rmtree(self._dir(session), ignore_errors=True)


def _write(path: Path, data: bytes) -> None:
    with open(path, "wb") as out:
        out.write(data)
        out.flush()
        os.fsync(out.fileno())


def _view(v: PlayerView) -> dict[str, object]:
    return {"player": v.player, "track": v.track, "box": list(v.box), "detected": v.detected,
            "yaw": v.yaw, "mouth": v.mouth, "share": v.share, "p_speaking": v.p_speaking}


def _turn(line: dict, frames: Path) -> Turn:
    keyframes, views = [], []
    for f in line["frames"]:
        image = cv2.imread(str(frames / f["file"]), cv2.IMREAD_COLOR)
        if image is None:
            raise ValueError(f"frame {f['file']} is missing or unreadable")
        keyframes.append(VideoFrame(pts=f["pts"], source=f["source"], seq=f["seq"],
                                    image=np.ascontiguousarray(
                                        cv2.cvtColor(image, cv2.COLOR_BGR2RGB))))
        views.append(tuple(PlayerView(**{**v, "box": tuple(v["box"])}) for v in f["views"]))
    vote = line["vote"]
    return Turn(pts=line["pts"], index=line["index"], start=line["start"], end=line["end"],
                text=line["text"], speaker_name=line["speaker_name"],
                keyframes=tuple(keyframes), views=tuple(views),
                vote=None if vote is None else SpeakerVote(**vote))
