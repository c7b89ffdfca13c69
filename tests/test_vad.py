"""Voice activity: the state machine on synthetic voice, and on the demo against its truth."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from stream.audio.vad import VadConfig, VoiceActivity
from stream.frames import AudioChunk, SpeechSegment, SpeechStarted
from stream.sources.media import MediaSource
from tests.media import tone_track


def _feed(vad: VoiceActivity, track: np.ndarray, chunk: int = 371) -> list:
    pcm = (track * 32767).astype(np.int16)
    events = []
    for at in range(0, len(pcm), chunk):
        events += vad.feed(pcm[at: at + chunk], at / 16_000)
    return events + vad.flush()


def test_two_bursts_become_two_segments_with_start_events() -> None:
    config = VadConfig(frame_ms=20, min_speech_s=0.1, hangover_s=0.3)
    events = _feed(VoiceActivity(config), tone_track([(0.5, 1.5), (2.2, 3.0)], 4.0))
    starts = [e for e in events if isinstance(e, SpeechStarted)]
    segments = [e for e in events if isinstance(e, SpeechSegment)]
    assert len(starts) == 2 and len(segments) == 2
    for seg, (start, end) in zip(segments, [(0.5, 1.5), (2.2, 3.0)], strict=True):
        # webrtcvad smooths its own decisions and trails real speech by ~0.1 s.
        assert abs(seg.start - start) <= 0.04 and abs(seg.end - end) <= 0.15
        assert abs(seg.pts - (seg.end + 0.3)) <= 0.021, "closed one hangover after the end"
    for start, seg in zip(starts, segments, strict=True):
        assert start.start == seg.start and start.pts <= seg.start + 0.1 + 0.021


def test_pause_shorter_than_hangover_does_not_split() -> None:
    config = VadConfig(hangover_s=0.5)
    events = _feed(VoiceActivity(config), tone_track([(0.5, 1.2), (1.5, 2.2)], 3.0))
    segments = [e for e in events if isinstance(e, SpeechSegment)]
    assert len(segments) == 1 and segments[0].start < 0.55 and segments[0].end > 2.1


def test_blip_shorter_than_min_speech_is_ignored() -> None:
    config = VadConfig(min_speech_s=0.2)
    events = _feed(VoiceActivity(config), tone_track([(0.5, 0.56)], 1.5))
    assert events == []


def test_speech_running_into_the_end_is_closed_by_flush() -> None:
    events = _feed(VoiceActivity(), tone_track([(0.5, 2.0)], 2.0))
    segments = [e for e in events if isinstance(e, SpeechSegment)]
    assert len(segments) == 1 and segments[0].end > 1.9


def test_gap_in_the_feed_resyncs_timestamps() -> None:
    vad = VoiceActivity(VadConfig(frame_ms=10, min_speech_s=0.05, hangover_s=0.1))
    voice = (tone_track([(0.0, 1.0)], 1.0) * 32767).astype(np.int16)
    events = vad.feed(voice[:4000], 0.0) + vad.feed(voice[4000:], 10.0) + vad.flush()
    segments = [e for e in events if isinstance(e, SpeechSegment)]
    assert segments[-1].end > 10.5


def test_silero_ignores_a_hum_that_webrtcvad_calls_speech() -> None:
    """Why the trained model is offered: webrtcvad calls any steady voiced-band
    energy speech; Silero VAD learned what speech sounds like."""
    hum = tone_track([(0.5, 2.0)], 3.0)
    found = {model: [e for e in _feed(VoiceActivity(VadConfig(model=model)), hum)
                     if isinstance(e, SpeechSegment)] for model in ("webrtc", "silero")}
    assert len(found["webrtc"]) == 1 and found["silero"] == []


@pytest.mark.parametrize("bad", [{"frame_ms": 25}, {"aggressiveness": 4},
                                 {"hangover_s": 0.005}, {"min_speech": 1},
                                 {"model": "rnnoise"}, {"threshold": 0.1},
                                 {"model": "silero", "hangover_s": 0.03}])
def test_bad_vad_settings_are_rejected(bad: dict) -> None:
    with pytest.raises(ValidationError):
        VadConfig(**bad)


@pytest.mark.parametrize("model", ["webrtc", "silero"])
def test_demo_segments_match_the_ground_truth(demo: Path, truth: dict, model: str) -> None:
    config = VadConfig(model=model)

    async def segments() -> list[SpeechSegment]:
        vad, found = VoiceActivity(config), []
        source = MediaSource(str(demo), video=False)
        async for chunk in source.items():
            assert isinstance(chunk, AudioChunk)
            found += vad.feed(chunk.samples, chunk.pts)
        await source.close()
        return [e for e in found + vad.flush() if isinstance(e, SpeechSegment)]

    found = asyncio.run(segments())
    assert len(found) == len(truth["turns"])
    tolerance = config.frame_s + config.hangover_s
    for seg, turn in zip(found, truth["turns"], strict=True):
        assert abs(seg.start - turn["start"]) <= tolerance
        assert abs(seg.end - turn["end"]) <= tolerance
