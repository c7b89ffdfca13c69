"""Eval items written in code, as the data README describes them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def item(task: str = "STI", history: list[tuple[str, str]] | None = None,
         speaker: str = "Player0", text: str = "Did you see it?", answer: str = "Player1",
         players: int = 3, group: str = "s01_e01_c01", n: int = 0,
         target: dict[str, Any] | None = None) -> dict[str, Any]:
    names = [f"Player{k}" for k in range(players)]
    return {"schema": "socialstream.eval-item/1",
            "id": f"friends/{group}/{group}_u{n:03d}/{task.lower()}", "task": task,
            "players": names, "history": [{"speaker": s, "text": t} for s, t in history or []],
            "speaker": speaker, "text": text, "target": target, "answer": answer,
            "candidates": [p for p in names if p != speaker]}


def write_jsonl(path: Path, rows: list[Any]) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path
