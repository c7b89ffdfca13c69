"""Decoded frames to pipeline items: resampling, timestamps, interleaving.

Shared by the file and live sources. Timestamps go through `to_session`, which
maps a stream's time (its kind, "audio" or "video", and seconds) onto the session
clock: a file subtracts its start time, a live feed keeps one continuous clock
across reconnects, loops and restarts (`stream.sources.timeline`).
"""

from __future__ import annotations

import heapq
import logging
import math
from collections.abc import Callable, Iterator

import av
import av.error
import numpy as np

from stream.errors import MediaError
from stream.frames import SAMPLE_RATE, AudioChunk, Item, VideoFrame

log = logging.getLogger(__name__)

SessionTime = Callable[[str, float], float]
MAX_INTERLEAVE_S = 20.0
"""How far apart audio and video packets may lie in a file before we give up."""
MAX_PRIMING_S = 0.2
"""Audio ahead of the first picture by at most this much is codec priming, not content."""
RESYNC_S = 0.2
"""Audio timestamps and the sample count this far apart are brought together again: a
timestamp ahead (a gap in the feed) moves the count on, one behind (more samples than
time: a drifting clock, an overlap) drops the samples that would lie over audio already
out. Audio never goes back in time."""


class AudioConverter:
    """Resamples to 16 kHz mono int16; timestamps follow the sample count."""

    def __init__(self, to_session: SessionTime, uri: str) -> None:
        self.to_session, self.uri = to_session, uri
        self.resampler = av.AudioResampler(format="s16", layout="mono", rate=SAMPLE_RATE)
        self.next_pts: float | None = None
        self.overlap = 0
        """Samples still to drop: they would lie over audio already out."""
        self.dropped = 0
        """Samples dropped for lying over audio already out, over the stream."""

    def convert(self, frame: av.AudioFrame) -> list[Item]:
        if frame.time is not None:
            stamped = self.to_session("audio", frame.time)
            if self.next_pts is None or stamped - self.next_pts > RESYNC_S:
                self.next_pts = stamped  # before 0 (codec priming): trimmed in _chunks
                self.overlap = 0
            elif self.next_pts - stamped > RESYNC_S:
                self.overlap = round((self.next_pts - stamped) * SAMPLE_RATE)
        elif self.next_pts is None:
            self.next_pts = 0.0
        return self._chunks(self.resampler.resample(frame))

    def flush(self) -> list[Item]:
        return self._chunks(self.resampler.resample(None)) if self.next_pts is not None else []

    def _chunks(self, frames: list[av.AudioFrame]) -> list[Item]:
        out: list[Item] = []
        for resampled in frames:
            samples = resampled.to_ndarray().reshape(-1).astype(np.int16, copy=False)
            assert self.next_pts is not None
            if self.next_pts < 0:  # samples from before the session's start
                skip = min(samples.size, round(-self.next_pts * SAMPLE_RATE))
                samples = samples[skip:]
                self.next_pts = max(0.0, self.next_pts + skip / SAMPLE_RATE)
            if self.overlap:
                skip = min(samples.size, self.overlap)
                samples, self.overlap = samples[skip:], self.overlap - skip
                self.dropped += skip
            if samples.size == 0:
                continue
            out.append(AudioChunk(pts=self.next_pts, samples=samples, source=self.uri))
            self.next_pts += samples.size / SAMPLE_RATE
        return out


class VideoConverter:
    """RGB frames, optionally decimated to `fps` and resized to `size` (w, h)."""

    def __init__(self, to_session: SessionTime, uri: str, fps: float | None,
                 size: tuple[int, int] | None) -> None:
        self.to_session, self.uri, self.fps, self.size = to_session, uri, fps, size
        self.last_bucket = -math.inf
        self.last_pts = -math.inf

    def convert(self, frame: av.VideoFrame) -> list[Item]:
        if frame.time is None:
            return []
        pts = self.to_session("video", frame.time)
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


def stream_start(container: av.container.InputContainer) -> float:
    """Session zero: where the picture starts (audio may carry codec priming before it, as
    AAC does in MPEG-TS), else where the container starts."""
    start = container.start_time / av.time_base if container.start_time else 0.0
    for stream in container.streams.video:
        if stream.start_time is not None and stream.time_base is not None:
            picture = float(stream.start_time * stream.time_base)
            if start <= picture <= start + MAX_PRIMING_S:  # never cut real audio away
                return picture
    return start


class Decoder:
    """Demuxes and decodes one container into batches of items, one batch per packet."""

    def __init__(self, container: av.container.InputContainer, uri: str,
                 to_session: SessionTime, *, audio: bool = True, video: bool = True,
                 video_fps: float | None = None,
                 video_size: tuple[int, int] | None = None) -> None:
        self.container, self.uri = container, uri
        self.streams: list[av.stream.Stream] = []
        if audio and container.streams.audio:
            self.streams.append(container.streams.audio[0])
        if video and container.streams.video:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            self.streams.append(stream)
        self.audio = AudioConverter(to_session, uri)
        self.video = VideoConverter(to_session, uri, video_fps, video_size)
        self.bad_packets = 0

    def batches(self) -> Iterator[list[Item]]:
        """Raises av.error.FFmpegError when the container cannot be read on."""
        if not self.streams:
            return
        for packet in self.container.demux(*self.streams):
            try:
                frames = packet.decode()
            except av.error.InvalidDataError:
                self.bad_packets += 1
                if self.bad_packets == 1:
                    log.warning("%s: skipping undecodable %s packet(s); the input may be damaged",
                                self.uri, packet.stream.type)
                continue
            out: list[Item] = []
            for frame in frames:
                if isinstance(frame, av.AudioFrame):
                    out.extend(self.audio.convert(frame))
                else:
                    out.extend(self.video.convert(frame))
            if out:
                yield out
        tail = self.audio.flush()
        if tail:
            yield tail


class PtsReorder:
    """Re-interleaves audio and video by pts within a bounded window.

    A file whose streams lie further apart than the window cannot be replayed in order
    and ends with advice to remux it. A live feed waits at most `window` for a stream
    that stopped, and an item that still comes too late is dropped and counted, not
    fatal. Within one connection the clock keeps audio and video within
    `timeline.MAX_SKEW_S`, so only separate inputs (a webcam and a microphone) can
    bring one.
    """

    def __init__(self, uri: str, expected: set[type], window: float = MAX_INTERLEAVE_S,
                 live: bool = False) -> None:
        self.uri, self.expected = uri, expected
        self.window, self.live = window, live
        self.heap: list[tuple[float, int, Item]] = []
        self.counter = 0
        self.emitted = -math.inf
        self.newest: dict[type, float] = {}
        self.late = 0
        """Items dropped for coming after later ones had gone out (live only)."""

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
                             or self.heap[0][0] < newest - self.window):
            if (item := self._pop()) is not None:
                out.append(item)
        return out

    def drain(self) -> list[Item]:
        return [item for _ in range(len(self.heap)) if (item := self._pop()) is not None]

    def _pop(self) -> Item | None:
        pts, _, item = heapq.heappop(self.heap)
        if pts < self.emitted:
            if not self.live:
                raise MediaError(f"{self.uri}: audio and video are interleaved more than "
                                 f"{self.window:.0f}s apart; remux it "
                                 "(ffmpeg -i IN -c copy OUT.mp4) and try again")
            if self.late == 0:
                log.warning("%s: a %s item came %.1f s after later media had gone on; "
                            "dropped (counted as late)", self.uri, type(item).__name__,
                            self.emitted - pts)
            self.late += 1
            return None
        self.emitted = pts
        return item
