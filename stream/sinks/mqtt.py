"""Events to an MQTT broker (aiomqtt), through an on-disk spool so none is lost.

Topics, under `<prefix>/<session>/`:
  status      retained; `online` on connect, `offline` on clean exit and as the Last Will
  turn        turn events, QoS 1 (with an `engine` part for `socialstream serve --mqtt`
              when the engine is reached through the broker)
  speaker     per-frame active speaker, QoS 0, rate-limited, never spooled

Turn events go to the spool first and leave it only when the broker has
acknowledged them (QoS 1 PUBACK). A background task connects, drains the
spool in order and reconnects with exponential backoff when the broker is
down or goes away; the pipeline never waits for the broker.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import quote

import aiomqtt

from stream.broker import MqttConfig, broker_address, mqtt_client
from stream.engine.config import PredictorConfig
from stream.engine.predict import key_frames
from stream.errors import ConfigError
from stream.events import dumps, prediction_event, speaker_event, turn_event
from stream.frames import Item, PerceivedFrame, Prediction, Turn
from stream.metrics import KEPT
from stream.runtime import Stage
from stream.serving.bridge import engine_part
from stream.sinks.spool import Spool

log = logging.getLogger(__name__)


class MqttSink(Stage):
    name = "mqtt"
    inputs = (Turn, PerceivedFrame, Prediction)

    def __init__(self, config: MqttConfig, session: str,
                 names: dict[str, str] | None = None, run: str = "0",
                 engine: PredictorConfig | None = None, predictor: str = "fusion") -> None:
        """`engine`: the engine is `socialstream serve --mqtt`'s, so turn events carry what
        it needs (`engine_part`: the key frames it takes, as PNG, the names, and the
        `predictor` that is to answer)."""
        if config.url is None:
            raise ConfigError("mqtt.url is not set")
        self.config, self.session, self.names, self.run = config, session, names or {}, run
        self.engine, self.predictor = engine, predictor
        self.host, self.port, self.user, self.tls = broker_address(config.url)
        self.topic = f"{config.prefix}/{session}"
        self.spool: Spool | None = None
        self.published = 0
        self._wakeup = asyncio.Event()
        self._hurry = asyncio.Event()
        self._closing = False
        self._client: aiomqtt.Client | None = None
        self._task: asyncio.Task[None] | None = None
        self._last_speaker = float("-inf")
        self._queued_at: dict[int, float] = {}
        """Spool id -> when it was queued (monotonic seconds)."""
        self.latencies: deque[float] = deque(maxlen=KEPT)
        """Seconds from an event entering the spool to the broker's acknowledgement (the
        most recent `KEPT`)."""

    async def start(self) -> None:
        self.spool = Spool(spool_path(self.config, self.session), self.config.spool_max)
        if len(self.spool):
            log.info("%d undelivered events from an earlier run go first", len(self.spool))
        self._task = asyncio.create_task(self._publish_forever(), name="mqtt-publisher")

    async def process(self, item: Item) -> Sequence[Item]:
        assert self.spool is not None, "start() opens the spool"
        if isinstance(item, Turn | Prediction):
            if isinstance(item, Turn):
                kind, event = "turn", turn_event(item, self.session, self.names, self.run)
                if self.engine is not None:
                    event["engine"] = engine_part(
                        key_frames(item, self.engine.frames_per_turn), self.names,
                        self.predictor)
            else:
                kind, event = "prediction", prediction_event(item, self.session, self.run)
            queued = self.spool.append(f"{self.topic}/{kind}", dumps(event).encode(), qos=1)
            self._queued_at[queued] = time.monotonic()
            self._wakeup.set()
        elif (isinstance(item, PerceivedFrame) and self._client is not None
              and item.pts - self._last_speaker >= 1 / self.config.speaker_rate_hz):
            self._last_speaker = item.pts
            payload = dumps(speaker_event(item, self.session)).encode()
            with contextlib.suppress(aiomqtt.MqttError):
                await self._client.publish(f"{self.topic}/speaker", payload, qos=0)
        return ()

    def hurry(self) -> None:
        self._hurry.set()

    async def stop(self) -> None:
        self._closing = True
        self._wakeup.set()
        try:
            if self._task is not None:
                await self._drain_or_give_up()
        finally:
            self._close_spool()

    async def _drain_or_give_up(self) -> None:
        """The drain ends when the spool is empty, at the timeout, or when hurried."""
        assert self._task is not None
        hurried = asyncio.ensure_future(self._hurry.wait())
        try:
            await asyncio.wait({self._task, hurried}, timeout=self.config.drain_timeout_s,
                               return_when=asyncio.FIRST_COMPLETED)
        finally:
            hurried.cancel()
        task, self._task = self._task, None
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        elif not task.cancelled() and task.exception() is not None:
            raise task.exception()  # type: ignore[misc]

    def _close_spool(self) -> None:
        if self.spool is not None:
            left = len(self.spool)
            if left:
                log.warning("MQTT broker %s:%d not reached in time: %d events kept in %s; the "
                            "next run with session %r delivers them", self.host, self.port,
                            left, self.spool.path, self.session)
            self.spool.close()
            self.spool = None

    async def _publish_forever(self) -> None:
        delay = self.config.reconnect_min_s
        outage = False
        while True:
            try:
                async with self._connect() as client:
                    if outage:
                        log.warning("MQTT broker %s:%d is back", self.host, self.port)
                    outage, delay = False, self.config.reconnect_min_s
                    await client.publish(f"{self.topic}/status", b"online", qos=1, retain=True)
                    self._client = client
                    await self._drain(client)
                    self._client = None
                    await client.publish(f"{self.topic}/status", b"offline", qos=1, retain=True)
                    return
            except aiomqtt.MqttError as exc:
                self._client = None
                if not outage:
                    log.warning("MQTT broker %s:%d unreachable (%s); spooling events and "
                                "retrying", self.host, self.port, exc)
                outage = True
                if self._closing and not self.config.drain_timeout_s:
                    return
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.config.reconnect_max_s)

    async def _drain(self, client: aiomqtt.Client) -> None:
        assert self.spool is not None
        while True:
            batch = self.spool.peek(100)
            if not batch:
                if self._closing:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            for message in batch:
                await client.publish(message.topic, message.payload, qos=message.qos,
                                     retain=message.retain, timeout=10)
                self.spool.ack(message.id)
                self.published += 1
                queued = self._queued_at.pop(message.id, None)
                if queued is not None:  # None: left over from an earlier run
                    self.latencies.append(time.monotonic() - queued)

    def _connect(self) -> aiomqtt.Client:
        return mqtt_client(
            self.config, identifier=f"socialstream-{quote(self.session, safe='')}-{self.run}",
            will=aiomqtt.Will(f"{self.topic}/status", b"offline", qos=1, retain=True),
            keepalive=5)


def spool_path(config: MqttConfig, session: str) -> Path:
    """One spool file per session; the name quotes the id, so two ids never share a file
    (a_b and a b used to)."""
    folder = config.spool_dir or Path.home() / ".cache" / "socialstream" / "spool"
    return folder / f"{quote(session, safe='')}.sqlite"
