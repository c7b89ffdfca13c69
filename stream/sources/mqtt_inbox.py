"""Inputs over MQTT for a live session: transcript lines and control commands.

`<prefix>/<session>/transcript/in` takes lines from any external recognizer,
as JSON `{"start": s, "end": s, "text": "...", "speaker": "..."}` in session
seconds (the times of our own events). `<prefix>/<session>/control` takes
`stop` (drain and end the session) and `reset` (forget players, tracks and
pending turns).

Lines are released in media-time order like a sidecar's; the inbox sends
watermarks `latency_s` behind the live clock, so the turn stage never waits
longer than that for words. A line that arrives later than that still counts:
it is known from the moment it arrived.

A bad message (not JSON, too large, too deeply nested, wrong fields) is one
warning and is counted; it never ends the inbox. A broker drops messages
when a client's queue overflows (Mosquitto: `max_queued_messages`, 1000 by
default), and nothing tells the client: publishers that number their lines
(`"seq": 1, 2, ...`) let the inbox count what never arrived.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiomqtt

from stream.broker import MqttConfig, broker_address, mqtt_client
from stream.frames import Item, TranscriptLine, Watermark
from stream.runtime import Source
from stream.transcript.readers import is_seconds

log = logging.getLogger(__name__)

TICK_S = 0.1
MAX_PAYLOAD = 64 * 1024
"""Bytes; a transcript line is a sentence, not a document."""


class MqttInbox(Source):
    name = "inbox"

    def __init__(self, config: MqttConfig, session: str, clock: Callable[[], float], *,
                 latency_s: float = 1.0,
                 on_control: Callable[[str], None] | None = None) -> None:
        assert config.url is not None
        self.config, self.session, self.clock = config, session, clock
        self.latency_s, self.on_control = latency_s, on_control
        self.host, self.port, self.user, self.tls = broker_address(config.url)
        self.topic = f"{config.prefix}/{session}"
        self.uri = f"{config.url}/{self.topic}"
        self.received = 0
        self.rejected = 0
        self.missing = 0
        """Numbered lines (`seq`) that never arrived: gaps in the numbers seen."""
        self._last_seq: int | None = None
        self._lines: asyncio.Queue[TranscriptLine] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self._stopped = asyncio.Event()

    async def items(self) -> AsyncIterator[Item]:
        self._task = asyncio.create_task(self._listen(), name="mqtt-inbox")
        emitted = float("-inf")
        seq = 0
        pending: list[TranscriptLine] = []
        try:
            while not self._stopped.is_set():
                with contextlib.suppress(TimeoutError):
                    pending.append(await asyncio.wait_for(self._lines.get(), TICK_S))
                horizon = self.clock() - self.latency_s
                pending.sort(key=lambda line: line.end)
                while pending and (pending[0].end <= horizon or pending[0].end <= emitted):
                    line = pending.pop(0)
                    pts = max(line.end, emitted)  # a late line is known when it arrived
                    yield TranscriptLine(pts=pts, start=line.start, end=line.end,
                                         text=line.text, speaker=line.speaker,
                                         origin=line.origin, source=self.name, seq=seq)
                    emitted, seq = pts, seq + 1
                if horizon > emitted:
                    yield Watermark(pts=horizon, source=self.name)
                    emitted = horizon
            while not self._lines.empty():
                pending.append(self._lines.get_nowait())
            for line in sorted(pending, key=lambda line: line.end):  # the media has ended
                pts = max(line.end, emitted)
                yield TranscriptLine(pts=pts, start=line.start, end=line.end, text=line.text,
                                     speaker=line.speaker, origin=line.origin,
                                     source=self.name, seq=seq)
                emitted, seq = pts, seq + 1
        finally:
            await self.close()

    def finish(self) -> None:
        """The media ended: stop listening (lines still queued are released first)."""
        self._stopped.set()

    def stop(self) -> bool:
        self.finish()
        return True

    async def close(self) -> None:
        self._stopped.set()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
                await self._task
            self._task = None

    async def _listen(self) -> None:
        delay = self.config.reconnect_min_s
        outage = False
        while True:
            try:
                async with mqtt_client(self.config) as client:
                    await client.subscribe(f"{self.topic}/transcript/in", qos=1)
                    await client.subscribe(f"{self.topic}/control", qos=1)
                    if outage:
                        log.warning("MQTT inbox: broker %s:%d is back; listening on %s/",
                                    self.host, self.port, self.topic)
                    outage, delay = False, self.config.reconnect_min_s
                    async for message in client.messages:
                        try:
                            self._handle(str(message.topic), _text(message.payload))
                        except Exception as exc:  # one bad message never ends the inbox
                            self.rejected += 1
                            log.warning("MQTT inbox: skipping a message on %s: %s",
                                        message.topic, exc)
            except aiomqtt.MqttError as exc:
                if not outage:
                    log.warning("MQTT inbox: broker %s:%d unreachable (%s); transcript lines "
                                "and control commands for %s/ are not received until it is "
                                "back; retrying", self.host, self.port, exc, self.topic)
                outage = True
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.config.reconnect_max_s)

    def _handle(self, topic: str, text: str) -> None:
        if topic.endswith("/control"):
            command = text.strip().lower()
            if command in ("stop", "reset") and self.on_control is not None:
                log.warning("MQTT control: %s", command)
                self.on_control(command)
            else:
                log.warning("MQTT control: unknown command %r (use stop or reset)", text[:40])
            return
        origin = f"{topic}#{self.received + self.rejected + 1}"
        if len(text) > MAX_PAYLOAD:
            log.warning("skipping transcript message %s: %d bytes, more than %d", origin,
                        len(text), MAX_PAYLOAD)
            self.rejected += 1
            return
        parsed = parse_line(text, origin)
        if parsed is None:
            self.rejected += 1
            return
        line, seq = parsed
        self.received += 1
        if seq is not None:
            if self._last_seq is not None and seq > self._last_seq + 1:
                self.missing += seq - self._last_seq - 1
            self._last_seq = seq if self._last_seq is None else max(seq, self._last_seq)
        self._lines.put_nowait(line)

    def summary(self) -> str:
        """What the inbox got, for the end of a session."""
        text = (f"MQTT inbox: {self.received} transcript lines received, {self.rejected} "
                "rejected")
        if self.missing:
            text += (f"; {self.missing} transcript lines never arrived (gaps in their seq "
                     "numbers: the broker may have dropped them, see docs/operations.md, MQTT)")
        return text


def parse_line(text: str, origin: str) -> tuple[TranscriptLine, int | None] | None:
    """A transcript line and its optional `seq` number from a JSON payload, or None (logged)
    when it is malformed."""
    try:
        record: Any = json.loads(text)
        if not isinstance(record, dict):
            raise ValueError("not a JSON object")
        start, end, words = record["start"], record["end"], record["text"]
        speaker, seq = record.get("speaker"), record.get("seq")
        if (not isinstance(words, str) or not all(is_seconds(v) for v in (start, end))
                or not 0 <= start <= end or (speaker is not None and not isinstance(speaker, str))):
            raise ValueError("needs finite numbers 0 <= start <= end and a string text")
        if seq is not None and type(seq) is not int:
            raise ValueError("'seq' must be an integer when given")
    except RecursionError:
        log.warning("skipping transcript message %s: nested too deeply", origin)
        return None
    except (KeyError, TypeError, ValueError) as exc:  # JSONDecodeError is a ValueError
        log.warning("skipping transcript message %s: %s", origin, exc)
        return None
    line = TranscriptLine(pts=float(end), start=float(start), end=float(end),
                          text=words.strip(), speaker=speaker, origin=origin)
    return line, seq


def _text(payload: object) -> str:
    if isinstance(payload, bytes | bytearray):
        return payload.decode("utf-8", errors="replace")
    return str(payload)
