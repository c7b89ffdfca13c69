"""The annotated video (`--annotate OUT.mp4`): the input picture and sound with the overlay,
encoded with PyAV as the run goes.

The file stays playable if the run is cut off (a crash, SIGKILL, power loss): an `.mp4`
is written as fragmented MP4 (a moov up front, one fragment per key frame, a key frame
every `KEY_EVERY_S`), a `.ts` as MPEG-TS, so at most the last couple of seconds are lost.
Every frame is drawn (the sink is fed without dropping), so the video has the input's
frame timing; sound is re-encoded from the pipeline's 16 kHz mono audio.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from stream.errors import UserError
from stream.frames import (
    SAMPLE_RATE,
    AudioChunk,
    Item,
    PerceivedFrame,
    Prediction,
    Turn,
    VideoFrame,
)
from stream.runtime import Stage
from stream.view.overlay import Overlay

VIDEO_CLOCK = 90_000
"""Video time base (1/90000 s, MPEG's): the input's frame times are kept as they are."""
KEY_EVERY_S = 1.0
AAC_FRAME = 1024
KEEP_TIMES = {"avoid_negative_ts": "disabled"}
"""The muxer would otherwise shift every stream by the AAC encoder's priming (64 ms)."""
CONTAINERS = {
    ".mp4": ("mp4", {"movflags": "frag_keyframe+empty_moov+default_base_moof", **KEEP_TIMES}),
    ".ts": ("mpegts", KEEP_TIMES),
}


def check_annotate_path(path: Path) -> None:
    if path.suffix.lower() not in CONTAINERS:
        raise UserError(f"--annotate {path}: write .mp4 (fragmented MP4) or .ts (MPEG-TS), "
                        "the containers that stay playable if the run is cut off")


class AnnotatedVideo(Stage):
    name = "annotate"
    inputs = (PerceivedFrame, VideoFrame, AudioChunk, Turn, Prediction)
    every_frame = True
    """Fed without dropping frames (compositions read this)."""

    def __init__(self, path: Path, names: dict[str, str] | None = None, crf: int = 23) -> None:
        check_annotate_path(path)
        self.path, self.crf = path, crf
        self.overlay = Overlay(names)
        self.has_audio = False
        self.frames = 0
        self._container: av.container.OutputContainer | None = None
        self._video: av.VideoStream | None = None
        self._audio: av.AudioStream | None = None
        self._pending: list[AudioChunk] = []
        """Sound that arrived before the first picture (the file opens with it)."""
        self._sound = np.zeros(0, np.int16)
        self._sound_at: int | None = None
        """Sample index (at SAMPLE_RATE) of `_sound[0]`, once sound came."""
        self._last_pts = -1
        self._broken = False
        """A write failed: the container is not touched again."""

    def bind_media(self, *, has_audio: bool, has_video: bool) -> None:
        """Called when the graph is built: the file's streams are fixed before it opens."""
        if not has_video:
            raise UserError(f"--annotate {self.path}: the input has no video to draw on; "
                            "annotate a video, or leave --annotate out")
        self.has_audio = has_audio

    async def start(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.open("wb").close()
        except OSError as exc:
            raise UserError(f"--annotate {self.path}: cannot write ({exc.strerror}); choose "
                            "another file") from exc

    async def process(self, item: Item) -> Sequence[Item]:
        try:
            if isinstance(item, Turn | Prediction):
                self.overlay.add(item)
            elif isinstance(item, AudioChunk):
                if self._container is None:
                    self._pending.append(item)
                else:
                    self._add_sound(item)
            elif isinstance(item, PerceivedFrame | VideoFrame):
                self._picture(item)
        except (OSError, av.error.FFmpegError) as exc:
            self._broken = True
            raise self._failed(exc) from exc
        return ()

    def _failed(self, exc: Exception) -> UserError:
        """The same contract as --out's: one line, what failed after how much, and advice."""
        reason = getattr(exc, "strerror", None) or str(exc)
        return UserError(f"--annotate {self.path}: writing the video failed after "
                         f"{self.frames} frames ({reason}); free space or choose another "
                         "file")

    def _picture(self, frame: PerceivedFrame | VideoFrame) -> None:
        video = frame.frame if isinstance(frame, PerceivedFrame) else frame
        if self._container is None:
            self._open(video.width, video.height)
        assert self._video is not None and self._container is not None
        pts = round(frame.pts * VIDEO_CLOCK)
        if pts <= self._last_pts:
            return  # a repeated time stamp cannot be muxed
        self._last_pts = pts
        image = self.overlay.draw(frame)[: self._video.height, : self._video.width]
        picture = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
        picture.pts, picture.time_base = pts, Fraction(1, VIDEO_CLOCK)
        self._container.mux(self._video.encode(picture))
        self.frames += 1

    def _open(self, width: int, height: int) -> None:
        fmt, options = CONTAINERS[self.path.suffix.lower()]
        try:
            container = av.open(str(self.path), "w", format=fmt, options=options)
        except OSError as exc:
            raise UserError(f"--annotate {self.path}: cannot write ({exc.strerror})") from exc
        video = container.add_stream("libx264", rate=25)
        # yuv420p wants even sides: an odd last row or column is cut.
        video.width, video.height, video.pix_fmt = width // 2 * 2, height // 2 * 2, "yuv420p"
        video.time_base = Fraction(1, VIDEO_CLOCK)
        video.codec_context.time_base = Fraction(1, VIDEO_CLOCK)
        video.options = {"crf": str(self.crf), "preset": "veryfast",
                         # no B-frames: no reordering delay ahead of the first picture
                         "x264-params": f"keyint={round(25 * KEY_EVERY_S)}:bframes=0"}
        self._container, self._video = container, video
        if self.has_audio:
            audio = container.add_stream("aac", rate=SAMPLE_RATE, layout="mono")
            audio.time_base = Fraction(1, SAMPLE_RATE)
            self._audio = audio
            for chunk in self._pending:
                self._add_sound(chunk)
        self._pending = []

    def _add_sound(self, chunk: AudioChunk) -> None:
        """Sound is one continuous run from its first sample: a gap is filled with
        silence, a repeated stretch is dropped, so it stays in step with the picture."""
        if self._audio is None:
            return
        at = round(chunk.pts * SAMPLE_RATE)
        if self._sound_at is None:
            self._sound_at = at
        end = self._sound_at + len(self._sound)
        samples = chunk.samples[max(0, end - at):]
        if at > end:
            samples = np.concatenate([np.zeros(at - end, np.int16), samples])
        self._sound = np.concatenate([self._sound, samples])
        self._encode_sound()

    def _encode_sound(self, final: bool = False) -> None:
        if self._audio is None or self._container is None or self._sound_at is None:
            return
        whole = len(self._sound) if final else len(self._sound) // AAC_FRAME * AAC_FRAME
        for at in range(0, whole, AAC_FRAME):
            block = self._sound[at: at + AAC_FRAME].astype(np.float32) / 32768.0
            block = np.pad(block, (0, AAC_FRAME - len(block)))
            sound = av.AudioFrame.from_ndarray(block[None, :], format="fltp", layout="mono")
            sound.sample_rate, sound.pts = SAMPLE_RATE, self._sound_at + at
            self._container.mux(self._audio.encode(sound))
        self._sound = self._sound[whole:]
        self._sound_at += whole

    async def stop(self) -> None:
        container = self._container
        if container is None:
            return
        if self._broken:
            # FFmpeg crashes the process when a muxer that failed a write is used again
            # (a flush, a trailer): the file is given up as it is.
            self._container = None
            return
        try:
            if self._audio is not None:
                self._encode_sound(final=True)
                container.mux(self._audio.encode(None))
            if self._video is not None:
                container.mux(self._video.encode(None))
        except (OSError, av.error.FFmpegError) as exc:
            raise self._failed(exc) from exc
        finally:
            self._container = None
            with contextlib.suppress(OSError, av.error.FFmpegError):
                container.close()
