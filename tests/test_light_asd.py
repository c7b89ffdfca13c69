"""Light-ASD: the shipped weights, the model written from the paper, streaming, MFCCs,
and what it decides on a real clip."""

from __future__ import annotations

import contextlib
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest
import torch
from python_speech_features import mfcc

from pipelines.config import load_config
from pipelines.run.replay import replay_and_collect
from stream.frames import SAMPLE_RATE, VideoFrame
from stream.speaker.asd import LightAsdScorer, StreamingMfcc, face_crop, weights_path
from stream.speaker.light_asd import PIXEL_MEAN, PIXEL_STD, LightASD, load_light_asd
from tests.conftest import ROOT

REAL = ROOT.parent / "shared" / "data" / "real" / "visualvoice_noisy_restaurant.mp4"


@pytest.mark.parametrize("name", ["talkset", "ava"])
def test_released_weights_load_strictly_every_key_and_shape(name: str) -> None:
    state = torch.load(weights_path(name), map_location="cpu", weights_only=True)
    model = LightASD()
    ours = model.state_dict()
    assert set(ours) == set(state), "no key missing, none left over"
    assert all(ours[k].shape == state[k].shape for k in state)
    load_light_asd(weights_path(name))  # strict=True
    params = sum(p.numel() for p in model.parameters())
    assert 1.0e6 <= params <= 1.05e6, params  # "1.0 M parameters"


def _fixed_input(frames: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
    t = torch.arange(frames, dtype=torch.float32)
    yy, xx = torch.meshgrid(torch.arange(112.0), torch.arange(112.0), indexing="ij")
    faces = 127.5 + 100 * torch.sin(xx[None] / 9 + yy[None] / 13 + t[:, None, None] * 0.7)
    coeffs = 10 * torch.sin(torch.arange(4 * frames)[:, None] / 5 + torch.arange(13.0)[None] / 3)
    return faces[None], coeffs[None]


@pytest.mark.parametrize(("name", "expected"), [
    # Computed once with this model on this input (torch 2.13.0 CPU, float32):
    # load_light_asd(weights_path(name))(faces, mfcc)[0], rounded to 4 decimals.
    ("talkset", [-1.0571, -0.982, -0.7615, -0.4105, -0.2711, -0.2342, -0.2047, -0.2391,
                 -0.0758, 0.3572]),
    ("ava", [-4.7364, -5.2382, -5.6161, -5.5798, -5.8643, -6.1208, -6.158, -5.7351, -4.8808,
             -3.722]),
])
def test_outputs_on_a_fixed_input(name: str, expected: list[float]) -> None:
    faces, coeffs = _fixed_input()
    with torch.inference_mode():
        logits = load_light_asd(weights_path(name))(faces, coeffs)[0]
    assert torch.allclose(logits, torch.tensor(expected), atol=1e-4)


def test_streaming_visual_embeddings_equal_the_whole_track() -> None:
    model = load_light_asd(weights_path("talkset"))
    crops = (torch.rand(2, 30, 112, 112, generator=torch.Generator().manual_seed(0)) * 255).round()
    scorer = LightAsdScorer(model, window_s=2.0)
    for tick in range(30):
        live = {0: crops[0, tick].numpy()}
        if tick >= 5:  # a second face appears later: its own zero padding, same batch
            live[1] = crops[1, tick].numpy()
        scorer.tick(tick, live)
    with torch.inference_mode():
        for track, first in ((0, 0), (1, 5)):
            whole = model.model.visualEncoder(
                ((crops[track, first:] / 255 - PIXEL_MEAN) / PIXEL_STD)[None, None])[0]
            kept = scorer.tracks[track].embeddings
            ticks = [t for t, _ in kept]
            assert ticks[-1] == 29 - 6, "final six ticks later"
            streamed = torch.stack([e for _, e in kept])
            assert (streamed - whole[ticks[0] - first:ticks[-1] - first + 1]).abs().max() < 1e-5


def test_streaming_mfcc_equals_python_speech_features_on_the_whole_signal() -> None:
    rng = np.random.default_rng(1)
    audio = (rng.normal(0, 3000, 16000 * 2)).astype(np.int16)
    whole = mfcc(audio, 16000, numcep=13, winlen=0.025, winstep=0.010)
    stream = StreamingMfcc()
    at = 0
    for size in (1, 399, 640, 37, 5000, 9923, 16000 * 2):
        piece = audio[at:at + size]
        stream.push(piece, at)
        at += len(piece)
    got = stream.window(0, stream.count)
    # python_speech_features pads a last partial frame; the stream waits for whole frames.
    assert stream.count == (len(audio) - 400) // 160 + 1
    assert np.allclose(got, whole[:stream.count], rtol=1e-4, atol=1e-3)


def test_the_crop_is_the_lower_middle_of_the_face() -> None:
    gray = np.zeros((400, 400), np.uint8)
    gray[200:260, 170:230] = 255  # a bright square just below the box centre
    crop = face_crop(gray, (150, 100, 250, 300))  # half side 100: x 130..270, y 170..310
    bright = np.argwhere(crop > 128)
    assert bright[:, 0].min() == pytest.approx(112 * 30 / 140, abs=1)
    assert bright[:, 1].min() == pytest.approx(112 * 40 / 140, abs=1)


def test_the_man_in_the_restaurant_is_the_only_speaker() -> None:
    from tests.conftest import require_shared

    require_shared(REAL)
    config = load_config(None, {"predictions": {"predictor": "none"},
                                "recognizer": {"enabled": False}})
    frames, turns = replay_and_collect(str(REAL), config)
    voiced = [f for f in frames if f.voiced]
    speakers = Counter(f.speaker for f in frames)
    # One face: no one else is ever a player, so no one else is ever the speaker.
    assert {v.player for f in frames for v in f.players} == {"P1"}
    assert sum(f.speaker == "P1" for f in voiced) >= 0.9 * len(voiced), speakers
    assert all(t.vote is not None and t.vote.speaker == "P1" for t in turns)


def test_without_audio_the_mouth_cue_runs_and_says_so(tmp_path: Path) -> None:
    from tests.conftest import run_cli
    from tests.media import write_media

    silent = write_media(tmp_path / "silent.mp4", duration=2.0)
    (tmp_path / "silent.jsonl").write_text('{"start": 0.5, "end": 1.5, "text": "hi"}\n')
    done = run_cli("replay", str(silent), "--json", "--predictor", "none")
    assert done.returncode == 0, done.stderr
    assert "active speaker: mouth motion (the media has no audio for Light-ASD)" in (
        " ".join(done.stderr.split()))


async def test_light_asd_that_falls_behind_a_paced_replay_gives_way_to_mouth_motion(
        caplog: pytest.LogCaptureFixture) -> None:
    """The demo paced at 4x with a 0.5 s limit: Light-ASD (0.3 to 0.5 of real time on
    the CPUs here, so 1.2 or more at 4x; at 3x a quiet machine once kept up) falls
    behind and mouth motion takes over; no frame is lost, frames after the switch still
    name speakers, and the decisions catch up with the media (mouth motion at 4x stays
    under real time)."""
    from pipelines.bench.command import _LatencyProbe
    from pipelines.run.replay import Collect, build_replay, run_replay
    from stream.frames import PerceivedFrame
    from stream.speaker.perception import PerceptionStage

    config = load_config(None, {"source": {"realtime": True, "speed": 4.0},
                                "output": {"progress": False},
                                "perception": {"speaker": {"fallback_lag_s": 0.5}}})
    replay = build_replay(str(ROOT / "examples" / "demo.mp4"), config, [])
    frames = Collect((PerceivedFrame,), name="frames")
    probe = _LatencyProbe(replay.media.pacer)
    for stage in (frames, probe):
        replay.pipeline.add(stage)
        replay.pipeline.connect("perception", stage.name, PerceivedFrame)
    await run_replay(replay)
    stage = next(s for s in replay.pipeline.stages if isinstance(s, PerceptionStage))
    assert stage.fell_back_at is not None
    assert "Light-ASD is" in caplog.text and "then Light-ASD again" in caplog.text
    seen = [f for f in frames.items if isinstance(f, PerceivedFrame)]
    with av.open(str(ROOT / "examples" / "demo.mp4")) as media:
        assert len(seen) == sum(1 for _ in media.decode(video=0))
    assert [f.pts for f in seen] == sorted(f.pts for f in seen)
    after = [f for f in seen if f.pts > stage.fell_back_at + 1.0]
    assert len({f.speaker for f in after} - {None}) >= 2
    tail = probe.delays[-30:]
    assert float(np.median(tail)) < 1.0


def _frame(pts: float, waited: float) -> VideoFrame:
    """A blank live frame that left the source `waited` seconds ago."""
    return VideoFrame(pts=pts, image=np.zeros((120, 160, 3), np.uint8),
                      received=time.monotonic() - waited)


@contextlib.asynccontextmanager
async def _paced_stage(pace: float | None = 1.0, **speaker: Any) -> AsyncIterator[Any]:
    """A started perception stage at `pace` (1: live), with these speaker settings (a
    model copy: a config override of None reads as "not given")."""
    from stream.speaker.perception import PerceptionStage

    base = load_config().perception
    stage = PerceptionStage(base.model_copy(update={"speaker": base.speaker.model_copy(
        update=speaker)}), pace=pace)
    await stage.start()
    try:
        yield stage
    finally:
        await stage.stop()


async def test_after_falling_behind_a_reset_keeps_mouth_motion_until_the_retry() -> None:
    """A live `reset` (a new group sat down) forgets players, not that this CPU could not
    run Light-ASD in real time a moment ago: it waits for its retry like the rest."""
    async with _paced_stage() as stage:
        assert stage.core is not None and stage.core.scorer is not None
        await stage.process(_frame(0.0, waited=10.0))  # left the source 10 s ago: behind
        assert stage.fell_back_at == 0.0 and stage.core.scorer is None
        stage.reset()
        assert stage.core.scorer is None and stage.running == "mouth"


async def test_without_retries_a_reset_keeps_mouth_motion() -> None:
    """`fallback_retry_s: null`: Light-ASD that fell behind stays off, through a reset."""
    async with _paced_stage(fallback_retry_s=None) as stage:
        await stage.process(_frame(0.0, waited=3.0))
        assert stage.running == "mouth"
        stage.reset()
        await stage.process(_frame(1.0, waited=0.0))
        assert stage.running == "mouth" and stage.fallbacks == 1


async def test_light_asd_comes_back_after_falling_behind_and_backs_off_when_it_cannot(
        caplog: pytest.LogCaptureFixture) -> None:
    """A CPU busy for a while (a burst after a gap, another program) costs Light-ASD only
    until its retry; falling behind again soon after doubles the wait."""
    async with _paced_stage(fallback_retry_s=5.0) as stage:
        await stage.process(_frame(0.0, waited=0.0))
        assert stage.running == "light_asd" and stage.fell_back_at is None
        await stage.process(_frame(1.0, waited=3.0))
        assert stage.running == "mouth" and stage.fell_back_at == 1.0
        await stage.process(_frame(5.9, waited=0.0))
        assert stage.running == "mouth", "not before its retry, 5 s later"
        await stage.process(_frame(6.0, waited=0.0))
        assert stage.running == "light_asd"
        assert "Light-ASD again from 6.0 s" in caplog.text
        await stage.process(_frame(7.0, waited=3.0))  # behind again soon after
        assert stage.running == "mouth" and stage.fallbacks == 2
        await stage.process(_frame(16.9, waited=0.0))
        assert stage.running == "mouth", "twice as long: 10 s"
        await stage.process(_frame(17.0, waited=0.0))
        assert stage.running == "light_asd"


async def test_light_asd_taken_up_again_an_hour_in_starts_at_the_present(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A retry (or a reset) at 3600 s scores from the present on: fed every tick since
    the session began (90,000), it blocked the event loop for minutes."""
    ticks: list[int] = []
    tick = LightAsdScorer.tick
    monkeypatch.setattr(LightAsdScorer, "tick",
                        lambda self, t, crops: (ticks.append(t), tick(self, t, crops))[1])
    async with _paced_stage(fallback_retry_s=5.0) as stage:
        await stage.process(_frame(0.0, waited=3.0))
        assert stage.running == "mouth"
        ticks.clear()
        await stage.process(_frame(3600.0, waited=0.0))
        assert stage.running == "light_asd" and ticks == [3600 * 25]
        stage.reset()
        ticks.clear()
        await stage.process(_frame(3601.0, waited=0.0))
        assert ticks == [3601 * 25]


@contextlib.asynccontextmanager
async def _scoring_stage() -> AsyncIterator[Any]:
    """A started perception stage with Light-ASD, as fast as it goes."""
    async with _paced_stage(pace=None) as stage:
        assert stage.core is not None and stage.core.scorer is not None
        yield stage


GREY = np.full((120, 160, 3), 128, np.uint8)


async def test_after_a_gap_light_asd_picks_up_at_the_present() -> None:
    """A 20 s gap in a live stream (a stall, a reconnect): the frames before it go out,
    and Light-ASD is not fed the ~500 ticks of the gap (5.8 s blocking the event loop,
    then mouth motion for the rest of the session)."""
    from stream.frames import VideoFrame

    async with _scoring_stage() as stage:
        scorer = stage.core.scorer
        ticks: list[int] = []
        tick = scorer.tick
        scorer.tick = lambda t, crops: (ticks.append(t), tick(t, crops))[1]
        times = [k / 25 for k in range(25)] + [21.0 + k / 25 for k in range(25)]
        out = []
        for seq, pts in enumerate(times):
            out += await stage.process(VideoFrame(pts=pts, seq=seq, image=GREY))
        out += await stage.finish()
    assert [f.pts for f in out] == times
    assert len(ticks) == 50 and ticks[25] == 21 * 25


async def test_a_low_frame_rate_is_no_gap() -> None:
    """At 1 frame a second (`--video-fps 1`) each frame is 25 ticks after the last: taken
    for gaps, Light-ASD restarted on every frame and scored nothing."""
    from stream.frames import VideoFrame

    async with _scoring_stage() as stage:
        scorer = stage.core.scorer
        restarts: list[int] = []
        restart = scorer.restart
        scorer.restart = lambda: (restarts.append(1), restart())[1]
        for seq in range(10):
            await stage.process(VideoFrame(pts=float(seq), seq=seq, image=GREY))
        await stage.process(VideoFrame(pts=30.0, seq=10, image=GREY))  # a real gap
    assert len(restarts) == 1


def test_a_scorer_made_mid_session_starts_its_audio_where_it_is() -> None:
    """A reset or a retry an hour into a session makes a new scorer: its MFCCs start at
    the audio it is given, not with an hour of silence computed first."""
    samples = np.random.default_rng(0).integers(-3000, 3000, SAMPLE_RATE, dtype=np.int16)
    late, fresh = StreamingMfcc(60 * SAMPLE_RATE), StreamingMfcc()
    late.push(samples, 60 * SAMPLE_RATE)
    fresh.push(samples, 0)
    assert late.first == 60 * 100 and len(late.frames) == len(fresh.frames)
    np.testing.assert_array_equal(np.stack(late.frames), np.stack(fresh.frames))


def test_an_outage_is_not_computed_as_an_hour_of_silence() -> None:
    """Audio an hour after the last (a stall of the feed): the MFCC stream starts again
    there instead of padding the gap with zeros (6 GB and 30 s for an hour)."""
    mfcc = StreamingMfcc()
    samples = np.zeros(SAMPLE_RATE, np.int16)
    mfcc.push(samples, 0)
    mfcc.push(samples, 3600 * SAMPLE_RATE)
    assert mfcc.first == 3600 * 100 and len(mfcc.frames) < 100
