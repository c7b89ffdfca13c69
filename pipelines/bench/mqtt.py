"""`socialstream bench mqtt`: many sessions publishing to one broker.

Each session is a real `MqttSink` fed the demo's turns over and over; a
subscriber counts what arrives. Two phases: a burst (every event at once:
events per second through the broker, and whether any was lost) and a paced
run at `PACED_RATE` events per second per session (publish latency, spool to
PUBACK, as a live session sees it). Without `--mqtt` a private Mosquitto is
started on a free port.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import tempfile
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiomqtt
import numpy as np
from rich.console import Console

from pipelines.bench.mosquitto import PrivateBroker
from pipelines.config import load_config
from pipelines.run.replay import replay_and_collect
from stream.broker import MqttConfig, broker_address
from stream.frames import Turn
from stream.sinks.mqtt import MqttSink

PACED_RATE = 20.0
PACED_EVENTS = 100
DELIVERY_DEADLINE_S = 60.0
"""How long after the last publish the subscriber may still count arrivals; what has not
arrived by then is reported as lost."""


def bench_mqtt(args: argparse.Namespace, stderr: Console) -> dict[str, Any]:
    config = load_config(None, {"perception": {"enabled": False}})
    _, turns = replay_and_collect(args.media, config)
    with tempfile.TemporaryDirectory() as folder, _broker(args.mqtt, Path(folder)) as url:
        stderr.log(f"burst: {args.sessions} sessions x {args.events} events to {url}")
        burst = asyncio.run(_load(url, turns, args.sessions, args.events, Path(folder), None))
        stderr.log(f"paced: {args.sessions} sessions x {PACED_EVENTS} events at "
                   f"{PACED_RATE:.0f}/s each")
        paced = asyncio.run(_load(url, turns, args.sessions, PACED_EVENTS, Path(folder),
                                  PACED_RATE))
    return {**{f"burst_{k}": v for k, v in burst.items()},
            **{f"paced_{k}": v for k, v in paced.items() if k != "broker"}}


@contextlib.contextmanager
def _broker(url: str | None, folder: Path) -> Iterator[str]:
    """The given broker, or a private Mosquitto for the length of the benchmark."""
    if url is not None:
        yield url
        return
    with PrivateBroker(folder / "broker") as broker:
        yield broker.url


async def _load(url: str, turns: list[Turn], sessions: int, events: int,
                folder: Path, rate: float | None,
                deadline_s: float = DELIVERY_DEADLINE_S) -> dict[str, Any]:
    host, port, _, _ = broker_address(url)
    names = [f"load-{'paced' if rate else 'burst'}-{i}" for i in range(sessions)]
    received: dict[str, set[str]] = {name: set() for name in names}
    ready = asyncio.Event()
    listener = asyncio.create_task(_count(host, port, received, sessions * events, ready))
    await asyncio.wait_for(ready.wait(), 10)
    config = MqttConfig(url=url, spool_dir=folder / "spool", drain_timeout_s=120)
    sinks = [MqttSink(config, name) for name in names]
    began = time.perf_counter()
    await asyncio.gather(*(_feed(sink, turns, events, rate) for sink in sinks))
    published = time.perf_counter() - began
    done, _ = await asyncio.wait({listener}, timeout=deadline_s)
    if not done:  # some never came: count what did, and say so
        listener.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await listener
    elif listener.exception() is not None:
        raise listener.exception()  # type: ignore[misc]
    delivered = time.perf_counter() - began
    latencies = [x for sink in sinks for x in sink.latencies]
    total = sum(len(ids) for ids in received.values())
    return {
        "broker": url, "sessions": sessions, "events_per_session": events,
        "events_sent": sessions * events, "events_received": total,
        "lost": sessions * events - total,
        "events_per_s": round(total / delivered, 1),
        "publish_s": round(published, 3),
        "publish_latency_p50_ms":
            round(statistics.median(latencies) * 1e3, 2) if latencies else None,
        "publish_latency_p95_ms":
            round(float(np.percentile(latencies, 95)) * 1e3, 2) if latencies else None,
    }


async def _feed(sink: MqttSink, turns: list[Turn], events: int, rate: float | None) -> None:
    await sink.start()
    began = time.perf_counter()
    for i in range(events):
        template = turns[i % len(turns)]
        await sink.process(replace(template, index=i, pts=template.pts + i))
        if rate is not None:
            await asyncio.sleep(max(0.0, began + (i + 1) / rate - time.perf_counter()))
        elif i % 20 == 0:
            await asyncio.sleep(0)  # let the publisher run, as a live pipeline would
    await sink.stop()


async def _count(host: str, port: int, received: dict[str, set[str]], expected: int,
                 ready: asyncio.Event) -> None:
    async with aiomqtt.Client(host, port, timeout=10) as client:
        await client.subscribe("socialstream/+/turn", qos=1)
        ready.set()
        async for message in client.messages:
            session = str(message.topic).split("/")[1]
            payload = message.payload
            if isinstance(payload, bytes | bytearray):
                received[session].add(payload.split(b'"id":"', 1)[1].split(b'"', 1)[0].decode())
            if sum(len(ids) for ids in received.values()) >= expected:
                return
