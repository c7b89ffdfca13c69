"""`socialstream serve` on a real local Ray instance: a replica killed mid-conversation
loses no prediction."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from stream.engine.config import PredictorConfig
from stream.engine.loading import load_backend
from stream.engine.predict import Predictor
from stream.engine.service import HEADER
from stream.engine.synthetic import random_llama, word_tokenizer
from stream.engine.turnlog import turn_to_json
from stream.events import prediction_event
from stream.frames import Turn
from tests.engine.test_predict import _turn

ROOT = Path(__file__).resolve().parents[2]
LINES = ["Ben, did you finish the map for our trip?", "He did most of it, honestly.",
         "Then show me the shortcut, please.", "She knows the way better than you."]
SPEAKERS = ["P1", "P2", "P3", "P2"]


def _post(port: int, session: str | None, body: bytes) -> tuple[int, dict[str, Any]]:
    headers = {"Content-Type": "application/json", **({HEADER: session} if session else {})}
    request = urllib.request.Request(f"http://127.0.0.1:{port}/", data=body, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def _send(port: int, session: str, turn: Turn, deadline_s: float = 60) -> dict[str, Any]:
    """The turn's prediction; retried while Serve routes around a dead replica."""
    body = json.dumps(turn_to_json(turn)).encode()
    until = time.monotonic() + deadline_s
    while True:
        try:
            status, answer = _post(port, session, body)
            if status == 200:
                return answer
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            status, answer = 0, {}
        if time.monotonic() > until:
            raise AssertionError(f"no prediction for turn {turn.index}: {status} {answer}")
        time.sleep(0.5)


def _answers(event: dict[str, Any]) -> dict[str, Any]:
    return {k: event[k] for k in ("addressee", "pronouns", "mentioned", "turn", "speaker")}


def test_a_killed_replica_loses_no_prediction(tmp_path: Path) -> None:
    tokenizer = word_tokenizer()
    model = tmp_path / "model"
    random_llama(len(tokenizer)).save_pretrained(model)
    tokenizer.save_pretrained(model)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, "-m", "pipelines.cli", "serve", "--model", str(model),
         "--replicas", "2", "--cpus-per-replica", "0.5", "--http", f"127.0.0.1:{port}",
         "--log-dir", str(tmp_path / "log")],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        reference = Predictor(load_backend(str(model)), PredictorConfig(model=str(model)))
        expected = [_answers(prediction_event(reference.turn(
            _turn(k, SPEAKERS[k], LINES[k])), "a")) for k in range(len(LINES))]
        served = [_send(port, "a", _turn(k, SPEAKERS[k], LINES[k]), deadline_s=180)
                  for k in range(2)]
        os.kill(served[-1]["pid"], signal.SIGKILL)  # the replica that holds the session
        served += [_send(port, "a", _turn(k, SPEAKERS[k], LINES[k])) for k in range(2, 4)]
        assert [_answers(e) for e in served] == expected
        assert served[-1]["pid"] != served[1]["pid"]
        assert all(e["schema"].startswith("socialstream.prediction/") for e in served)
        # Bad requests are answered, not fatal.
        assert _post(port, None, b"{}")[0] == 400
        status, answer = _post(port, "b", b'{"index": 0}')
        assert status == 400 and "not a turn" in answer["error"]
    finally:
        server.send_signal(signal.SIGINT)
        try:
            output, _ = server.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()
            output, _ = server.communicate()
    assert server.returncode == 0, output[-3000:]
    assert f"serving {model}" in output


def test_serve_without_a_model_is_one_clear_error() -> None:
    done = subprocess.run([sys.executable, "-m", "pipelines.cli", "serve"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 2
    assert "serve needs a model: --model NAME or engine.model in --config" in done.stderr


@pytest.mark.parametrize("flag", ["--replicas", "--budget-mb"])
def test_serve_refuses_nothing_to_serve_with(flag: str) -> None:
    done = subprocess.run([sys.executable, "-m", "pipelines.cli", "serve", "--model", "x",
                           flag, "0"], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          check=False)
    assert done.returncode == 2 and "must be positive" in done.stderr
