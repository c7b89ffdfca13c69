"""`socialstream subscribe`: print a session's events live, for users without an MQTT tool.

Each message is printed as one JSON line: turn events as they are, status
changes as `{"status": "online"}`. Events already seen (same `id`) are skipped,
so a redelivery after a reconnect prints nothing twice.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import Any

import aiomqtt
from rich.console import Console

from stream.broker import MqttConfig, broker_address, mqtt_client
from stream.errors import UserError
from stream.view.web import Hub, WebServer, parse_address


def add_parser(commands: argparse._SubParsersAction, help_texts: dict[str, str]) -> None:
    sub = commands.add_parser("subscribe", help="print a session's events from MQTT")
    sub.add_argument("--mqtt", metavar="URL", required=True,
                     help="broker: mqtt://[user@]host:port (password from "
                          "$SOCIALSTREAM_MQTT_PASSWORD)")
    sub.add_argument("--session", default="+", help="session id (default: every session)")
    sub.add_argument("--prefix", default="socialstream", help="topic prefix")
    sub.add_argument("--topics", default="status,turn,prediction",
                     help="comma-separated topics to follow (also: speaker)")
    sub.add_argument("--count", type=int, help="exit after this many events")
    sub.add_argument("--timeout", type=float, help="exit after this many seconds")
    sub.add_argument("--web", metavar="[HOST:]PORT",
                     help="also serve the session's live web view (as replay --web, without "
                          "the picture: boxes from the speaker topic); needs --session")
    sub.set_defaults(func=run)


def run(args: argparse.Namespace, stderr: Console) -> int:
    config = MqttConfig(url=args.mqtt, prefix=args.prefix)
    broker_address(args.mqtt)  # a bad URL is a one-line error before anything starts
    names = [t.strip() for t in args.topics.split(",")]
    server = None
    if args.web is not None:
        if args.session == "+":
            raise UserError("--web shows one session: give --session ID (the session the "
                            "events are published under)")
        host, port = parse_address(args.web)
        server = WebServer(Hub(args.session, pictures=False), host, port)
    listened = names if server is None else sorted({*names, "turn", "prediction", "speaker"})
    topics = [f"{args.prefix}/{args.session}/{t}" for t in listened]
    printed = set(names)
    try:
        asyncio.run(asyncio.wait_for(_follow(config, topics, args.count, printed, server),
                                     args.timeout))
    except TimeoutError:
        pass
    except aiomqtt.MqttError as exc:
        raise UserError(f"{args.mqtt}: cannot subscribe ({exc}); is the broker running?") \
            from exc
    return 0


async def _follow(config: MqttConfig, topics: list[str], count: int | None,
                  shown: set[str] | None = None, server: WebServer | None = None) -> None:
    """Print each new event whose topic is in `shown` (all when None), and pass turns,
    predictions and speakers on to the web view when there is one."""
    seen: set[str] = set()
    printed = 0
    if server is not None:
        await server.start()
    try:
        async with mqtt_client(config) as client:
            for topic in topics:
                await client.subscribe(topic, qos=1)
            async for message in client.messages:
                event = _event(message)
                key = event.get("id")
                if key is not None:
                    if key in seen:
                        continue
                    seen.add(key)
                topic = str(message.topic).rsplit("/", 1)[-1]
                if server is not None:
                    _relay(server.hub, topic, event)
                if shown is not None and topic not in shown:
                    continue
                sys.stdout.write(json.dumps(event, separators=(",", ":")) + "\n")
                sys.stdout.flush()
                printed += 1
                if count is not None and printed >= count:
                    return
    finally:
        if server is not None:
            await server.stop()


def _relay(hub: Hub, topic: str, event: dict[str, Any]) -> None:
    if topic == "speaker" and "players" in event:
        hub.frame(event)
    elif topic in ("turn", "prediction") and "schema" in event:
        hub.publish(event)


def _event(message: aiomqtt.Message) -> dict[str, Any]:
    payload = message.payload
    text = payload.decode("utf-8", errors="replace") if isinstance(payload, bytes | bytearray) \
        else str(payload)
    if str(message.topic).endswith("/status"):
        return {"topic": str(message.topic), "status": text}
    try:
        event = json.loads(text)
    except json.JSONDecodeError:
        return {"topic": str(message.topic), "raw": text}
    return event if isinstance(event, dict) else {"topic": str(message.topic), "value": event}
