"""Media source: formats, timestamps, missing streams, broken files."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest

from stream.errors import MediaError
from stream.frames import SAMPLE_RATE, AudioChunk, Item, VideoFrame
from stream.sources.media import MediaSource, probe
from tests.media import tone_track, write_media


async def _read(source: MediaSource) -> list[Item]:
    try:
        return [item async for item in source.items()]
    finally:
        await source.close()


async def test_demo_decodes_to_16k_mono_audio_and_rgb_frames(demo: Path, truth: dict) -> None:
    items = await _read(MediaSource(str(demo)))
    audio = [i for i in items if isinstance(i, AudioChunk)]
    video = [i for i in items if isinstance(i, VideoFrame)]
    assert all(a.samples.dtype == np.int16 and a.samples.ndim == 1 for a in audio)
    total = sum(len(a.samples) for a in audio) / SAMPLE_RATE
    assert abs(total - truth["duration"]) < 0.1
    assert len(video) == round(truth["duration"] * truth["fps"])
    assert video[0].image.shape == (480, 640, 3) and video[0].image.dtype == np.uint8
    assert abs(video[1].pts - video[0].pts - 1 / 30) < 1e-6
    pts = [i.pts for i in items]
    assert pts == sorted(pts), "audio and video leave interleaved by media time"
    for a, b in itertools.pairwise(audio):
        assert abs(b.pts - a.end) < 1e-6, "audio timestamps follow the sample count"


async def test_decimation_and_resize_for_the_vision_path(demo: Path) -> None:
    source = MediaSource(str(demo), video_fps=5, video_size=(320, 240), audio=False)
    frames = await _read(source)
    assert all(isinstance(f, VideoFrame) and f.image.shape == (240, 320, 3) for f in frames)
    gaps = np.diff([f.pts for f in frames])
    assert np.allclose(gaps, 0.2, atol=1e-6)


async def test_audio_only_file_runs_with_a_warning(tmp_path: Path, caplog) -> None:
    path = write_media(tmp_path / "voice.m4a", audio=tone_track([(0.5, 1.5)], 2.0), video=False)
    source = MediaSource(str(path))
    assert "no video stream" in caplog.text
    items = await _read(source)
    assert items and all(isinstance(i, AudioChunk) for i in items)


async def test_video_only_file_runs_with_a_warning(tmp_path: Path, caplog) -> None:
    path = write_media(tmp_path / "silent.mp4", duration=1.0)
    source = MediaSource(str(path))
    assert "no audio stream" in caplog.text
    items = await _read(source)
    assert len(items) == 25 and all(isinstance(i, VideoFrame) for i in items)


@pytest.mark.parametrize("content", [b"", b"this is not a video at all" * 100])
def test_unreadable_file_is_a_media_error_naming_it(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "broken.mp4"
    path.write_bytes(content)
    with pytest.raises(MediaError, match=r"broken\.mp4: cannot open as media"):
        probe(str(path))


def test_missing_file_is_a_media_error(tmp_path: Path) -> None:
    with pytest.raises(MediaError, match="no such file"):
        MediaSource(str(tmp_path / "nope.mp4"))


async def test_truncated_file_fails_cleanly_or_decodes_its_head(tmp_path: Path, demo: Path) -> None:
    data = demo.read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: len(data) // 2])
    try:
        source = MediaSource(str(cut))
    except MediaError as exc:
        assert "cut.mp4" in str(exc)
        return
    items = await _read(source)  # moov first: what is there decodes, then the stream ends
    assert items
