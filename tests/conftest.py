from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest

from stream.frames import Turn

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "examples" / "demo.mp4"


@pytest.fixture(scope="session")
def demo() -> Path:
    return DEMO


SHORT_S = 9.2
"""The short demo's length: the demo's first three turns, each closed by the silence after it
(the third's speech ends at 8.63 s, its hang-over at 9.06 s; the fourth starts at 9.28 s)."""
SHORT_TURNS = 3


@pytest.fixture(scope="session")
def short_demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo's first 9 s, named demo.mp4 with its transcript beside it, for the tests of
    the command line whose subject is not the conversation (errors, outputs, signals,
    serving): the same path through every stage at a third of the replay's cost. The whole
    conversation is replayed and checked against its truth in test_replay and test_demo.
    Every turn ends in silence, as in the whole demo, so a live feed of it gives the same
    turns as the file (a turn the end of a feed cuts ends where the feed's audio does)."""
    folder = tmp_path_factory.mktemp("short")
    media = folder / "demo.mp4"
    subprocess.run(["ffmpeg", "-v", "error", "-i", str(DEMO), "-t", str(SHORT_S), "-c", "copy",
                    str(media)], check=True, timeout=60)
    cues = DEMO.with_suffix(".srt").read_text().strip().split("\n\n")[:SHORT_TURNS]
    (folder / "demo.srt").write_text("\n\n".join(cues) + "\n")
    return media


@pytest.fixture(scope="session")
def truth() -> dict:
    return json.loads((ROOT / "examples" / "demo.truth.json").read_text())


MOUTH = "perception:\n  speaker:\n    model: mouth\n"
"""A config for tests of the harness around perception (transports, delivery, a soak):
mouth motion keeps up at any pace on a busy 2-core machine, Light-ASD may not, and a
pipeline behind a live feed drops video by design, which changes the speakers."""

TURN = "socialstream.turn/6"
PREDICTION = "socialstream.prediction/3"


def events_of(lines: str | list[str], schema: str | None = None) -> list[dict]:
    """JSONL events (a text or its lines), only those of `schema` when given: replay and
    live print each turn followed by its prediction."""
    rows = lines.splitlines() if isinstance(lines, str) else lines
    events = [json.loads(line) for line in rows if line.strip()]
    return [e for e in events if schema is None or e["schema"] == schema]


def turn_events(lines: str | list[str]) -> list[dict]:
    return events_of(lines, TURN)


def start_cli(*args: str, text: bool = True, bufsize: int = -1) -> subprocess.Popen:
    """The command line started in its own process, its output on pipes, for a test that
    talks to it while it runs (signals, a sender it waits for)."""
    return subprocess.Popen([sys.executable, "-m", "pipelines.cli", *args], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=text,
                            bufsize=bufsize)


def signalled_after_first_line(number: int, *args: str,
                                timeout: float = 60) -> tuple[int, list[str], str]:
    """Run the command line, send it `number` once its first line is out (not after a fixed
    sleep, which a slow start-up overruns), and return its exit code, every stdout line and
    stderr.

    The pipe is read unbuffered: `communicate()` reads the file descriptor, not a reader's
    buffer, so lines a buffered `readline()` had read ahead would be lost to the result.
    """
    proc = start_cli(*args, text=False, bufsize=0)
    assert proc.stdout is not None
    first = proc.stdout.readline()  # byte by byte: nothing past the line leaves the pipe
    proc.send_signal(number)
    stdout, stderr = proc.communicate(timeout=timeout)
    return proc.returncode, (first + stdout).decode().splitlines(), stderr.decode()


def run_cli(*args: str, timeout: float = 120, **kwargs) -> subprocess.CompletedProcess[str]:
    """The installed command line, as a user runs it (its own process, pipes, no TTY)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, "-m", "pipelines.cli", *args], capture_output=True,
                          text=True, timeout=timeout, cwd=kwargs.pop("cwd", ROOT), env=env,
                          **kwargs)


def require_shared(path: Path) -> Path:
    """The project's data beside the checkout (`../shared`): a test that needs it fails in
    CI when it is missing, and skips, saying where it looked, elsewhere."""
    if not path.exists():
        if os.environ.get("CI"):
            pytest.fail(f"{path} is missing: CI runs beside ../shared")
        pytest.skip(f"{path} is not on this machine")
    return path


def assert_overlaps_declared(turns: Sequence[Turn]) -> None:
    """Two turns share time only inside an overlap the later one declares."""
    for i, later in enumerate(turns):
        for earlier in turns[:i]:
            lo, hi = max(earlier.start, later.start), min(earlier.end, later.end)
            if hi - lo > 1e-9:
                assert any(a <= lo + 1e-9 and hi <= b + 1e-9 for a, b in later.overlap), (
                    f"turn {earlier.index} [{earlier.start:.2f}, {earlier.end:.2f}] and turn "
                    f"{later.index} [{later.start:.2f}, {later.end:.2f}] overlap undeclared "
                    f"(declared: {later.overlap})")
