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


def signalled_after_first_line(*args: str, signal_number: int
                               ) -> tuple[int, list[str], str]:
    """The command line, sent `signal_number` once its first stdout line is out (not after a
    fixed sleep, which a slow start-up overruns): its exit code, every line it printed, and
    its stderr."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "pipelines.cli", *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    first = proc.stdout.readline()
    proc.send_signal(signal_number)
    stdout, stderr = proc.communicate(timeout=60)
    return proc.returncode, [first.rstrip("\n"), *stdout.splitlines()], stderr
