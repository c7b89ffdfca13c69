"""Live inputs through PyAV: network streams (RTSP, UDP/TCP MPEG-TS, SRT, ...), webcams
(V4L2) and microphones (ALSA, Pulse).

Each input is read by its own thread. A read that stalls for `stall_timeout_s`
closes the input and reopens it with exponential backoff; the session clock
goes on: the first frame after a (re)connect is stamped with the wall time
elapsed since the session began, and the frames after it keep their spacing.
Timestamps that jump (a sender that loops or restarts) or streams that drift apart
are taken up the same way (`stream.sources.timeline`), with a warning, never an
error. The session ends when every input has been silent for `give_up_s` (never by
default), or on a stop. If the pipeline falls behind, stale video is dropped here
and counted; audio is never dropped. Each video frame carries the wall time it left
the source (`received`), from which perception tells a CPU that falls behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import av
import av.error
from pydantic import BaseModel, ConfigDict, Field

from stream.errors import UserError
from stream.frames import AudioChunk, Item, VideoFrame
from stream.runtime import Source
from stream.sources.decoding import Decoder, PtsReorder, stream_start
from stream.sources.timeline import MAX_SKEW_S, SessionClock

log = logging.getLogger(__name__)


class LiveConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    stall_timeout_s: float = Field(3.0, gt=0, description="no data this long: reconnect")
    reconnect_min_s: float = Field(0.5, gt=0, description="first reconnect delay")
    reconnect_max_s: float = Field(8.0, gt=0, description="longest reconnect delay")
    give_up_s: float | None = Field(
        None, gt=0, description="end the session after this long without data (null: never)")
    max_backlog: int = Field(
        64, ge=1, description="decoded batches waiting before stale video is dropped")
    mqtt_inputs: bool = Field(
        True, description="with --mqtt, take transcript lines and control commands from the broker")
    transcript_latency_s: float = Field(
        1.0, ge=0, description="how long turns wait for transcript lines from MQTT")


LIVE_WINDOW_S = MAX_SKEW_S + 1.0
"""How long a live feed waits for a stream that stopped (a muted microphone, a camera
that froze) before the other goes on without it."""
STOP_GRACE_S = 0.5
"""After a stop, how long the session still waits for readers to hand over what they read;
a reader blocked in an open or a reconnect has nothing and is not waited for."""
_GRACE_OVER = -1
"""Queued in place of an input's index once `STOP_GRACE_S` has passed after a stop."""
CAMERA = "camera"
"""`LiveInput.format` for a camera read through OpenCV (PyAV's FFmpeg has no v4l2 input)."""


@dataclass(frozen=True)
class LiveInput:
    """One thing to open: a URL or device, with FFmpeg's format name and options."""

    url: str
    format: str | None = None
    options: dict[str, str] = field(default_factory=dict)
    audio: bool = True
    video: bool = True
    reconnect: bool = True
    """False for a pipe: its end is the end of the session."""


class LiveSource(Source):
    name = "media"

    def __init__(self, inputs: list[LiveInput], config: LiveConfig | None = None, *,
                 video_fps: float | None = None,
                 video_size: tuple[int, int] | None = None) -> None:
        if not inputs:
            raise ValueError("a live source needs at least one input")
        for spec in inputs:
            if spec.format == CAMERA and spec.url.startswith("/dev/") and \
                    not Path(spec.url).exists():
                raise UserError(f"{spec.url}: no such camera (ls /dev/video* lists the cameras "
                                "of this machine)")
            if spec.format not in (None, CAMERA) and spec.format not in av.formats_available:
                raise UserError(f"{spec.url}: this FFmpeg build has no {spec.format!r} input "
                                "(try alsa:DEVICE for a microphone, or --format with another)")
        self.inputs, self.config = inputs, config or LiveConfig()
        self.uri = " + ".join(i.url for i in inputs)
        self.video_fps, self.video_size = video_fps, video_size
        self.reconnects = 0
        self.video_dropped = 0
        self._reorder: PtsReorder | None = None
        self.received = False
        """Whether any input ever delivered data."""
        self._clock = SessionClock(self.uri)
        self._stop = threading.Event()
        self._queue: asyncio.Queue[tuple[int, list[Item] | None]] | None = None
        self._threads: list[threading.Thread] = []
        self._warned: set[int] = set()
        self.on_end: list[Callable[[], None]] = []
        """Called when the feed has ended (given up or stopped)."""

    def now(self) -> float:
        """The newest media time read so far on the session clock."""
        return self._clock.last

    @property
    def resyncs(self) -> int:
        """Timestamp jumps and drifts taken up (the clock went on at the present)."""
        return self._clock.resyncs

    @property
    def late(self) -> int:
        """Items dropped for arriving after later media had gone on."""
        return self._reorder.late if self._reorder is not None else 0

    @property
    def has_audio(self) -> bool:
        return any(spec.audio for spec in self.inputs)

    @property
    def has_video(self) -> bool:
        return any(spec.video for spec in self.inputs)

    async def items(self) -> AsyncIterator[Item]:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[int, list[Item] | None]] = asyncio.Queue()
        reorder = PtsReorder(self.uri, {kind for spec in self.inputs for kind in _kinds(spec)},
                             window=LIVE_WINDOW_S, live=True)
        self._reorder = reorder
        for index, spec in enumerate(self.inputs):
            thread = threading.Thread(target=self._read, args=(index, spec, loop, queue),
                                      daemon=True, name=f"live:{spec.url}")
            thread.start()
            self._threads.append(thread)
        self._queue = queue
        open_inputs, seq = set(range(len(self.inputs))), 0
        try:
            while open_inputs:
                index, batch = await queue.get()
                if index == _GRACE_OVER:
                    break  # a reader still blocked (opening, reconnecting) has read nothing
                if batch is None:  # that input gave up: stop waiting for its kinds
                    open_inputs.discard(index)
                    reorder.expected = {kind for i in open_inputs
                                        for kind in _kinds(self.inputs[i])}
                    continue
                if queue.qsize() > self.config.max_backlog:
                    batch = self._drop_video(batch)
                for item in reorder.push(batch):
                    yield _stamped(item, seq)
                    seq += 1
            for item in reorder.drain():
                yield _stamped(item, seq)
                seq += 1
        finally:
            self._stop.set()
            for callback in self.on_end:
                callback()

    def _drop_video(self, batch: list[Item]) -> list[Item]:
        kept = [item for item in batch if not isinstance(item, VideoFrame)]
        dropped = len(batch) - len(kept)
        if dropped and self.video_dropped == 0:
            log.warning("%s: the pipeline is behind the live feed; dropping stale video",
                        self.uri)
        self.video_dropped += dropped
        return kept

    def _read(self, index: int, spec: LiveInput, loop: asyncio.AbstractEventLoop,
              queue: asyncio.Queue[tuple[int, list[Item] | None]]) -> None:
        delay = self.config.reconnect_min_s
        last_data = time.monotonic()
        connected_once = False
        try:
            while not self._stop.is_set():
                reader = self._read_camera if spec.format == CAMERA else self._connect_and_read
                got = reader(index, spec, loop, queue)
                self.received = self.received or got
                if not spec.reconnect:
                    return
                if got:
                    last_data, delay, connected_once = time.monotonic(), \
                        self.config.reconnect_min_s, True
                silent = time.monotonic() - last_data
                if self.config.give_up_s is not None and silent >= self.config.give_up_s:
                    log.warning("%s: no data for %.1fs; ending the session", spec.url, silent)
                    return
                if connected_once:
                    self.reconnects += 1
                    log.warning("%s: stalled; reconnecting in %.1fs", spec.url, delay)
                self._stop.wait(delay)
                delay = min(delay * 2, self.config.reconnect_max_s)
        finally:
            _hand_over(loop, queue, index, None)

    def _connect_and_read(self, index: int, spec: LiveInput, loop: asyncio.AbstractEventLoop,
                          queue: asyncio.Queue[tuple[int, list[Item] | None]]) -> bool:
        """Read until the input stalls or ends; True if any data came."""
        timeout = self.config.stall_timeout_s
        try:
            container = av.open("pipe:0" if spec.url == "-" else spec.url, format=spec.format,
                                options=dict(spec.options),
                                timeout=(max(timeout, 5.0), timeout))
        except (av.error.FFmpegError, OSError) as exc:
            level = logging.DEBUG if index in self._warned else logging.WARNING
            self._warned.add(index)
            log.log(level, "%s: cannot open (%s); retrying", spec.url, exc)
            return False
        got = False
        try:
            start = stream_start(container)
            decoder = Decoder(container, spec.url, self._clock.connection(start), audio=spec.audio,
                              video=spec.video, video_fps=self.video_fps,
                              video_size=self.video_size)
            for batch in decoder.batches():
                got = True
                _hand_over(loop, queue, index, batch)
                if self._stop.is_set():
                    break
        except (av.error.FFmpegError, OSError) as exc:
            log.debug("%s: read stopped (%s)", spec.url, exc)
        finally:
            container.close()
        return got

    def _read_camera(self, index: int, spec: LiveInput, loop: asyncio.AbstractEventLoop,
                     queue: asyncio.Queue[tuple[int, list[Item] | None]]) -> bool:
        """Frames from OpenCV, stamped by the wall clock as they arrive."""
        import cv2

        number = spec.url.removeprefix("/dev/video")
        device: int | str = int(number) if number.isdigit() else spec.url
        capture = cv2.VideoCapture(device, cv2.CAP_V4L2 if isinstance(device, int)
                                   else cv2.CAP_ANY)
        if not capture.isOpened():
            level = logging.DEBUG if index in self._warned else logging.WARNING
            self._warned.add(index)
            log.log(level, "%s: cannot open the camera (busy, or no permission?); retrying",
                    spec.url)
            return False
        capture.set(cv2.CAP_PROP_READ_TIMEOUT_MSEC, self.config.stall_timeout_s * 1000)
        got, last_bucket = False, -math.inf
        try:
            while not self._stop.is_set():
                ok, bgr = capture.read()
                if not ok:
                    break
                t = self._clock.wall()
                if self.video_fps is not None:
                    bucket = math.floor(t * self.video_fps)
                    if bucket <= last_bucket:
                        continue
                    last_bucket = bucket
                if self.video_size is not None:
                    bgr = cv2.resize(bgr, self.video_size, interpolation=cv2.INTER_AREA)
                rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
                got = True
                frame = VideoFrame(pts=t, image=rgb, source=spec.url)
                _hand_over(loop, queue, index, [frame])
        finally:
            capture.release()
        return got

    def stop(self) -> bool:
        self._stop.set()  # readers finish their packet and end; queued batches still flow
        if self._queue is not None:  # called on the session's loop (signal, MQTT control)
            asyncio.get_running_loop().call_later(STOP_GRACE_S, self._queue.put_nowait,
                                                  (_GRACE_OVER, None))
        return True

    async def close(self) -> None:
        self._stop.set()
        for thread in self._threads:  # a reader blocked in an open ends by itself (daemon)
            await asyncio.to_thread(thread.join, STOP_GRACE_S)


def _stamped(item: Item, seq: int) -> Item:
    """Numbered; a frame also with the time it leaves the source: from then on, how long it
    waits is the pipeline's doing (not the network's, nor the interleaving's)."""
    if isinstance(item, VideoFrame):
        return replace(item, seq=seq, received=time.monotonic())
    return replace(item, seq=seq)


def _hand_over(loop: asyncio.AbstractEventLoop,
               queue: asyncio.Queue[tuple[int, list[Item] | None]], index: int,
               batch: list[Item] | None) -> None:
    """From a reader thread to the session's loop; after a stop the loop may be gone."""
    with contextlib.suppress(RuntimeError):
        loop.call_soon_threadsafe(queue.put_nowait, (index, batch))


def _kinds(spec: LiveInput) -> set[type]:
    return ({AudioChunk} if spec.audio else set()) | ({VideoFrame} if spec.video else set())

