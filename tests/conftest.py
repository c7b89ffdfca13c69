from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "examples" / "demo.mp4"


@pytest.fixture(scope="session")
def demo() -> Path:
    return DEMO


@pytest.fixture(scope="session")
def truth() -> dict:
    return json.loads((ROOT / "examples" / "demo.truth.json").read_text())


TURN = "socialstream.turn/4"
PREDICTION = "socialstream.prediction/3"


def events_of(lines: str | list[str], schema: str | None = None) -> list[dict]:
    """JSONL events (a text or its lines), only those of `schema` when given: replay and
    live print each turn followed by its prediction."""
    rows = lines.splitlines() if isinstance(lines, str) else lines
    events = [json.loads(line) for line in rows if line.strip()]
    return [e for e in events if schema is None or e["schema"] == schema]


def turn_events(lines: str | list[str]) -> list[dict]:
    return events_of(lines, TURN)


def run_cli(*args: str, timeout: float = 120, **kwargs) -> subprocess.CompletedProcess[str]:
    """The installed command line, as a user runs it (its own process, pipes, no TTY)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, "-m", "pipelines.cli", *args], capture_output=True,
                          text=True, timeout=timeout, cwd=kwargs.pop("cwd", ROOT), env=env,
                          **kwargs)
