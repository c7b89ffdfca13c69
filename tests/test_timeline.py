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
    # The sender loops: both kinds start again, the audio 20 ms before the picture.
    with caplog.at_level(logging.WARNING):
        second = _feed(connection, wall, [("audio", 1.38), *_interleaved(1.4, 5.4)], 0.02)
    assert clock.resyncs == 1
    assert caplog.text.count("jumped back 10.0") == 1, "one warning per event"
    assert second[0] == pytest.approx(first[-1] + RESUME_S), "at the present, past the last"
    assert second[2] - second[1] == 0.0, "audio and video of one moment share one time"
    assert second[1] - second[0] == pytest.approx(0.02)
    assert second[-1] - second[1] == pytest.approx(4.0 - 0.04)


def test_a_kind_born_after_a_jump_and_a_lone_glitch_leave_no_stale_jump() -> None:
    """A jump another kind never takes (the audio appeared only after it; a glitch in one
    kind alone) must not catch the next loop's jump: each loop is one resync, in step."""
    wall = Wall()
    clock = SessionClock("udp://x", wall)
    connection = clock.connection(None)
    _feed(connection, wall, [("video", t) for t in np.arange(0.0, 10.0, 0.04)], 0.04)
    _feed(connection, wall, [("video", t) for t in np.arange(0.0, 1.0, 0.04)], 0.04)  # loop
    _feed(connection, wall, _interleaved(1.0, 10.0), 0.02)  # the audio first appears
    third = _feed(connection, wall, [("audio", 0.0), *_interleaved(0.04, 4.0)], 0.02)
    assert clock.resyncs == 2
    assert third[1] == third[2], "raw 0.04 of the third loop, audio first: one time for both"
    wall.t += 1.0
    _feed(connection, wall, [("audio", 2.0)], 0.02)  # audio alone jumps back 2 s
    _feed(connection, wall, _interleaved(5.0, 8.0), 0.02)  # and is brought up, or not
    resyncs = clock.resyncs
    fourth = _feed(connection, wall, _interleaved(0.0, 2.0), 0.02)  # a real loop
    assert clock.resyncs == resyncs + 1
    assert fourth[0] == fourth[1]


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


def test_after_a_loop_the_audio_count_starts_again_in_step_with_the_video() -> None:
    """Frames of 2048 samples at 48 kHz (43 ms, as Vorbis may send) through the real
    converters: after the loop the first audio sample of raw time 1.4 s lands where the
    video's frame of raw 1.4 s does. A resume less than a frame past the resync threshold
    left the count going on, about 0.2 s out of step for the rest of the run."""
    from fractions import Fraction

    import av

    from stream.sources.decoding import AudioConverter, VideoConverter

    wall = Wall()
    connection = SessionClock("udp://x", wall).connection(1.4)
    audio, video = AudioConverter(connection, "x"), VideoConverter(connection, "x", None, None)

    def audio_frame(raw: float) -> av.AudioFrame:
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 2048), np.int16), format="s16",
                                           layout="mono")
        frame.sample_rate, frame.time_base = 48_000, Fraction(1, 48_000)
        frame.pts = round(raw * 48_000)
        return frame

    def video_frame(raw: float) -> av.VideoFrame:
        frame = av.VideoFrame.from_ndarray(np.zeros((4, 4, 3), np.uint8), format="rgb24")
        frame.time_base, frame.pts = Fraction(1, 90_000), round(raw * 90_000)
        return frame

    def run(start: float, end: float) -> tuple[list[float], list[float]]:
        chunks, frames, a, v = [], [], start, start
        while min(a, v) < end:
            if a <= v:
                chunks += [c.pts for c in audio.convert(audio_frame(a))]
                a += 2048 / 48_000
            else:
                frames += [f.pts for f in video.convert(video_frame(v))]
                v += 0.04
            wall.t += 0.01
        return chunks, frames

    run(1.4, 11.4)
    chunks, frames = run(1.4, 3.4)
    # The resampler holds back a few samples: the count of its first chunk may lag them.
    assert chunks[0] == pytest.approx(frames[0], abs=0.005)


def test_timestamps_that_keep_jumping_are_one_warning_not_one_each(
        caplog: pytest.LogCaptureFixture) -> None:
    """Two senders on one port: every switch between them is a jump. Each is counted;
    past the third within RESTLESS_S, none is logged."""
    wall = Wall()
    clock = SessionClock("udp://x", wall)
    connection = clock.connection(None)
    with caplog.at_level(logging.WARNING):
        for switch in range(20):
            base = 100.0 * (switch % 2)
            _feed(connection, wall, [("video", base + t) for t in np.arange(0.0, 0.4, 0.04)],
                  0.04)
    assert clock.resyncs == 19
    assert caplog.text.count("jumped") == 3 and "two senders on one port?" in caplog.text
