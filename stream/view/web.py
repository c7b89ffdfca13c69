"""The live web view (`--web [HOST:]PORT`): one static page, fed over a WebSocket.

The page gets the same events the JSONL and MQTT outputs carry (turns, predictions,
per-frame speakers with boxes), a metrics message each second, and, when the process
has the picture, the latest frame as a JPEG (binary message) right after its speaker
event, so boxes and picture match. `subscribe --web` feeds the same page from MQTT,
without pictures.

Who may watch: the page itself holds no data; the WebSocket that feeds it does, so a
socket is accepted only from this page (a browser sends its Origin, which must be this
server, reached by the name it was asked under, a loopback name unless a token is set:
a page of another site, or a name of another site rebound to this machine, is
refused), at most `MAX_VIEWERS` at a time, and, with a token ($SOCIALSTREAM_WEB_TOKEN),
only after the token. The printed URL carries the token after `#`, which a browser
keeps to itself (never in a request line, a proxy's log or the history sent to a
server); the page sends it as the socket's first message. A program may send
`Authorization: Bearer TOKEN` with its handshake instead.

Nothing a viewer does can slow the pipeline: the pipeline only hands events to a
`Hub`, which never awaits a viewer. Each viewer has a bounded queue; one that falls
behind is emptied and sent a fresh snapshot instead. Frames are not queued at all:
one encoder task takes the newest frame at most `fps` times a second (only while
someone watches), encodes it off the event loop, and each viewer sends the newest
JPEG when it is ready for one.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hmac
import io
import ipaddress
import json
import logging
import os
import sys
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib import resources
from typing import Any
from urllib.parse import quote, urlsplit

import numpy as np
from aiohttp import WSMsgType, web
from PIL import Image

from stream.errors import UserError
from stream.events import dumps, prediction_event, speaker_event, turn_event
from stream.frames import Item, PerceivedFrame, Prediction, Turn, VideoFrame
from stream.runtime import Stage

log = logging.getLogger(__name__)

TOKEN_ENV = "SOCIALSTREAM_WEB_TOKEN"
VIEWER_QUEUE = 256
"""Events a viewer may lag behind before it is resynced with a snapshot."""
HISTORY = 1000
"""Turns and predictions kept for viewers who join late."""
JPEG_QUALITY = 75
END = '{"type":"end"}'
"""The last message of a run: the page shows it ended and does not reconnect."""
END_WAIT_S = 0.5
"""At the end of a run, how long the viewers get to receive the end."""
MAX_WIDTH = 960
"""Frames wider than this are scaled down before encoding."""
MAX_VIEWERS = 32
AUTH_WAIT_S = 5.0
"""How long a socket may take to send its token."""
UNAUTHORISED = 4401
"""The close code of a socket whose token is missing or wrong (the page stops retrying)."""
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")


def parse_address(text: str, flag: str = "--web") -> tuple[str, int]:
    """`PORT` or `HOST:PORT` (`[::1]:PORT` for IPv6); the host defaults to 127.0.0.1."""
    host, sep, port = text.rpartition(":")
    if not sep:
        host, port = "127.0.0.1", text
    host = host.strip("[]") or "127.0.0.1"
    try:
        number = int(port)
    except ValueError:
        number = -1
    if not 0 <= number <= 65535:
        raise UserError(f"{flag} {text}: give a port (0-65535) or HOST:PORT, e.g. 8080 or "
                        "0.0.0.0:8080")
    return host, number


def loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(eq=False)
class _Viewer:
    backlog: deque[str] = field(default_factory=deque)
    """The snapshot to send first (on joining, and after falling behind)."""
    queue: asyncio.Queue[str] = field(default_factory=lambda: asyncio.Queue(VIEWER_QUEUE))
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    behind: bool = False
    sent_frame: int = -1
    frames: bool = True
    gone: asyncio.Event = field(default_factory=asyncio.Event)
    """Set when its socket is done with (after the end was sent, or the viewer left)."""


class Hub:
    """The state viewers are fed from; safe to call from the pipeline (never waits)."""

    def __init__(self, session: str, names: dict[str, str] | None = None, fps: float = 10.0,
                 pictures: bool = True) -> None:
        self.session, self.names, self.fps, self.pictures = session, names or {}, fps, pictures
        self.history: deque[str] = deque(maxlen=HISTORY)
        self.viewers: set[_Viewer] = set()
        self.metrics: Callable[[], dict[str, Any]] | None = None
        self.resyncs = 0
        self._frame: PerceivedFrame | VideoFrame | dict[str, Any] | None = None
        """The newest frame, or speaker event from elsewhere; turned into JSON and JPEG
        only when the encoder takes it, not for every frame the pipeline passes."""
        self._jpeg: tuple[int, str, bytes] | None = None
        """(number, speaker event, JPEG) of the newest encoded frame."""
        self._numbered = 0
        self._new_frame = asyncio.Event()

    def hello(self) -> str:
        return json.dumps({"type": "hello", "session": self.session, "names": self.names,
                           "pictures": self.pictures})

    def publish(self, event: dict[str, Any], keep: bool = True) -> None:
        text = dumps(event)
        if keep:
            self.history.append(text)
        for viewer in self.viewers:
            self._offer(viewer, text)

    def _offer(self, viewer: _Viewer, text: str) -> None:
        if viewer.behind:
            return
        try:
            viewer.queue.put_nowait(text)
        except asyncio.QueueFull:
            viewer.behind = True  # its sender empties the queue and sends a snapshot
            self.resyncs += 1
        viewer.wake.set()

    def frame(self, frame: PerceivedFrame | VideoFrame | dict[str, Any]) -> None:
        """The newest picture, or a speaker event from elsewhere (MQTT: boxes, no picture)."""
        self._frame = frame
        if self.viewers:
            self._new_frame.set()

    def end(self) -> None:
        self.publish(json.loads(END), keep=True)

    def snapshot(self) -> list[str]:
        return [self.hello(), *self.history]

    async def encode_frames(self) -> None:
        """At most `fps` times a second, encode the newest frame for whoever watches."""
        while True:
            await self._new_frame.wait()
            self._new_frame.clear()
            frame = self._frame
            if frame is None or not self.viewers:
                continue
            began = time.perf_counter()
            if isinstance(frame, dict):
                event, video = dumps(frame), None
            elif isinstance(frame, PerceivedFrame):
                event, video = dumps(speaker_event(frame, self.session)), frame.frame
            else:
                event, video = "", frame
            jpeg = await asyncio.to_thread(_jpeg, video.image) \
                if self.pictures and video is not None else b""
            self._numbered += 1
            self._jpeg = (self._numbered, event, jpeg)
            for viewer in self.viewers:
                viewer.wake.set()
            await asyncio.sleep(max(0.0, 1 / self.fps - (time.perf_counter() - began)))

    def latest_frame(self) -> tuple[int, str, bytes] | None:
        return self._jpeg


def _jpeg(image: np.ndarray) -> bytes:
    picture = Image.fromarray(image)
    if picture.width > MAX_WIDTH:
        picture = picture.resize((MAX_WIDTH, round(picture.height * MAX_WIDTH / picture.width)))
    out = io.BytesIO()
    picture.save(out, format="JPEG", quality=JPEG_QUALITY)
    return out.getvalue()


def _page() -> str:
    return resources.files("stream.view").joinpath("static/index.html").read_text("utf-8")


class WebServer:
    """The aiohttp app in the pipeline's own event loop."""

    def __init__(self, hub: Hub, host: str, port: int, token: str | None = None) -> None:
        self.hub, self.host, self.port = hub, host, port
        self.token = token if token is not None else os.environ.get(TOKEN_ENV) or None
        self._runner: web.AppRunner | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self.bound: tuple[str, int] | None = None
        self._waiting = 0
        """Sockets opened and not yet viewers (their token still to come)."""

    async def start(self) -> None:
        if not loopback(self.host) and self.token is None:
            log.warning("--web %s:%s: without a token only this machine may watch (by "
                        "127.0.0.1 or localhost); set $%s to let other machines in with it",
                        self.host, self.port, TOKEN_ENV)
        app = web.Application()
        app.router.add_get("/", self._index)
        app.router.add_get("/ws", self._socket)
        self._runner = web.AppRunner(app, handle_signals=False, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        try:
            await site.start()
        except OSError as exc:
            await self._runner.cleanup()
            advice = ("choose an address of this machine" if exc.errno == errno.EADDRNOTAVAIL
                      else "choose another port")
            raise UserError(f"--web {self.host}:{self.port}: cannot listen ({exc.strerror}); "
                            f"{advice}") from exc
        sockets = site._server.sockets if site._server is not None else ()  # type: ignore[union-attr]
        address = sockets[0].getsockname() if sockets else (self.host, self.port)
        self.bound = (str(address[0]), int(address[1]))
        self._tasks = [asyncio.create_task(self.hub.encode_frames()),
                       asyncio.create_task(self._metrics())]
        print(f"web view: {self.url}", file=sys.stderr, flush=True)

    @property
    def url(self) -> str:
        assert self.bound is not None, "start() binds"
        host = f"[{self.bound[0]}]" if ":" in self.bound[0] else self.bound[0]
        fragment = f"#token={quote(self.token, safe='')}" if self.token else ""
        return f"http://{host}:{self.bound[1]}/{fragment}"

    async def stop(self) -> None:
        if self._runner is None:
            return
        self.hub.end()
        # Let the senders pass the end on, but never wait on a viewer for long.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.gather(*(v.gone.wait() for v in self.hub.viewers)),
                                   END_WAIT_S)
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        runner, self._runner = self._runner, None
        await runner.cleanup()

    def _token(self, given: str | None) -> bool:
        assert self.token is not None
        return given is not None and hmac.compare_digest(given.encode(), self.token.encode())

    def _refusal(self, request: web.Request) -> str | None:
        """Why a socket may not be opened before its token is seen; None when it may."""
        host = (request.host or "").lower()
        try:
            name = (request.url.host or "").lower()
        except ValueError:  # "Host: localhost:99999"
            return f"Host {host!r} is not an address"
        if self.token is None and name not in (*LOOPBACK_NAMES, self.host.lower()):
            return f"Host {host!r} is not this machine's name for the view"
        origin = request.headers.get("Origin")
        if origin is not None and urlsplit(origin).netloc.lower() != host:
            return f"Origin {origin!r} is another site"
        if len(self.hub.viewers) + self._waiting >= MAX_VIEWERS:
            return f"{MAX_VIEWERS} viewers already"
        return None

    async def _index(self, request: web.Request) -> web.StreamResponse:
        return web.Response(text=_page(), content_type="text/html")

    async def _socket(self, request: web.Request) -> web.StreamResponse:
        refusal = self._refusal(request)
        if refusal is not None:
            log.warning("web view: a viewer refused (%s)", refusal)
            raise (web.HTTPServiceUnavailable if "viewers" in refusal
                   else web.HTTPForbidden)(text=refusal)
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        socket = web.WebSocketResponse(heartbeat=20)
        self._waiting += 1  # counted against MAX_VIEWERS until it is a viewer or gone
        try:
            await socket.prepare(request)
            if self.token is not None \
                    and not (scheme.lower() == "bearer" and self._token(given)) \
                    and not self._token(await _first_token(socket)):
                await socket.close(code=UNAUTHORISED, message=b"bad or missing token")
                return socket
        finally:
            self._waiting -= 1
        viewer = _Viewer(backlog=deque(self.hub.snapshot()),
                         frames=request.query.get("frames", "1") != "0")
        self.hub.viewers.add(viewer)
        reader = asyncio.create_task(self._drain(socket))
        try:
            await self._send(socket, viewer, reader)
        except (ConnectionError, RuntimeError):
            pass  # the viewer left mid-send
        finally:
            viewer.gone.set()
            self.hub.viewers.discard(viewer)
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader
        return socket

    async def _send(self, socket: web.WebSocketResponse, viewer: _Viewer,
                    reader: asyncio.Task[None]) -> None:
        while not socket.closed and not reader.done():
            viewer.wake.clear()  # before looking: whatever comes during a send wakes it again
            if viewer.behind:
                while not viewer.queue.empty():
                    viewer.queue.get_nowait()
                viewer.behind, viewer.backlog = False, deque(self.hub.snapshot())
            while viewer.backlog or not viewer.queue.empty():
                text = viewer.backlog.popleft() if viewer.backlog else viewer.queue.get_nowait()
                await socket.send_str(text)
                if text == END:
                    await socket.close()
                    return
            latest = self.hub.latest_frame()
            if viewer.frames and latest is not None and latest[0] != viewer.sent_frame:
                number, event, jpeg = latest
                viewer.sent_frame = number
                if event:
                    await socket.send_str(event)
                if jpeg:
                    await socket.send_bytes(jpeg)
            if viewer.queue.empty() and not viewer.behind:
                await viewer.wake.wait()

    async def _drain(self, socket: web.WebSocketResponse) -> None:
        """Read until the viewer goes: a closed socket ends its sender."""
        async for message in socket:
            if message.type in (WSMsgType.CLOSE, WSMsgType.ERROR):
                break

    async def _metrics(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            if self.hub.metrics is not None and self.hub.viewers:
                self.hub.publish({"type": "metrics", "stages": self.hub.metrics()}, keep=False)


async def _first_token(socket: web.WebSocketResponse) -> str | None:
    """The token of the socket's first message (`{"type": "auth", "token": ...}`)."""
    try:
        message = await asyncio.wait_for(socket.receive(), AUTH_WAIT_S)
        data = json.loads(message.data) if message.type == WSMsgType.TEXT else None
    except (TimeoutError, ValueError, RecursionError):
        return None
    token = data.get("token") if isinstance(data, dict) else None
    return token if isinstance(token, str) else None


class WebView(Stage):
    """The pipeline's side of the web view: hands turns, predictions and frames to the hub
    and serves the page while the run lasts."""

    name = "web"
    inputs = (PerceivedFrame, VideoFrame, Turn, Prediction)

    def __init__(self, address: str, session: str, names: dict[str, str] | None = None,
                 run: str = "0", fps: float = 10.0) -> None:
        host, port = parse_address(address)
        self.session, self.names, self.run = session, names or {}, run
        self.hub = Hub(session, self.names, fps)
        self.server = WebServer(self.hub, host, port)

    async def start(self) -> None:
        await self.server.start()

    async def process(self, item: Item) -> Sequence[Item]:
        if isinstance(item, Turn):
            self.hub.publish(turn_event(item, self.session, self.names, self.run))
        elif isinstance(item, Prediction):
            self.hub.publish(prediction_event(item, self.session, self.run))
        elif isinstance(item, PerceivedFrame | VideoFrame):
            self.hub.frame(item)
        return ()

    async def stop(self) -> None:
        await self.server.stop()
