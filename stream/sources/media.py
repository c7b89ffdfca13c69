"""Media through PyAV (FFmpeg): a file, a pipe (`-`) or any URL FFmpeg opens.

Audio leaves as 16 kHz mono int16 `AudioChunk`s, video as RGB `VideoFrame`s,
both stamped with seconds on the session clock (container PTS minus the
container's start time). The two streams are re-interleaved by pts so that
everything downstream sees media time move forward on every edge.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import av
import av.error

from stream.errors import MediaError
from stream.frames import AudioChunk, Item, VideoFrame
from stream.runtime import Source
from stream.sources.decoding import Decoder, PtsReorder, stream_start
from stream.sources.pacing import Pacer

log = logging.getLogger(__name__)



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
        self.last_pts: float | None = None
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
        merger = PtsReorder(self.uri, expected)
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
                    self.last_pts = item.pts
                    yield replace(item, seq=seq)
                    seq += 1
                if batch is None:
                    if (short := self.ended_early) is not None:
                        log.warning("%s: the media ended at %.1fs, but the container says it "
                                    "lasts %.1fs: the file may be truncated", self.uri, *short)
                    return
        finally:
            await self._settle()
            await loop.run_in_executor(self._worker, decoded.close)

    @property
    def ended_early(self) -> tuple[float, float] | None:
        """(where the media ended, where the container said it would) when decoding stopped
        more than a second (and 5 %) before the container's duration: a truncated file."""
        duration = self.info.duration
        if self.last_pts is None or not duration:
            return None
        if duration - self.last_pts > max(1.0, 0.05 * duration):
            return self.last_pts, duration
        return None

    async def _settle(self) -> None:
        if self._inflight is not None and not self._inflight.done():
            await asyncio.wait([self._inflight])
        self._inflight = None

    def _decode(self) -> Iterator[list[Item]]:
        container = self._container
        assert container is not None
        origin = stream_start(container)
        decoder = Decoder(container, self.uri, lambda _kind, t: t - origin, audio=self.want_audio,
                          video=self.want_video, video_fps=self.video_fps,
                          video_size=self.video_size)
        try:
            yield from decoder.batches()
        except av.error.FFmpegError as exc:
            if self.uri == "-" and "mp4" in container.format.name:
                raise MediaError(
                    f"-: decoding failed ({_reason(exc)}): an MP4 keeps its index at its end, "
                    "which a pipe cannot seek to; pipe a streamable container instead (MPEG-TS "
                    "or fragmented MP4: ffmpeg -i IN -c copy -f mpegts -)") from exc
            raise MediaError(f"{self.uri}: decoding failed ({_reason(exc)}); "
                             "the file may be truncated or corrupt") from exc
        finally:
            self.decode_errors += decoder.bad_packets

    async def close(self) -> None:
        await self._settle()
        if self._container is not None:
            self._container.close()
            self._container = None
        self._worker.shutdown(wait=True)


def _next_batch(decoded: Iterator[list[Item]]) -> list[Item] | None:
    return next(decoded, None)
