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
from stream.events import prediction_event
from stream.frames import Turn
from stream.serving.service import HEADER
from stream.serving.wire import turn_to_json
from tests.broker import Broker
from tests.conftest import SHORT_TURNS
from tests.tiny import LINES, SPEAKERS, saved_model, scene_turn

ROOT = Path(__file__).resolve().parents[2]


def _post(port: int, session: str | None, body: bytes) -> tuple[int, dict[str, Any]]:
    headers = {"Content-Type": "application/json", **({HEADER: session} if session else {})}
    request = urllib.request.Request(f"http://127.0.0.1:{port}/", data=body, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            status, text = response.status, response.read()
    except urllib.error.HTTPError as e:
        status, text = e.code, e.read()
    try:
        return status, json.loads(text)
    except json.JSONDecodeError:  # Serve's own answers while it deploys are plain text
        return status, {"text": text.decode(errors="replace")}


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


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _serve(model: Path, port: int, log_dir: Path, replicas: int,
           mqtt: str | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "pipelines.cli", "serve", "--model", str(model),
         "--replicas", str(replicas), "--cpus-per-replica", "0.5", "--http",
         f"127.0.0.1:{port}", "--log-dir", str(log_dir), *(["--mqtt", mqtt] if mqtt else [])],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        # A Ray said to be running elsewhere: serve starts its own all the same (it used
        # to join whatever Ray the machine ran, and another service's application).
        env={**os.environ, "RAY_ADDRESS": "127.0.0.1:9"})


def _stop(server: subprocess.Popen[str]) -> str:
    server.send_signal(signal.SIGINT)
    try:
        output, _ = server.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        server.kill()
        output, _ = server.communicate()
    assert server.returncode == 0, output[-3000:]
    return output


def _ready(port: int, deadline_s: float = 180) -> None:
    until = time.monotonic() + deadline_s
    while True:
        try:
            if _post(port, None, b"{}")[0] == 400:
                return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        assert time.monotonic() < until, "socialstream serve did not come up"
        time.sleep(0.5)


def test_a_killed_replica_loses_no_prediction(tmp_path: Path) -> None:
    model = saved_model(tmp_path / "model")
    port = _free_port()
    server = _serve(model, port, tmp_path / "log", replicas=2)
    try:
        reference = Predictor(load_backend(str(model)), PredictorConfig(model=str(model)))
        expected = [_answers(prediction_event(reference.turn(
            scene_turn(k, SPEAKERS[k], LINES[k])), "a")) for k in range(len(LINES))]
        _ready(port)
        served = [_send(port, "a", scene_turn(k, SPEAKERS[k], LINES[k])) for k in range(2)]
        os.kill(served[-1]["pid"], signal.SIGKILL)  # the replica that holds the session
        served += [_send(port, "a", scene_turn(k, SPEAKERS[k], LINES[k])) for k in range(2, 4)]
        assert [_answers(e) for e in served] == expected
        assert served[-1]["pid"] != served[1]["pid"]
        assert all(e["schema"].startswith("socialstream.prediction/") for e in served)
        # Bad requests are answered, not fatal.
        assert _post(port, None, b"{}")[0] == 400
        status, answer = _post(port, "b", b'{"index": 0}')
        assert status == 400 and "not a turn" in answer["error"]
    finally:
        output = _stop(server)
    assert f"serving {model}" in output


def _predictions(path: Path) -> list[dict[str, Any]]:
    events = [json.loads(line) for line in path.read_text().splitlines()]
    return [_drop_run(e) for e in events if e["schema"].startswith("socialstream.prediction/")]


def test_replay_with_engine_url_gives_the_predictions_of_the_model_in_process(
        short_demo: Path, tmp_path: Path) -> None:
    """The demo replayed against `socialstream serve`, over HTTP (twice: each run is a
    conversation of its own, as in process) and through the MQTT bridge: the same
    prediction events as with the same model loaded in the replay (the model's scores
    ride along in all)."""
    model = saved_model(tmp_path / "model")
    demo = str(short_demo)

    def replay(out: str, *flags: str) -> None:
        done = subprocess.run(
            [sys.executable, "-m", "pipelines.cli", "replay", demo, *flags, "--out",
             str(tmp_path / out)], cwd=ROOT, capture_output=True, text=True, timeout=600,
            check=False)
        assert done.returncode == 0, done.stderr[-3000:]

    replay("here.jsonl", "--model", str(model))
    broker = Broker(tmp_path).start()
    port = _free_port()
    server = _serve(model, port, tmp_path / "log", replicas=1, mqtt=broker.url)
    try:
        _ready(port)
        for run in ("first", "second"):
            replay(f"{run}.jsonl", "--engine", f"http://127.0.0.1:{port}/")
        predictions = broker.subscribe("socialstream/demo/prediction", count=SHORT_TURNS,
                                       timeout=300)
        replay("edge.jsonl", "--engine", broker.url)
        bridged, _ = predictions.communicate(timeout=330)
    finally:
        _stop(server)
        broker.stop()
    expected = _predictions(tmp_path / "here.jsonl")
    assert len(expected) == SHORT_TURNS
    assert all(e["predictor"] == "fusion+engine" for e in expected)
    assert all(e["addressee"]["scores"] for e in expected), "the engine's scores ride along"
    for run in ("first", "second"):
        assert _predictions(tmp_path / f"{run}.jsonl") == expected, run
    # Through the broker: the edge predicts nothing itself, the bridge answers each turn
    # under the edge run's ids.
    edge = [json.loads(line) for line in (tmp_path / "edge.jsonl").read_text().splitlines()]
    assert not [e for e in edge if e["schema"].startswith("socialstream.prediction/")]
    runs = {e["run"] for e in edge if e["schema"].startswith("socialstream.turn/")}
    events = [json.loads(line.split(" ", 1)[1]) for line in bridged.splitlines()]
    (run,) = runs
    assert [e["id"] for e in events] == [f"demo/{run}/prediction/{k}" for k in range(SHORT_TURNS)]
    assert [_drop_run(e) for e in events] == expected


def _drop_run(event: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in event.items() if k not in ("latency_s", "id", "run")}


def test_replay_with_no_service_at_engine_url_is_one_clear_error(tmp_path: Path) -> None:
    port = _free_port()
    done = subprocess.run(
        [sys.executable, "-m", "pipelines.cli", "replay", str(ROOT / "examples" / "demo.mp4"),
         "--engine", f"http://127.0.0.1:{port}/", "--out", str(tmp_path / "o.jsonl")],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 2
    assert f"--engine http://127.0.0.1:{port}/: no engine service answers there" in done.stderr
    assert "start one with socialstream serve" in done.stderr


def test_serve_without_a_model_is_one_clear_error() -> None:
    done = subprocess.run([sys.executable, "-m", "pipelines.cli", "serve"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 2
    assert "serve needs a model: --model NAME or engine.model in --config" in done.stderr


@pytest.mark.parametrize(("flag", "value"), [
    ("--replicas", "0"), ("--budget-mb", "0"), ("--budget-mb", "nan"),
    ("--log-keep-hours", "inf"), ("--max-sessions", "0"), ("--max-body-mb", "-1"),
    ("--sessions-per-replica", "0")])
def test_serve_refuses_nothing_to_serve_with(flag: str, value: str) -> None:
    """Before Ray starts (`--budget-mb nan` was a traceback from inside it)."""
    done = subprocess.run([sys.executable, "-m", "pipelines.cli", "serve", "--model", "x",
                           flag, value], cwd=ROOT, capture_output=True, text=True,
                          timeout=120, check=False)
    assert done.returncode == 2 and "must be positive numbers" in done.stderr
    assert "Traceback" not in done.stderr


def test_serve_refuses_a_port_in_use_and_names_its_own_flag(tmp_path: Path) -> None:
    """Serve's proxy would share a busy port (SO_REUSEPORT), splitting sessions between two
    services."""
    def serve(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "pipelines.cli", "serve", "--model",
                               "x", "--log-dir", str(tmp_path), *args], cwd=ROOT,
                              capture_output=True, text=True, timeout=120, check=False)

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        done = serve("--http", f"127.0.0.1:{port}")
    assert done.returncode == 2
    assert f"--http 127.0.0.1:{port}: the port is in use" in done.stderr
    done = serve("--http", "nonsense:port")
    assert done.returncode == 2 and "--http nonsense:port: give a port" in done.stderr
    done = serve("--http", "192.0.2.1:8000")  # an address this machine does not have
    assert done.returncode == 2 and "choose an address of this machine" in done.stderr


def test_serve_refuses_fewer_max_replicas_than_replicas() -> None:
    done = subprocess.run([sys.executable, "-m", "pipelines.cli", "serve", "--model", "x",
                           "--replicas", "2", "--max-replicas", "1"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 2 and "--max-replicas 1 is below --replicas 2" in done.stderr


def test_replicas_scale_with_load_between_replicas_and_max_replicas() -> None:
    from stream.serving.service import deployment

    def settings(**scale: int) -> Any:
        app = deployment({"model": "x"}, 2**20, "log", **scale)
        return app._bound_deployment._deployment_config

    fixed = settings(replicas=2)
    assert fixed.num_replicas == 2 and fixed.autoscaling_config is None
    scaled = settings(replicas=1, max_replicas=4).autoscaling_config
    assert (scaled.min_replicas, scaled.initial_replicas, scaled.max_replicas) == (1, 1, 4)
    # A replica answers one turn at a time: more than one waiting asks for another.
    assert scaled.target_ongoing_requests == 1


def test_engine_through_one_broker_and_mqtt_to_another_is_one_clear_error(
        tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "pipelines.cli", "replay", str(ROOT / "examples" / "demo.mp4"),
         "--engine", "mqtt://127.0.0.1:1", "--mqtt", "mqtt://127.0.0.1:2"],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 2
    assert "--engine mqtt://127.0.0.1:1 and --mqtt mqtt://127.0.0.1:2" in done.stderr
