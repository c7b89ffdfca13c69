"""The MQTT bridge of `socialstream serve --mqtt URL`: turns in from the broker, predictions
out to it, so that edge machines run perception only.

An edge replay or live session with `--engine mqtt://broker` publishes its turn events
(`<prefix>/<session>/turn`) with an `engine` part: the turn as the engine service takes
it (`turn_to_json`, the key frames as PNG) and the edge's player names. The bridge
answers each turn as the edge would have with `--model` in process: the engine's scores
come from the Ray Serve deployment (through its HTTP route, `RemoteEngineStage`, with
the same retries), the fusion predictor runs here on the conversation so far, and the
prediction event goes to `<prefix>/<session>/prediction` with the edge run's id.

A conversation is one run of a session (`<session>/<run>`), as in process: a second
replay of the same file starts a fresh one. Turns of one conversation are answered in
order, conversations side by side. The bridge's subscription is a persistent MQTT
session (QoS 1, a client id of its service: its prefix, turn log and engine URL), so
turns published while it is down wait at the broker, and another service's bridge on the
same broker does not take its place. A turn is acknowledged to the broker only once its
prediction is published (or once it is known to need none), so a turn the bridge had
taken but not answered when it died comes again to the next bridge. A bridge that
restarts mid-conversation takes the conversation's words again from the service's turn
log, up to the first turn it gets (so does a conversation that was idle for `idle_s` and
closed here); the service answers a turn it took before as it did then (`SessionPool`).
A turn delivered twice is answered once. A turn that cannot be answered at all (the
service unreachable, a damaged turn log) is one error line and is let go, so that it
holds no other turn back; so is anything that is not a turn (too deep, not finite, a key
frame that is no PNG, names that are not names): an error about one message never stops
the bridge, nor any conversation, and a task that dies anyway says why in the log.
Predictions wait in memory while the broker is away and go out, in order, when it is
back. A turn event without an `engine` part (an edge that was not started with `--engine
mqtt://...`) is skipped with one warning per session.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import math
import os
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import quote

import aiomqtt

from stream.broker import MqttConfig, broker_address, mqtt_client
from stream.engine.config import PredictorConfig
from stream.events import dumps, prediction_event
from stream.frames import PlayerView, Turn
from stream.serving.remote import RemoteEngineStage
from stream.serving.service import TOKEN_ENV, token_scope
from stream.serving.turnlog import TurnLog
from stream.serving.wire import (
    TurnWire,
    ViewWire,
    count_elements,
    decode_turn,
    parse_turn,
    turn_from_json,
    turn_to_json,
)
from stream.tasks.stage import SocialStage

log = logging.getLogger(__name__)
PREDICTORS = ("fusion", "cues", "engine")
"""What an edge may ask the bridge for (`predictions.predictor`; `none` sends no turns)."""
Ack = Callable[[], None]
"""Acknowledges a received turn to the broker (nothing once that connection is gone: the
broker sends the turn again on the next one)."""


def engine_part(turn: Turn, names: dict[str, str] | None,
                predictor: str = "fusion") -> dict[str, Any]:
    """What a turn event carries for the bridge: the turn as the engine takes it (give it
    only the key frames the engine takes), the edge's player names and which predictor
    answers (`predictions.predictor`)."""
    return {"turn": turn_to_json(turn), "names": dict(names or {}), "predictor": predictor}


def bridged_turns(event: dict[str, Any], wire: TurnWire | None = None
                  ) -> tuple[Turn, Turn]:
    """The engine's turn (its key frames) and the fusion predictor's (every key frame's
    players, as the turn event lists them), from a turn event with an `engine` part
    (`wire`: its engine turn, already checked); ValueError, KeyError or TypeError when it
    is not one."""
    taken = decode_turn(wire) if wire is not None else turn_from_json(event["engine"]["turn"])
    views = tuple(
        tuple(PlayerView(**{**ViewWire.model_validate(
            {"player": p["id"], "track": -1, "box": p["box"], "detected": p["detected"],
             "yaw": p["yaw"], "mouth": p["mouth"], "share": 0.0,
             "p_speaking": p["p_speaking"]}).model_dump(), "box": tuple(p["box"])})
              for p in frame["players"])
        for frame in event["keyframes"])
    known_at = float(event["emitted_at"])
    if not math.isfinite(known_at):
        raise ValueError(f"emitted_at {known_at} is not a time")
    return taken, replace(taken, keyframes=(), views=views, known_at=known_at)


def _names(part: dict[str, Any]) -> dict[str, str] | None:
    names = part.get("names") or None
    if names is not None and not (isinstance(names, dict) and all(
            isinstance(k, str) and isinstance(v, str) for k, v in names.items())):
        raise ValueError("names: not an object of player ids to names")
    return names


@dataclass
class _Conversation:
    stage: SocialStage
    turns: asyncio.Queue[tuple[TurnWire, dict[str, Any], Ack] | None] = field(
        default_factory=asyncio.Queue)
    """(its engine turn, checked; the turn event; acknowledgement), in the order
    received."""
    last: int | None = None
    """The last turn index answered (a turn the broker delivers again is not)."""
    task: asyncio.Task[None] | None = None


class MqttBridge:
    def __init__(self, mqtt: MqttConfig, engine: PredictorConfig, turn_log: TurnLog, *,
                 idle_s: float = 600.0) -> None:
        """`idle_s`: a conversation without a turn for this long is closed (its state here
        goes; a later turn takes it again from the turn log)."""
        assert mqtt.url is not None and engine.url is not None
        self.mqtt, self.engine, self.turn_log, self.idle_s = mqtt, engine, turn_log, idle_s
        self.host, self.port, _, _ = broker_address(mqtt.url)
        token = engine.token or os.environ.get(TOKEN_ENV)
        self.scope = token_scope(token) if token else ""
        """Where the service keeps the sessions of the bridge's token (its turn log)."""
        service = f"{turn_log.folder.resolve()}|{engine.url}".encode()
        self.identifier = (f"socialstream-serve-{quote(mqtt.prefix, safe='')}-"
                           f"{hashlib.sha256(service).hexdigest()[:8]}")
        self.conversations: dict[str, _Conversation] = {}
        self.outbox: deque[tuple[str | None, bytes, Ack]] = deque()
        """What goes to the broker, in order: predictions (topic, payload) and the
        acknowledgement of the turn each answers (topic None: only the acknowledgement)."""
        self._client: aiomqtt.Client | None = None
        self._sent = asyncio.Event()
        self._warned: set[str] = set()

    async def run(self, stop: asyncio.Event) -> None:
        """Serve until `stop` is set; then wait (at most mqtt.drain_timeout_s) for what is
        being answered and sent. A turn still unanswered then stays unacknowledged: the
        broker gives it to the next bridge."""
        connection = asyncio.create_task(self._connect_forever())
        connection.add_done_callback(_said)
        await stop.wait()
        workers = [c.task for c in self.conversations.values() if c.task is not None]
        for conversation in self.conversations.values():
            conversation.turns.put_nowait(None)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.mqtt.drain_timeout_s):
                await asyncio.gather(*workers, return_exceptions=True)
                while self.outbox:
                    self._sent.clear()
                    await self._sent.wait()
        self._client = None  # no acknowledgement from here on
        for task in [*workers, connection]:
            task.cancel()
        await asyncio.gather(*workers, connection, return_exceptions=True)
        for conversation in self.conversations.values():
            await conversation.stage.stop()
        unsent = sum(1 for topic, _, _ in self.outbox if topic is not None)
        if unsent:
            log.warning("MQTT broker %s:%d: %d predictions not sent before stopping; their "
                        "turns stay at the broker for the next bridge", self.host, self.port,
                        unsent)

    async def _connect_forever(self) -> None:
        delay, outage = self.mqtt.reconnect_min_s, False
        topic = f"{self.mqtt.prefix}/+/turn"
        while True:
            client = mqtt_client(self.mqtt, identifier=self.identifier, clean_session=False,
                                 keepalive=5)
            # Before connecting: a persistent session's waiting turns come at once. aiomqtt
            # has no option for it, so it is set on the paho client underneath.
            client._client.manual_ack_set(True)
            try:
                async with client:
                    self._client = client
                    if outage:
                        log.warning("MQTT broker %s:%d is back", self.host, self.port)
                    delay, outage = self.mqtt.reconnect_min_s, False
                    await client.subscribe(topic, qos=1)
                    log.info("bridge: answering turns from %s", topic)
                    # Both end the connection: a publish that failed (the sender) as much as
                    # a lost connection (the receiver); it is then made again.
                    halves = {asyncio.create_task(self._send(client)),
                              asyncio.create_task(self._receive_all(client))}
                    try:
                        done, _ = await asyncio.wait(halves,
                                                     return_when=asyncio.FIRST_COMPLETED)
                    finally:
                        for half in halves:
                            half.cancel()
                        await asyncio.gather(*halves, return_exceptions=True)
                    for half in done:
                        half.result()
            except aiomqtt.MqttError as e:
                if not outage:
                    log.warning("MQTT broker %s:%d unreachable (%s); retrying", self.host,
                                self.port, e)
                outage = True
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.mqtt.reconnect_max_s)

    async def _receive_all(self, client: aiomqtt.Client) -> None:
        async for message in client.messages:
            ack = self._acknowledger(client, message.mid)
            try:
                self._receive(str(message.topic), bytes(message.payload), ack)
            except Exception as e:  # one bad message stops nothing
                log.error("%s: not answered (%s: %s); skipped", message.topic,
                          type(e).__name__, e)
                self._done(ack)
        raise aiomqtt.MqttError("the broker ended the connection")

    def _acknowledger(self, client: aiomqtt.Client, mid: int) -> Ack:
        def ack() -> None:
            if self._client is client:  # a message id belongs to its connection
                client._client.ack(mid, 1)
        return ack

    async def _send(self, client: aiomqtt.Client) -> None:
        while True:
            while self.outbox:
                topic, payload, ack = self.outbox[0]
                if topic is not None:
                    await client.publish(topic, payload, qos=1, timeout=10)
                ack()
                self.outbox.popleft()
                self._sent.set()
            self._sent.clear()
            await self._sent.wait()

    def _done(self, ack: Ack, topic: str | None = None, payload: bytes = b"") -> None:
        """The turn is answered: the acknowledgement goes after what was queued before."""
        self.outbox.append((topic, payload, ack))
        self._sent.set()

    def _receive(self, topic: str, payload: bytes, ack: Ack) -> None:
        session = topic.split("/")[-2]
        try:
            count_elements(payload, "the turn event")
            event = json.loads(payload)
            if "engine" not in event:
                if session not in self._warned:
                    self._warned.add(session)
                    log.warning("session %r: its turn events carry no engine part; start the "
                                "edge with --engine %s to have them answered here", session,
                                self.mqtt.url)
                self._done(ack)
                return
            run = str(event["run"])
            # Checked here, decoded (the pictures) off the event loop by its conversation.
            wire = parse_turn(event["engine"]["turn"], self.engine.frames_per_turn)
            names = _names(event["engine"])
        except (ValueError, KeyError, TypeError, RecursionError) as e:
            log.warning("%s: not a turn event (%s); skipped", topic, e)
            self._done(ack)
            return
        key = f"{session}/{run}"
        conversation = self.conversations.get(key)
        if conversation is not None and conversation.task is not None \
                and conversation.task.done():  # died (and said why): start it again
            conversation = None
        if conversation is None:
            part = event["engine"]
            predictor = part.get("predictor", "fusion")
            if predictor not in PREDICTORS:
                log.warning("%s: predictor %r is none of %s; skipped", topic, predictor,
                            ", ".join(PREDICTORS))
                self._done(ack)
                return
            stage = SocialStage(predictor, names, RemoteEngineStage(self.engine, key, names))
            conversation = self.conversations[key] = _Conversation(stage)
            conversation.task = asyncio.create_task(
                self._answer(session, run, key, conversation))
            conversation.task.add_done_callback(_said)
        conversation.turns.put_nowait((wire, event, ack))

    async def _answer(self, session: str, run: str, key: str,
                      conversation: _Conversation) -> None:
        stage = conversation.stage
        assert stage.engine is not None
        started = False
        while True:
            try:
                async with asyncio.timeout(self.idle_s):
                    turns = await conversation.turns.get()
            except TimeoutError:
                if conversation.turns.empty():  # nothing arrived meanwhile: close it
                    del self.conversations[key]
                    await stage.stop()
                    return
                continue
            if turns is None:
                return
            wire, event, ack = turns
            if conversation.last is not None and wire.index <= conversation.last:
                self._done(ack)  # delivered again: answered once
                continue
            try:
                taken, seen = await asyncio.to_thread(bridged_turns, event, wire)
            except ValueError as e:  # a key frame that is not a PNG, or too large
                log.warning("%s: not a turn event (%s); skipped", key, e)
                self._done(ack)
                continue
            try:
                if not started:
                    await stage.engine.start()
                    started = True
                if conversation.last is None:
                    # A restarted bridge, or a conversation closed when idle: the words of
                    # the turns before this one, as the service took them.
                    for old in self.turn_log.turns(self.scope + key):
                        if old.index < taken.index:
                            stage.predict(old)
                prediction = await stage.respond(taken, seen)
            except Exception as e:
                # Its turns unacknowledged, one stuck conversation would soon hold every
                # turn back (the broker sends a client at most 20 unacknowledged).
                log.error("%s: turn %d not answered (%s: %s)", key, taken.index,
                          type(e).__name__, e)
                prediction = None
            conversation.last = taken.index
            if prediction is None:  # not answered, or the engine predictor got no answer
                self._done(ack)
                continue
            self._done(ack, f"{self.mqtt.prefix}/{session}/prediction",
                       dumps(prediction_event(prediction, session, run)).encode())


def _said(task: asyncio.Task[None]) -> None:
    """A task of the bridge that ended with an error says so (else it would die silently)."""
    if not task.cancelled() and task.exception() is not None:
        error = task.exception()
        log.error("bridge: a task stopped (%s: %s)", type(error).__name__, error,
                  exc_info=error)
