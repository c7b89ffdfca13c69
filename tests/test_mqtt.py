"""MQTT against a real Mosquitto broker: delivery, Last Will, outages, the spool."""

from __future__ import annotations

import contextlib
import json
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import jsonschema
import pytest

from stream.events import turn_schema
from stream.sinks.spool import Spool
from tests.broker import Broker, free_port
from tests.conftest import (
    MOUTH,
    PREDICTION,
    ROOT,
    SHORT_TURNS,
    TURN,
    events_of,
    run_cli,
    turn_events,
)


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    running = Broker(tmp_path).start()
    yield running
    running.stop()


def _replay(media: Path, url: str, tmp_path: Path, *extra: str, reconnect_s: float = 1.0,
            more: str = "") -> subprocess.Popen[str]:
    config = tmp_path / "mqtt.yaml"
    config.write_text(f"mqtt:\n  spool_dir: {tmp_path / 'spool'}\n"
                      f"  reconnect_min_s: {min(0.5, reconnect_s)}\n"
                      f"  reconnect_max_s: {reconnect_s}\n{more}")
    return subprocess.Popen(
        [sys.executable, "-m", "pipelines.cli", "replay", str(media),
         "--json", "--mqtt", url, "--config", str(config), *extra],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _turns(lines: list[str]) -> list[dict]:
    return [json.loads(line.split(" ", 1)[1]) for line in lines if "/turn " in line]


def test_every_turn_reaches_a_subscriber_and_status_goes_offline(
        broker: Broker, short_demo: Path, tmp_path: Path) -> None:
    sub = broker.subscribe("socialstream/demo/turn", "socialstream/demo/status",
                           count=SHORT_TURNS + 2)
    speaker = broker.subscribe("socialstream/demo/speaker", count=5)
    replay = _replay(short_demo, broker.url, tmp_path)
    stdout, stderr = replay.communicate(timeout=120)
    assert replay.returncode == 0, stderr
    lines = sub.communicate(timeout=30)[0].splitlines()
    events = _turns(lines)
    schema = turn_schema()
    for event in events:
        jsonschema.validate(event, schema)
    assert [e["turn"] for e in events] == list(range(SHORT_TURNS))
    assert [e["id"] for e in events] == [e["id"] for e in turn_events(stdout)]
    assert lines[0] == "socialstream/demo/status online"
    assert lines[-1] == "socialstream/demo/status offline"
    assert broker.retained("socialstream/demo/status") == "offline"
    frames = [json.loads(line.split(" ", 1)[1]) for line in speaker.communicate(timeout=30)[0]
              .splitlines()]
    assert len(frames) == 5 and all(f["schema"] == "socialstream.speaker/1" for f in frames)


def _wait_for(ready: Callable[[], object], what: str, timeout: float = 60) -> None:
    """Until `ready()` holds: an event, polled; `timeout` only bounds a failure."""
    deadline = time.monotonic() + timeout
    while not ready():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def test_last_will_marks_a_killed_session_offline(broker: Broker, short_demo: Path,
                                                  tmp_path: Path) -> None:
    replay = _replay(short_demo, broker.url, tmp_path, "--realtime")
    _wait_for(lambda: broker.retained("socialstream/demo/status") == "online",
              "never came online", timeout=30)
    replay.send_signal(signal.SIGKILL)
    replay.wait(timeout=10)
    _wait_for(lambda: broker.retained("socialstream/demo/status") == "offline",
              "the Last Will was not published", timeout=20)  # the broker gives up after 7.5 s


def _spooled_turns(spool: Path) -> int:
    """Turn events waiting in a session's spool, read beside the process that writes it."""
    try:
        with contextlib.closing(sqlite3.connect(f"file:{spool}?mode=ro", uri=True)) as db:
            return int(db.execute("SELECT COUNT(*) FROM spool WHERE topic LIKE '%/turn'")
                       .fetchone()[0])
    except sqlite3.Error:  # not there yet, or being written
        return 0


def test_broker_stopped_mid_run_loses_nothing(short_demo: Path, tmp_path: Path) -> None:
    import paho.mqtt.client as paho

    (tmp_path / "b").mkdir()
    broker = Broker(tmp_path / "b").start()
    received: list[dict] = []
    # A persistent QoS 1 subscriber that reconnects by itself (paho's network thread);
    # the broker keeps its session across the restart.
    observer = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="observer",
                           clean_session=False)
    subscribed = threading.Event()
    observer.on_connect = lambda c, *_: c.subscribe("socialstream/demo/turn", qos=1)
    observer.on_subscribe = lambda *_: subscribed.set()
    observer.on_message = lambda c, u, m: received.append(json.loads(m.payload))
    observer.reconnect_delay_set(0.2, 0.5)
    observer.connect("127.0.0.1", broker.port)
    observer.loop_start()
    try:
        assert subscribed.wait(30), "the observer never subscribed"
        # The publisher retries every 3 s, the observer every 0.5 s: the observer is back
        # first even if the broker forgot its session.
        replay = _replay(short_demo, broker.url, tmp_path, "--realtime", "--speed", "2",
                         reconnect_s=3.0, more=MOUTH)
        printed: dict[str, list[str]] = {"out": [], "err": []}
        readers = [threading.Thread(target=lambda k=k, f=f: printed[k].extend(f), daemon=True)
                   for k, f in (("out", replay.stdout), ("err", replay.stderr))]
        for reader in readers:
            reader.start()
        _wait_for(lambda: received, "no turn arrived before the broker was stopped")
        broker.stop()
        # A turn waits in the spool while the publisher knows the broker is gone.
        spool = tmp_path / "spool" / "demo.sqlite"
        _wait_for(lambda: any("unreachable" in line for line in printed["err"])
                  and _spooled_turns(spool) > 0,
                  "no turn waited in the spool while the broker was down")
        broker.start()
        assert replay.wait(timeout=120) == 0
        for reader in readers:
            reader.join(timeout=30)
        stderr = "".join(printed["err"])
        assert "is back" in stderr, stderr
        _wait_for(lambda: len({e["turn"] for e in received}) >= SHORT_TURNS,
                  f"turns missing: {[e['turn'] for e in received]}")
    finally:
        observer.loop_stop()
        broker.stop()
    turns = [e["turn"] for e in received]
    assert sorted(set(turns)) == list(range(SHORT_TURNS)), "none missing"
    assert [t for i, t in enumerate(turns) if t not in turns[:i]] == list(
        range(SHORT_TURNS)), "in order"


def test_broker_down_at_start_spools_and_delivers_later(short_demo: Path, tmp_path: Path
                                                        ) -> None:
    port = free_port()
    replay = _replay(short_demo, f"mqtt://127.0.0.1:{port}", tmp_path)
    stdout, stderr = replay.communicate(timeout=120)
    assert replay.returncode == 0
    assert len(turn_events(stdout)) == SHORT_TURNS, "the run does not wait for the broker"
    # the turns and their predictions; the log wraps long lines
    assert f"{2 * SHORT_TURNS}eventskeptin" in "".join(stderr.split())
    spool = Spool(tmp_path / "spool" / "demo.sqlite")
    assert len(spool) == 2 * SHORT_TURNS
    spool.close()
    (tmp_path / "b").mkdir()
    broker = Broker(tmp_path / "b", port).start()
    try:
        sub = broker.subscribe("socialstream/demo/turn", count=2 * SHORT_TURNS)
        again = _replay(short_demo, broker.url, tmp_path)  # the next run delivers first
        again.communicate(timeout=120)
        turns = [e["turn"] for e in _turns(sub.communicate(timeout=30)[0].splitlines())]
    finally:
        broker.stop()
    assert turns == list(range(SHORT_TURNS)) * 2


def test_spool_keeps_order_and_bounds_its_size(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "s.sqlite", max_messages=5)
    for i in range(8):
        spool.append("t", str(i).encode())
    assert [m.payload for m in spool.peek()] == [b"3", b"4", b"5", b"6", b"7"]
    assert spool.dropped == 3
    first = spool.peek(1)[0]
    spool.ack(first.id)
    spool.close()
    reopened = Spool(tmp_path / "s.sqlite")
    assert [m.payload for m in reopened.peek()] == [b"4", b"5", b"6", b"7"]


def test_bad_mqtt_urls_are_one_line_errors() -> None:
    demo = str(ROOT / "examples" / "demo.mp4")
    result = run_cli("replay", demo, "--mqtt", "http://host")
    assert result.returncode == 2 and "not an MQTT URL" in result.stderr
    result = run_cli("replay", demo, "--mqtt", "mqtt://u:secret@host:1883")
    assert result.returncode == 2 and "secret" not in result.stderr


def test_subscribe_prints_events(broker: Broker, short_demo: Path, tmp_path: Path) -> None:
    sub = subprocess.Popen(
        [sys.executable, "-m", "pipelines.cli", "subscribe", "--mqtt", broker.url, "--session",
         "demo", "--count", str(1 + 2 * SHORT_TURNS), "--timeout", "60"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(1.5)
    _replay(short_demo, broker.url, tmp_path).communicate(timeout=120)
    out, err = sub.communicate(timeout=90)
    assert sub.returncode == 0, err
    events = events_of(out)
    assert events[0]["status"] == "online"
    assert [e["turn"] for e in events[1:] if e["schema"] == TURN] == list(range(SHORT_TURNS))
    assert [e["turn"] for e in events[1:] if e["schema"] == PREDICTION] == list(
        range(SHORT_TURNS))


def test_load_of_eight_sessions_loses_nothing() -> None:
    from tests.broker import require_mosquitto

    require_mosquitto()
    result = run_cli("bench", "mqtt", "--sessions", "8", "--events", "60", "--json", timeout=300)
    assert result.returncode == 0, result.stderr
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    assert figures["burst_events_received"] == figures["burst_events_sent"] == 480
    assert figures["paced_events_received"] == figures["paced_events_sent"] == 800
    assert figures["burst_lost"] == figures["paced_lost"] == 0
    assert 0 < figures["paced_publish_latency_p50_ms"] <= figures["paced_publish_latency_p95_ms"]


async def test_bench_counts_what_never_arrived_as_lost(broker: Broker, tmp_path: Path,
                                                       monkeypatch) -> None:
    from pipelines.bench import mqtt as bench_mqtt
    from stream.frames import Turn
    from stream.sinks.mqtt import MqttSink

    publish = MqttSink.process

    async def lossy(self, item):  # every fourth event never reaches the broker
        return () if item.index % 4 == 3 else await publish(self, item)

    monkeypatch.setattr(MqttSink, "process", lossy)
    turns = [Turn(pts=1.0, index=0, start=0.5, end=1.0, text="hello")]
    figures = await bench_mqtt._load(broker.url, turns, 2, 20, tmp_path, None, deadline_s=2.0)
    assert figures["events_sent"] == 40
    assert figures["events_received"] == 30 and figures["lost"] == 10


def _listening(config, session: str):
    """A live session's inbox, read in a task: it, the lines it released, the control
    commands it heard, and the task."""
    import asyncio

    from stream.frames import TranscriptLine
    from stream.sources.mqtt_inbox import MqttInbox

    commands: list[str] = []
    inbox = MqttInbox(config, session, clock=lambda: 100.0, latency_s=0.0,
                      on_control=commands.append)
    lines: list[TranscriptLine] = []

    async def read() -> None:
        async for item in inbox.items():
            if isinstance(item, TranscriptLine):
                lines.append(item)

    return inbox, lines, commands, asyncio.create_task(read())


async def test_the_inbox_and_the_sink_reach_a_tls_broker(tmp_path: Path) -> None:
    import asyncio

    from stream.broker import MqttConfig, mqtt_client
    from stream.frames import Turn
    from stream.sinks.mqtt import MqttSink

    broker = Broker(tmp_path, tls=True).start()
    config = MqttConfig(url=broker.url, ca_file=broker.ca_file, spool_dir=tmp_path / "spool")
    inbox, lines, commands, reader = _listening(config, "tls")
    sink = MqttSink(config, "tls")
    await sink.start()
    try:
        async with mqtt_client(config) as client:
            await client.subscribe("socialstream/tls/turn", qos=1)
            await sink.process(Turn(pts=1.0, index=0, start=0.5, end=1.0, text="over TLS"))
            async with asyncio.timeout(10):
                message = await anext(aiter(client.messages))
                assert b'"text":"over TLS"' in message.payload
                # The inbox subscribes on its own connection: publish until it has heard.
                while not lines or not commands:
                    await client.publish("socialstream/tls/transcript/in", qos=1,
                                         payload=b'{"start": 1, "end": 2, "text": "hi"}')
                    await client.publish("socialstream/tls/control", b"stop", qos=1)
                    await asyncio.sleep(0.3)
        assert lines[0].text == "hi" and commands[0] == "stop"
    finally:
        await sink.stop()
        inbox.finish()
        await asyncio.wait_for(reader, 10)
        broker.stop()


async def test_an_unreachable_inbox_broker_is_a_warning(caplog) -> None:
    import asyncio

    from stream.broker import MqttConfig
    from stream.sources.mqtt_inbox import MqttInbox

    inbox = MqttInbox(MqttConfig(url=f"mqtt://127.0.0.1:{free_port()}"), "gone",
                      clock=lambda: 0.0)
    items = inbox.items()
    await anext(items)  # a watermark, or nothing for a tick: the listener has started
    await asyncio.sleep(0.5)
    inbox.finish()
    async for _ in items:
        pass
    assert "MQTT inbox: broker 127.0.0.1" in caplog.text and "unreachable" in caplog.text
    assert any(r.levelname == "WARNING" for r in caplog.records)


async def test_hostile_payloads_never_end_the_inbox(broker: Broker, caplog) -> None:
    import asyncio

    from stream.broker import MqttConfig, mqtt_client

    config = MqttConfig(url=broker.url)
    inbox, lines, commands, reader = _listening(config, "h")
    try:
        async with mqtt_client(config) as client, asyncio.timeout(15):
            while not (commands and lines and inbox.rejected >= 3):  # all heard and released
                for payload in (b"[" * 3000, b"x" * 70_000, b'{"start": 1, "end": Infinity}',
                                b'{"start": 1, "end": 2, "text": "still here"}'):
                    await client.publish("socialstream/h/transcript/in", payload, qos=1)
                await client.publish("socialstream/h/control", b"stop", qos=1)
                await asyncio.sleep(0.3)
        assert lines and {line.text for line in lines} == {"still here"}
        assert inbox.rejected >= 3 and commands[0] == "stop"
        assert "nested too deeply" in caplog.text and "more than 65536" in caplog.text
    finally:
        inbox.finish()
        await asyncio.wait_for(reader, 10)


def test_subscribe_serves_the_web_view_from_mqtt(broker: Broker, short_demo: Path,
                                                  tmp_path: Path) -> None:
    import asyncio

    import aiohttp

    from stream.view.web import END

    port = free_port()
    sub = subprocess.Popen(
        [sys.executable, "-m", "pipelines.cli", "subscribe", "--mqtt", broker.url, "--session",
         "demo", "--web", str(port), "--count", str(1 + 2 * SHORT_TURNS), "--timeout", "120"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    async def watch() -> list[dict]:
        async with aiohttp.ClientSession() as client:
            for _ in range(300):
                try:
                    socket = await client.ws_connect(f"http://127.0.0.1:{port}/ws")
                    break
                except aiohttp.ClientError:
                    await asyncio.sleep(0.1)
            else:
                raise AssertionError(f"subscribe --web never listened: {sub.stderr.read()}")
            replay = _replay(short_demo, broker.url, tmp_path)
            events = []
            async with socket:
                async for message in socket:
                    assert message.type == aiohttp.WSMsgType.TEXT, "no pictures over MQTT"
                    events.append(json.loads(message.data))
                    if message.data == END:
                        break
            await asyncio.to_thread(replay.communicate, timeout=120)
            return events

    events = asyncio.run(asyncio.wait_for(watch(), 150))
    sub.communicate(timeout=60)
    assert sub.returncode == 0
    assert events[0] == {"type": "hello", "session": "demo", "names": {}, "pictures": False}
    assert [e["turn"] for e in events if e.get("schema") == TURN] == list(range(SHORT_TURNS))
    assert [e["turn"] for e in events if e.get("schema") == PREDICTION] == list(
        range(SHORT_TURNS))
    boxes = [e for e in events if e.get("schema", "").startswith("socialstream.speaker")]
    assert boxes and len(boxes[-1]["players"]) == 3


def test_subscribe_web_needs_one_session() -> None:
    result = run_cli("subscribe", "--mqtt", "mqtt://127.0.0.1:1", "--web", "0")
    assert result.returncode == 2 and "--web shows one session" in result.stderr
