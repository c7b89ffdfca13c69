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


def run_cli(*args: str, timeout: float = 120, **kwargs) -> subprocess.CompletedProcess[str]:
    """The installed command line, as a user runs it (its own process, pipes, no TTY)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, "-m", "pipelines.cli", *args], capture_output=True,
                          text=True, timeout=timeout, cwd=kwargs.pop("cwd", ROOT), env=env,
                          **kwargs)
