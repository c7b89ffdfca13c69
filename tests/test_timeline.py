"""The live session clock against timestamps that jump, drift and stall (a fake wall clock)."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from stream.errors import MediaError
from stream.frames import AudioChunk, VideoFrame
from stream.sources.decoding import PtsReorder
from stream.sources.timeline import JUMP_S, MAX_SKEW_S, RESUME_S, SessionClock


class Wall:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def _feed(connection, wall: Wall, kinds: list[tuple[str, float]], step: float) -> list[float]:
    """Each (kind, raw) in turn, the wall clock moving `step` after each."""
    out = []
    for kind, raw in kinds:
        out.append(connection(kind, raw))
        wall.t += step
    return out


def _interleaved(start: float, end: float, step: float = 0.04) -> list[tuple[str, float]]:
    return [(kind, t) for t in np.arange(start, end, step) for kind in ("audio", "video")]


def test_a_loop_that_jumps_back_goes_on_at_the_present_with_both_kinds_in_step(
        caplog: pytest.LogCaptureFixture) -> None:
    wall = Wall()
    clock = SessionClock("udp://x", wall)
    connection = clock.connection(1.4)
    first = _feed(connection, wall, _interleaved(1.4, 11.4), 0.02)
    assert first[0] == 0.0 and first[-1] == pytest.approx(10.0 - 0.04)
    # The sender loops: both kinds start again at 1.4 s, audio a frame before video.
    with caplog.at_level(logging.WARNING):
        second = _feed(connection, wall, _interleaved(1.4, 5.4), 0.02)
    assert clock.resyncs == 1
    assert caplog.text.count("jumped back 10.0 s") == 1, "one warning per event"
    times = first + second
    assert all(b >= a for a, b in zip(times[::2], times[2::2], strict=False)), "audio never back"
    assert second[0] - first[-2] == pytest.approx(RESUME_S + 0.04 - 0.04, abs=0.05)
    assert second[0] == second[1], "audio and video of one moment share one time"
    assert second[-1] - second[0] == pytest.approx(4.0 - 0.04)


def test_audio_that_restarts_seconds_after_the_video_still_takes_its_offset() -> None:
    """After a restart the sound may come seconds after the picture (a busy reader, lost
    packets): it belongs to the video's new run of timestamps all the same."""
    wall = Wall()
    clock = SessionClock("udp://x", wall)
    connection = clock.connection(None)
    _feed(connection, wall, _interleaved(0.0, 20.0), 0.02)
    video = _feed(connection, wall, [("video", t) for t in np.arange(0.0, 1.0, 0.04)], 0.001)
    wall.t += 3.0  # the reader held up
    audio = _feed(connection, wall, [("audio", 0.4)], 0.04)
    assert clock.resyncs == 1
    assert audio[0] == pytest.approx(video[10]), "raw 0.4 s of either kind: one time"


def test_an_encoder_restart_far_ahead_resumes_at_the_present() -> None:
    wall = Wall()
    clock = SessionClock("udp://x", wall)
    connection = clock.connection(None)
    first = _feed(connection, wall, _interleaved(0.0, 3.0), 0.02)
    wall.t += 1.0  # a restart takes a second
    second = _feed(connection, wall, _interleaved(95_000.0, 95_002.0), 0.02)
    assert clock.resyncs == 1
    assert first[-1] + RESUME_S < second[0] == pytest.approx(3.0 + 1.0), "at the present"
    assert second[0] == second[1]


def test_a_stall_whose_timestamps_kept_running_is_a_gap_not_a_jump() -> None:
    wall = Wall()
    clock = SessionClock("udp://x", wall)
    connection = clock.connection(None)
    first = _feed(connection, wall, _interleaved(0.0, 2.0), 0.02)
    wall.t += 5.0
    second = _feed(connection, wall, _interleaved(7.0, 8.0), 0.02)
    assert clock.resyncs == 0
    assert second[0] - first[-1] == pytest.approx(5.04)


def test_a_burst_after_a_wait_is_no_jump() -> None:
    """Media held up (a slow network, a busy CPU) arrives all at once: no jump."""
    wall = Wall()
    clock = SessionClock("udp://x", wall)
    connection = clock.connection(None)
    _feed(connection, wall, _interleaved(0.0, 1.0), 0.04)
    wall.t += 3.0
    burst = _feed(connection, wall, _interleaved(1.0, 1.0 + 2 * JUMP_S), 0.0005)
    assert clock.resyncs == 0
    assert burst[-1] == pytest.approx(1.0 + 2 * JUMP_S - 0.04)


def test_audio_that_drifts_behind_is_brought_up_never_back(
        caplog: pytest.LogCaptureFixture) -> None:
    """Audio timestamps running at 0.9 of the video's: once more than MAX_SKEW_S behind,
    audio is brought up to the video, once per event."""
    wall = Wall()
    clock = SessionClock("udp://x", wall)
    connection = clock.connection(None)
    audio, video = [], []
    with caplog.at_level(logging.WARNING):
        for t in np.arange(0.0, 45.0, 0.04):
            video.append(connection("video", t))
            audio.append(connection("audio", 0.9 * t))
            wall.t += 0.04
    assert audio == sorted(audio)
    gap = np.array(video) - np.array(audio)
    assert gap.max() <= MAX_SKEW_S + 1e-9
    assert clock.resyncs == caplog.text.count("audio is") == 2  # at 20 s and 40 s


def test_a_camera_clock_reads_the_wall_and_never_repeats() -> None:
    wall = Wall()
    clock = SessionClock("/dev/video0", wall)
    assert clock.wall() == 0.0
    assert clock.wall() == pytest.approx(0.001)
    wall.t += 1.0
    assert clock.wall() == pytest.approx(1.0)


def _item(kind: type, pts: float) -> AudioChunk | VideoFrame:
    if kind is AudioChunk:
        return AudioChunk(pts=pts, samples=np.zeros(160, np.int16))
    return VideoFrame(pts=pts, image=np.zeros((2, 2, 3), np.uint8))


def test_a_file_too_far_apart_ends_with_advice_and_a_live_feed_drops_and_counts() -> None:
    for live in (False, True):
        reorder = PtsReorder("x", {AudioChunk, VideoFrame}, window=3.0, live=live)
        out = reorder.push([_item(AudioChunk, 0.0), _item(VideoFrame, 0.0)])
        out += reorder.push([_item(VideoFrame, t) for t in (1.0, 2.0, 3.0, 4.0, 5.0)])
        assert [i.pts for i in out] == [0.0, 0.0, 1.0], "released by the window"
        if not live:
            with pytest.raises(MediaError, match="remux it"):
                reorder.push([_item(AudioChunk, 0.5)])
            continue
        assert reorder.push([_item(AudioChunk, 0.5)]) == []
        assert reorder.late == 1
        assert [i.pts for i in reorder.drain()] == [2.0, 3.0, 4.0, 5.0]
