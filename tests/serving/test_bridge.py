"""The MQTT bridge of `socialstream serve --mqtt` against a real Mosquitto broker and the
engine service's HTTP protocol (here without Ray: `EngineService` behind aiohttp; the Ray
deployment is tested in test_serve.py)."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path
from typing import Any

import aiomqtt
import jsonschema
import pytest
from aiohttp import web

from stream.broker import MqttConfig
from stream.engine.config import PredictorConfig
from stream.engine.predict import key_frames
from stream.events import dumps, turn_event, turn_schema
from stream.frames import Turn
from stream.serving.bridge import MqttBridge, bridged_turns, engine_part
from stream.serving.service import HEADER, EngineService
from stream.serving.turnlog import TurnLog
from tests.broker import Broker
from tests.endpoint import serving
from tests.tiny import LINES, SPEAKERS, saved_model, scene_turn

NAMES = {"P2": "Ben"}


def _event(turn: Turn, session: str, run: str, frames: int = 2,
           predictor: str = "fusion") -> dict[str, Any]:
    event = turn_event(turn, session, NAMES, run)
    event["engine"] = engine_part(key_frames(turn, frames), NAMES, predictor)
    return event


def test_a_turn_event_carries_what_the_bridge_answers_from() -> None:
    turn = scene_turn(1, "P2", LINES[1])
    event = json.loads(dumps(_event(turn, "s", "r", frames=1)))
    jsonschema.validate(event, turn_schema())
    taken, seen = bridged_turns(event)
    # The engine's turn: its one key frame, pixel for pixel, and the vote as it was.
    assert len(taken.keyframes) == 1 and len(turn.keyframes) == 2
    assert (taken.keyframes[0].image == turn.keyframes[0].image).all()
    assert taken.vote == turn.vote and taken.text == turn.text
    # The fusion predictor's: every key frame's players, as in process.
    assert [[(v.player, v.yaw, v.p_speaking) for v in views] for views in seen.views] == \
        [[(v.player, v.yaw, v.p_speaking) for v in views] for views in turn.views]
    assert seen.keyframes == () and seen.known_at == event["emitted_at"]
    assert event["engine"]["names"] == NAMES


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    running = Broker(tmp_path).start()
    yield running
    running.stop()


@contextlib.asynccontextmanager
async def _engine(model: Path, log_dir: Path, gate: asyncio.Event) -> AsyncIterator[str]:
    """The engine service (its requests answered as its Ray deployment answers them) on a
    free port; yields its URL. A turn waits for the gate to be open before the service
    takes it."""
    service = EngineService({"model": str(model)}, 2**30, str(log_dir))

    async def answer(request: web.Request) -> web.Response:
        session = request.headers.get(HEADER)
        scope = service.session(session, request.headers.get("Authorization"))
        if isinstance(scope, tuple):
            return web.json_response(scope[1], status=scope[0])
        body = await request.read()
        await gate.wait()
        status, event = await service.answer(session or "", scope, body)
        return web.json_response(event, status=status)

    async with serving(answer) as url:
        yield url


@contextlib.asynccontextmanager
async def _served(broker: Broker, tmp_path: Path, gate: asyncio.Event | None = None
                  ) -> AsyncIterator[tuple[MqttConfig, PredictorConfig, aiomqtt.Client]]:
    """The broker's settings, the engine service's and a client watching predictions."""
    model = saved_model(tmp_path / "model")
    mqtt = MqttConfig(url=broker.url, reconnect_min_s=0.1, drain_timeout_s=10)
    if gate is None:
        gate = asyncio.Event()
        gate.set()
    async with _engine(model, tmp_path / "log", gate) as url, \
            aiomqtt.Client("127.0.0.1", broker.port) as watcher:
        await watcher.subscribe("socialstream/+/prediction", qos=1)
        yield mqtt, PredictorConfig(url=url), watcher


def _turns(count: int = len(LINES)) -> list[Turn]:
    return [scene_turn(k, SPEAKERS[k], LINES[k]) for k in range(count)]


async def _publish(url: str, events: list[dict[str, Any]]) -> None:
    port = int(url.rsplit(":", 1)[1])
    async with aiomqtt.Client("127.0.0.1", port) as client:
        for event in events:
            await client.publish(f"socialstream/{event['session']}/turn", dumps(event), qos=1)


async def _collect(client: aiomqtt.Client, count: int) -> list[dict[str, Any]]:
    got: list[dict[str, Any]] = []
    async with asyncio.timeout(120):
        async for message in client.messages:
            got.append(json.loads(bytes(message.payload)))
            if len(got) == count:
                return got
    return got


@contextlib.asynccontextmanager
async def _running(bridge: MqttBridge, url: str, events: Sequence[dict[str, Any]] = ()
                   ) -> AsyncIterator[None]:
    """The bridge serving, subscribed, with `events` published to it; stopped at the end
    (what it is answering drains)."""
    stop = asyncio.Event()
    running = asyncio.create_task(bridge.run(stop))
    await asyncio.sleep(0.5)  # subscribed
    await _publish(url, list(events))
    try:
        yield
    finally:
        stop.set()
        await running


ANSWER = ("turn", "addressee", "pronouns", "mentioned")


def _answers(events: list[dict[str, Any]], keys: Sequence[str] = ANSWER) -> list[dict]:
    """What a prediction event answers, without its ids, run and latency."""
    return [{k: e[k] for k in keys} for e in events]


async def test_a_restarted_bridge_answers_the_turns_sent_while_it_was_down_as_if_never_down(
        broker: Broker, tmp_path: Path) -> None:
    """Turns 0-1 answered, the bridge stopped, turns 2-3 published meanwhile (they wait at
    the broker), a new bridge started: it answers 2-3 with the conversation so far taken
    from the turn log, the same answers as a conversation that never paused; a turn the
    broker delivers again is not answered twice."""
    turns = _turns()
    async with _served(broker, tmp_path) as (mqtt, engine, watcher):
        async def bridge_until(count: int, events: list[dict[str, Any]]) -> list[dict]:
            bridge = MqttBridge(mqtt, engine, TurnLog(tmp_path / "log"))
            async with _running(bridge, broker.url, events):
                return await _collect(watcher, count)

        whole = await bridge_until(4, [_event(t, "whole", "r1") for t in turns])
        first = await bridge_until(2, [_event(t, "cut", "r1") for t in turns[:2]])
        await _publish(broker.url, [_event(t, "cut", "r1") for t in turns[2:]])
        # Turn 3 again (a redelivery): answered once.
        rest = await bridge_until(2, [_event(turns[3], "cut", "r1")])
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(1.5):
                await anext(watcher.messages)

    keys = (*ANSWER, "speaker", "predictor")
    assert [e["id"] for e in first + rest] == [f"cut/r1/prediction/{k}" for k in range(4)]
    assert _answers(first + rest, keys) == _answers(whole, keys)
    assert all(e["predictor"] == "fusion+engine" and e["addressee"]["scores"] for e in whole)


async def test_a_turn_the_bridge_had_not_answered_when_it_stopped_goes_to_the_next_one(
        broker: Broker, tmp_path: Path) -> None:
    """Turn 2 reaches the bridge, the engine holds it, the bridge stops before it has an
    answer (its drain time is up): the broker gives turn 2 again to the next bridge,
    which answers it and turn 3 as a conversation that never paused. The service took
    turn 2 from the first bridge's request as well; it is in the conversation once."""
    turns = _turns()
    gate = asyncio.Event()
    gate.set()
    async with _served(broker, tmp_path, gate) as (mqtt, engine, watcher):
        def bridge() -> MqttBridge:
            brief = mqtt.model_copy(update={"drain_timeout_s": 0.5})
            return MqttBridge(brief, engine, TurnLog(tmp_path / "log"))

        async with _running(bridge(), broker.url, [_event(t, "whole", "r1") for t in turns]):
            whole = await _collect(watcher, 4)
        async with _running(bridge(), broker.url,
                            [_event(t, "cut", "r1") for t in turns[:2]]):
            first = await _collect(watcher, 2)
            gate.clear()
            await _publish(broker.url, [_event(turns[2], "cut", "r1")])
            await asyncio.sleep(0.5)  # at the engine, which holds it
        await _publish(broker.url, [_event(turns[3], "cut", "r1")])
        gate.set()
        async with _running(bridge(), broker.url):
            rest = await _collect(watcher, 2)

    assert [e["turn"] for e in first + rest] == [0, 1, 2, 3]
    assert _answers(first + rest) == _answers(whole)
    assert [t.index for t in TurnLog(tmp_path / "log").turns("cut/r1")] == [0, 1, 2, 3]


async def test_a_turn_that_cannot_be_answered_holds_no_other_back(
        broker: Broker, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The bridge's turn log of one conversation is damaged: its first turn cannot be
    answered (one error line) and is let go, the conversation goes on, and other
    conversations are answered. Were it kept unacknowledged with the rest of its turns,
    the broker (at most 20 unacknowledged per client) would send nothing more."""
    damaged = tmp_path / "bridge-log"
    damaged.mkdir()
    (damaged / "bad%2Fr1.turns.jsonl").write_text("{broken\n{broken\n")
    turns = [scene_turn(k, SPEAKERS[k % 4], LINES[k % 4]) for k in range(25)]
    async with _served(broker, tmp_path) as (mqtt, engine, watcher):
        events = [_event(t, "bad", "r1") for t in turns] + [_event(turns[0], "good", "r1")]
        async with _running(MqttBridge(mqtt, engine, TurnLog(damaged)), broker.url, events):
            got = await _collect(watcher, 25)
    assert sorted((e["session"], e["turn"]) for e in got) == sorted(
        [("bad", k) for k in range(1, 25)] + [("good", 0)])
    assert "bad/r1: turn 0 not answered (TurnLogError" in caplog.text


async def test_an_idle_conversation_is_closed_and_taken_again_from_the_log(
        broker: Broker, tmp_path: Path) -> None:
    turns = _turns()
    async with _served(broker, tmp_path) as (mqtt, engine, watcher):
        bridge = MqttBridge(mqtt, engine, TurnLog(tmp_path / "log"), idle_s=0.5)
        async with _running(bridge, broker.url, [_event(t, "whole", "r1") for t in turns]):
            whole = await _collect(watcher, 4)
            await _publish(broker.url, [_event(t, "paused", "r1") for t in turns[:2]])
            paused = await _collect(watcher, 2)
            await asyncio.sleep(1.5)
            assert bridge.conversations == {}, "both conversations were closed when idle"
            await _publish(broker.url, [_event(t, "paused", "r1") for t in turns[2:]])
            paused += await _collect(watcher, 2)

    assert _answers(paused) == _answers(whole)


@pytest.mark.parametrize(("predictor", "expected"), [("engine", "engine"),
                                                     ("cues", "cues+engine")])
async def test_the_bridge_answers_with_the_predictor_the_edge_asked_for(
        broker: Broker, tmp_path: Path, predictor: str, expected: str) -> None:
    turns = _turns(2)
    async with _served(broker, tmp_path) as (mqtt, engine, watcher):
        bridge = MqttBridge(mqtt, engine, TurnLog(tmp_path / "log"))
        events = [_event(t, "s", "r", predictor=predictor) for t in turns]
        async with _running(bridge, broker.url, events):
            got = await _collect(watcher, 2)
    assert [e["predictor"] for e in got] == [expected] * 2
    for event in got:  # the engine's answer is its best score; the cues' is their own
        scores = event["addressee"]["scores"]
        best = max(scores, key=scores.__getitem__)
        probabilities = event["addressee"]["probabilities"]
        assert event["addressee"]["answer"] == (
            best if predictor == "engine" else max(probabilities, key=probabilities.__getitem__))


def _malformed() -> list[tuple[str, bytes]]:
    """Messages that once killed the bridge (and killed it again on every restart, the
    broker sending them again), or one conversation's task before it acknowledged."""
    def event(**engine_turn: Any) -> dict[str, Any]:
        good = _event(scene_turn(0, "P1", LINES[0]), "bad", "r1")
        good["engine"]["turn"].update(engine_turn)
        return good

    names = _event(scene_turn(0, "P1", LINES[0]), "bad", "r1")
    names["engine"]["names"] = 5
    png = event()
    png["engine"]["turn"]["frames"][0]["png"] = ""
    raw = [b"[" * 100_000, json.dumps(event(index=float("inf"))).encode(),
           dumps(png).encode(), dumps(names).encode()]
    # More turns with NaN in them than the broker lets a client hold unacknowledged (20).
    raw += [json.dumps(event(index=k, start=float("nan"))).encode() for k in range(25)]
    return [("socialstream/bad/turn", payload) for payload in raw]


async def test_malformed_turns_are_skipped_acknowledged_and_stop_nothing(
        broker: Broker, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Each malformed turn is one error line and is acknowledged; the conversations after
    them are answered, and a restarted bridge is not given them again."""
    async with _served(broker, tmp_path) as (mqtt, engine, watcher):
        async with _running(MqttBridge(mqtt, engine, TurnLog(tmp_path / "log")), broker.url):
            async with aiomqtt.Client("127.0.0.1", broker.port) as client:
                for topic, payload in _malformed():
                    await client.publish(topic, payload, qos=1)
            await _publish(broker.url, [_event(t, "good", "r1") for t in _turns(2)])
            got = await _collect(watcher, 2)
        skipped = caplog.text.count("not a turn event")
        caplog.clear()
        async with _running(MqttBridge(mqtt, engine, TurnLog(tmp_path / "log")), broker.url,
                            [_event(_turns(3)[2], "good", "r1")]):
            got += await _collect(watcher, 1)
    assert [(e["session"], e["turn"]) for e in got] == [("good", 0), ("good", 1), ("good", 2)]
    assert skipped == len(_malformed())
    assert "not a turn event" not in caplog.text, "the broker sent skipped turns again"


async def test_bridges_of_different_services_and_edges_of_different_runs_have_their_own_ids(
        tmp_path: Path) -> None:
    """A fixed client id let two bridges, or two edges replaying files of the same name,
    knock each other off the broker; one service's bridge keeps its id across restarts
    (its persistent session holds the turns sent while it is down)."""
    from stream.sinks.mqtt import MqttSink

    mqtt = MqttConfig(url="mqtt://127.0.0.1:1883")

    def bridge(log: str, url: str = "http://127.0.0.1:8000/") -> str:
        return MqttBridge(mqtt, PredictorConfig(url=url), TurnLog(tmp_path / log)).identifier

    assert bridge("a") == bridge("a")
    assert len({bridge("a"), bridge("b"), bridge("a", "http://127.0.0.1:8001/")}) == 3
    edges = [MqttSink(mqtt, "clip", run=run)._connect()._client._client_id for run in "12"]
    assert edges[0] != edges[1]


async def test_a_publish_that_fails_reconnects_and_loses_no_prediction(
        broker: Broker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A publish that times out (no PUBACK in 10 s) killed the bridge's sender silently:
    the connection stayed up, and no prediction was published or turn acknowledged
    again. Now the connection is made again and the predictions go out in order."""
    real = aiomqtt.Client.publish
    failed: list[str] = []

    async def flaky(self: aiomqtt.Client, topic: str, *args: Any, **kwargs: Any) -> None:
        if str(topic).endswith("/prediction") and not failed:
            failed.append(str(topic))
            raise aiomqtt.MqttError("Operation timed out")
        await real(self, topic, *args, **kwargs)

    monkeypatch.setattr(aiomqtt.Client, "publish", flaky)
    async with _served(broker, tmp_path) as (mqtt, engine, watcher):
        bridge = MqttBridge(mqtt, engine, TurnLog(tmp_path / "log"))
        async with _running(bridge, broker.url, [_event(t, "good", "r1") for t in _turns(3)]):
            got = await _collect(watcher, 3)
    assert failed and [e["turn"] for e in got] == [0, 1, 2]
