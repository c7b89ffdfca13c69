"""Media through PyAV (FFmpeg): a file, a pipe (`-`) or any URL FFmpeg opens.

Audio leaves as 16 kHz mono int16 `AudioChunk`s, video as RGB `VideoFrame`s,
both stamped with seconds on the session clock (container PTS minus the
container's start time). The two streams are re-interleaved by pts so that
everything downstream sees media time move forward on every edge.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import math
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import av
import av.error
import numpy as np

from stream.errors import MediaError
from stream.frames import SAMPLE_RATE, AudioChunk, Item, VideoFrame
from stream.runtime import Source
from stream.sources.pacing import Pacer

log = logging.getLogger(__name__)

MAX_INTERLEAVE_S = 20.0
"""How far apart audio and video packets may lie in the container before we give up."""
RESYNC_S = 0.2
"""An audio timestamp jump larger than this restarts the sample count (a gap in the feed)."""


@dataclass(frozen=True)
class MediaInfo:
    uri: str
    duration: float | None
    has_audio: bool
    has_video: bool
    width: int | None = None
    height: int | None = None
    fps: float | None = None


def _open(uri: str) -> av.container.InputContainer:
    target = "pipe:0" if uri == "-" else uri
    if uri != "-" and "://" not in uri and not Path(uri).exists():
        raise MediaError(f"{uri}: no such file; check the path")
    try:
        return av.open(target, mode="r", timeout=10.0)
    except (av.error.FFmpegError, OSError, UnicodeDecodeError) as exc:
        raise MediaError(f"{uri}: cannot open as media ({_reason(exc)}); "
                         "check it is a complete audio/video file or a reachable URL") from exc


def _reason(exc: BaseException) -> str:
    text = getattr(exc, "strerror", None) or str(exc)
    return text.splitlines()[0] if text else type(exc).__name__


def probe(uri: str) -> MediaInfo:
    """What the media holds, without decoding it."""
    container = _open(uri)
    try:
        return _info(uri, container)
    finally:
        container.close()


def _info(uri: str, container: av.container.InputContainer) -> MediaInfo:
    audio = container.streams.audio[0] if container.streams.audio else None
    video = container.streams.video[0] if container.streams.video else None
    if audio is None and video is None:
        raise MediaError(f"{uri}: contains neither an audio nor a video stream")
    duration = container.duration / av.time_base if container.duration else None
    fps = float(video.average_rate) if video is not None and video.average_rate else None
    return MediaInfo(
        uri=uri, duration=duration, has_audio=audio is not None, has_video=video is not None,
        width=video.codec_context.width if video is not None else None,
        height=video.codec_context.height if video is not None else None, fps=fps,
    )


class MediaSource(Source):
    """Decodes one container; video can be decimated and resized for the vision path."""

    name = "media"

    def __init__(self, uri: str, *, pacer: Pacer | None = None, video_fps: float | None = None,
                 video_size: tuple[int, int] | None = None, audio: bool = True,
                 video: bool = True) -> None:
        if video_fps is not None and video_fps <= 0:
            raise ValueError(f"video_fps must be > 0, got {video_fps}")
        self.uri = uri
        self.pacer = pacer or Pacer()
        self.video_fps = video_fps
        self.video_size = video_size
        self.want_audio, self.want_video = audio, video
        self.decode_errors = 0
        self._container: av.container.InputContainer | None = None
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"decode:{uri}")
        self._inflight: asyncio.Future[list[Item] | None] | None = None
        self.info: MediaInfo = self._open_container()

    def _open_container(self) -> MediaInfo:
        self._container = _open(self.uri)
        try:
            info = _info(self.uri, self._container)
        except MediaError:
            self._container.close()
            raise
        if not info.has_audio:
            log.warning("%s: no audio stream; voice activity and speech turns are unavailable",
                        self.uri)
        if not info.has_video:
            log.warning("%s: no video stream; turns will carry no key frames", self.uri)
        return info

    async def items(self) -> AsyncIterator[Item]:
        expected = {kind for kind, wanted in ((AudioChunk, self.want_audio and self.info.has_audio),
                                              (VideoFrame, self.want_video and self.info.has_video))
                    if wanted}
        merger = _PtsReorder(self.uri, expected)
        decoded = self._decode()
        loop = asyncio.get_running_loop()
        seq = 0
        try:
            while True:
                # One worker thread owns the decoder; a cancelled await must not close the
                # container under it, so the finally below waits for the batch in flight.
                self._inflight = loop.run_in_executor(self._worker, _next_batch, decoded)
                batch = await self._inflight
                ready = merger.drain() if batch is None else merger.push(batch)
                for item in ready:
                    await self.pacer.wait_until(item.pts)
                    yield replace(item, seq=seq)
                    seq += 1
                if batch is None:
                    return
        finally:
            await self._settle()
            await loop.run_in_executor(self._worker, decoded.close)

    async def _settle(self) -> None:
        if self._inflight is not None and not self._inflight.done():
            await asyncio.wait([self._inflight])
        self._inflight = None

    def _decode(self) -> Iterator[list[Item]]:
        container = self._container
        assert container is not None
        streams = []
        if self.want_audio and container.streams.audio:
            streams.append(container.streams.audio[0])
        if self.want_video and container.streams.video:
            video = container.streams.video[0]
            video.thread_type = "AUTO"
            streams.append(video)
        if not streams:
            return
        origin = container.start_time / av.time_base if container.start_time else 0.0
        audio = _AudioConverter(origin, self.uri)
        video = _VideoConverter(origin, self.uri, self.video_fps, self.video_size)
        try:
            for packet in container.demux(*streams):
                try:
                    frames = packet.decode()
                except av.error.InvalidDataError:
                    self._count_decode_error(packet)
                    continue
                out: list[Item] = []
                for frame in frames:
                    if isinstance(frame, av.AudioFrame):
                        out.extend(audio.convert(frame))
                    else:
                        out.extend(video.convert(frame))
                if out:
                    yield out
            tail = audio.flush()
            if tail:
                yield tail
        except av.error.FFmpegError as exc:
            raise MediaError(f"{self.uri}: decoding failed ({_reason(exc)}); "
                             "the file may be truncated or corrupt") from exc

    def _count_decode_error(self, packet: av.Packet) -> None:
        self.decode_errors += 1
        if self.decode_errors == 1:
            log.warning("%s: skipping undecodable %s packet(s); the file may be damaged",
                        self.uri, packet.stream.type)

    async def close(self) -> None:
        await self._settle()
        if self._container is not None:
            self._container.close()
            self._container = None
        self._worker.shutdown(wait=True)


def _next_batch(decoded: Iterator[list[Item]]) -> list[Item] | None:
    return next(decoded, None)


class _AudioConverter:
    """Resamples to 16 kHz mono int16; timestamps follow the sample count."""

    def __init__(self, origin: float, uri: str) -> None:
        self.origin, self.uri = origin, uri
        self.resampler = av.AudioResampler(format="s16", layout="mono", rate=SAMPLE_RATE)
        self.next_pts: float | None = None

    def convert(self, frame: av.AudioFrame) -> list[Item]:
        if frame.time is not None:
            stamped = frame.time - self.origin
            if self.next_pts is None or abs(stamped - self.next_pts) > RESYNC_S:
                self.next_pts = max(stamped, 0.0)
        elif self.next_pts is None:
            self.next_pts = 0.0
        return self._chunks(self.resampler.resample(frame))

    def flush(self) -> list[Item]:
        return self._chunks(self.resampler.resample(None)) if self.next_pts is not None else []

    def _chunks(self, frames: list[av.AudioFrame]) -> list[Item]:
        out: list[Item] = []
        for resampled in frames:
            samples = resampled.to_ndarray().reshape(-1).astype(np.int16, copy=False)
            if samples.size == 0:
                continue
            assert self.next_pts is not None
            out.append(AudioChunk(pts=self.next_pts, samples=samples, source=self.uri))
            self.next_pts += samples.size / SAMPLE_RATE
        return out


class _VideoConverter:
    """RGB frames, optionally decimated to `fps` and resized to `size` (w, h)."""

    def __init__(self, origin: float, uri: str, fps: float | None,
                 size: tuple[int, int] | None) -> None:
        self.origin, self.uri, self.fps, self.size = origin, uri, fps, size
        self.last_bucket = -math.inf
        self.last_pts = -math.inf

    def convert(self, frame: av.VideoFrame) -> list[Item]:
        if frame.time is None:
            return []
        pts = frame.time - self.origin
        if pts <= self.last_pts:
            return []  # duplicated timestamp from a broken stream
        if self.fps is not None:
            bucket = math.floor(pts * self.fps + 1e-6)
            if bucket <= self.last_bucket:
                return []
            self.last_bucket = bucket
        self.last_pts = pts
        if self.size is not None:
            width, height = self.size
            image = frame.reformat(width=width, height=height, format="rgb24").to_ndarray()
        else:
            image = frame.to_ndarray(format="rgb24")
        return [VideoFrame(pts=max(pts, 0.0), image=image, source=self.uri)]


class _PtsReorder:
    """Re-interleaves audio and video by pts within a bounded window."""

    def __init__(self, uri: str, expected: set[type]) -> None:
        self.uri, self.expected = uri, expected
        self.heap: list[tuple[float, int, Item]] = []
        self.counter = 0
        self.emitted = -math.inf
        self.newest: dict[type, float] = {}

    def push(self, items: list[Item]) -> list[Item]:
        for item in items:
            heapq.heappush(self.heap, (item.pts, self.counter, item))
            self.counter += 1
            self.newest[type(item)] = item.pts
        # Safe to release what is older than the newest item of the lagging stream.
        horizon = min(self.newest.get(kind, -math.inf) for kind in self.expected)
        newest = max(self.newest.values())
        out = []
        while self.heap and (self.heap[0][0] <= horizon
                             or self.heap[0][0] < newest - MAX_INTERLEAVE_S):
            out.append(self._pop())
        return out

    def drain(self) -> list[Item]:
        return [self._pop() for _ in range(len(self.heap))]

    def _pop(self) -> Item:
        pts, _, item = heapq.heappop(self.heap)
        if pts < self.emitted:
            raise MediaError(f"{self.uri}: audio and video are interleaved more than "
                             f"{MAX_INTERLEAVE_S:.0f}s apart; remux it "
                             "(ffmpeg -i IN -c copy OUT.mp4) and try again")
        self.emitted = pts
        return item
