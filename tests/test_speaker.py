"""Speaking cues and fusion on hand-made inputs; perception end to end on generated clips."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from pipelines.config import load_config
from pipelines.run.replay import replay_and_collect
from stream.demo import portrait as pt
from stream.frames import PerceivedFrame, Turn, VideoFrame, VoiceFrame
from stream.speaker.active import ActiveSpeaker, SpeakerConfig, vote
from stream.speaker.cues import MouthMotion
from stream.speaker.evaluate import SpeakerScore, score
from stream.speaker.perception import Perception, PerceptionConfig
from stream.vision.faces import Face
from tests.conftest import ROOT

BOX = (60.0, 30.0, 190.0, 200.0)
"""Where the portrait's face sits, roughly, in portrait pixels."""


def _grey(image: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)


def _motion(frames: list[np.ndarray]) -> float:
    motion, mouth = MouthMotion(), pt.portrait(0).mouth
    values = [motion.measure(1, _grey(f), BOX, mouth) for f in frames]
    return float(np.mean(values[1:]))


def test_a_dropping_jaw_moves_more_than_a_turning_head() -> None:
    p = pt.portrait(0)
    talking = [pt.animate(p, o, 0.0) for o in (0, 1, 0, 1, 0, 1)]
    turning = [pt.animate(p, 0.0, y) for y in (-1, -0.6, -0.2, 0.2, 0.6, 1)]
    still = [pt.animate(p, 0.0, 0.0)] * 6
    assert _motion(still) == 0.0
    assert _motion(talking) > 5 * _motion(turning)


def test_yaw_from_keypoints_follows_the_nose() -> None:
    def keypoints(nose_x: float) -> tuple[tuple[float, float], ...]:
        return ((40, 40), (80, 40), (nose_x, 60), (60, 80), (20, 50), (100, 50))

    assert Face(BOX, 0.9, keypoints(60)).yaw == 0.0
    assert Face(BOX, 0.9, keypoints(80)).yaw > 0.3 > -0.3 > Face(BOX, 0.9, keypoints(40)).yaw


def test_fusion_names_the_one_moving_mouth_only_while_voiced() -> None:
    fusion = ActiveSpeaker(SpeakerConfig())
    for k in range(10):
        cues, speaker, _ = fusion.frame(k / 30, {"P1": 0.02, "P2": 0.0005})
    assert speaker is None and cues["P1"][2] == 0.0, "no voice, no speaker"
    fusion.voice(10 / 30, True)
    _, speaker, confidence = fusion.frame(10 / 30, {"P1": 0.02, "P2": 0.0005})
    assert speaker == "P1" and confidence > 0.8


def test_fusion_says_unknown_when_two_mouths_move_or_none_is_seen() -> None:
    fusion = ActiveSpeaker(SpeakerConfig())
    for k in range(15):
        fusion.voice(k / 30, True)
        _, speaker, confidence = fusion.frame(k / 30, {"P1": 0.02, "P2": 0.021})
    assert speaker is None and confidence < 0.6
    assert fusion.frame(0.6, {})[1:] == (None, 0.0)
    nobody = vote([], SpeakerConfig())
    assert nobody.speaker is None and nobody.confidence == 0.0


def test_no_face_means_no_speaker_and_no_crash() -> None:
    perception = Perception(PerceptionConfig(), detect=lambda image: [])
    perception.voice(VoiceFrame(pts=0.02, start=0.0, voiced=True))
    frame, = perception.frame(VideoFrame(pts=0.03, image=np.zeros((48, 64, 3), np.uint8)))
    assert frame.players == () and frame.speaker is None and frame.voiced


def test_a_speech_frame_counts_once_and_either_overlapping_speaker_is_right() -> None:
    truth = {"turns": [{"start": 0.0, "end": 1.0, "speaker": "P1"},
                       {"start": 0.5, "end": 1.5, "speaker": "P2"}]}
    image = np.zeros((4, 4, 3), np.uint8)
    frames = [PerceivedFrame(pts=pts, frame=VideoFrame(pts=pts, image=image), players=(),
                             voiced=True, speaker=speaker, confidence=1.0)
              for pts, speaker in ((0.25, "P1"), (0.6, "P3"), (0.75, "P2"), (1.25, "P2"),
                                   (1.75, None))]
    result = score(frames, [], truth)
    # Speech frames 0.25, 0.6, 0.75, 1.25; right: P1 alone, then P2 in the overlap and after.
    assert result.frame_accuracy == 3 / 4
    assert result.onset_lags == (0.25, 0.25)


def _perceive(media: Path, model: str = "light_asd") -> tuple[list[PerceivedFrame], list[Turn]]:
    # The speakers, not the words: the recognizer stays off for a copy without transcript.
    return replay_and_collect(str(media), load_config(None, {
        "perception": {"speaker": {"model": model}}, "predictions": {"predictor": "none"},
        "recognizer": {"enabled": False}}))


@pytest.mark.parametrize(("scene", "seats", "model", "per_frame"), [
    # The figures docs/perception.md states; the replay is deterministic, so they must hold
    # exactly.
    ("demo", 3, "light_asd", 0.975),     # clean
    ("duo", 2, "light_asd", 0.976),      # two people off-centre, audio hiss, sensor noise
    ("quartet", 4, "light_asd", 0.951),  # four small faces, one turns away for 3.5 s, noise
    ("demo", 3, "mouth", 0.982),
    ("duo", 2, "mouth", 0.976),
    ("quartet", 4, "mouth", 0.967),
])
def test_speaker_per_turn_and_per_frame(scene: str, seats: int, model: str,
                                        per_frame: float) -> None:
    media = ROOT / "examples" / f"{scene}.mp4"
    truth = json.loads(media.with_suffix(".truth.json").read_text())
    frames, turns = _perceive(media, model)
    result = score(frames, turns, truth)
    print(f"{scene} {model}: per-frame {result.frame_accuracy:.3f}, per-turn "
          f"{result.turn_accuracy:.3f}, onset lag max {max(result.onset_lags):.3f}s")
    assert result.turn_accuracy == 1.0
    assert max(result.boundary_errors) <= 0.3
    assert round(result.frame_accuracy, 3) == per_frame
    assert max(len(f.players) for f in frames) == seats
    assert max(result.onset_lags) < 0.5


@pytest.mark.parametrize(("transcript", "found", "worst", "overlaps"), [
    # The figures docs/turns.md states. With the transcript the split goes to the lines'
    # ends and both replies that start before the other ends are overlaps. Without it,
    # where the new speaker's share rose; the synchrony tie-break gives a new speaker
    # the frames later (before it: 14 within 0.3 s, max 0.358, both overlaps found), so
    # the first overlapping reply is found only where the other stopped.
    (True, 16, 0.115, {3, 5}),
    # The floor's margin (a lead of 0.2 held 0.2 s, against flicker) decides two handovers
    # a little later than the old per-frame speaker did: 10 within 0.3 s (the two next
    # at 0.311 s), still max 0.713 s, every speaker right.
    (False, 10, 0.713, {5}),
])
def test_handovers_without_pauses_are_split_where_the_speaker_changes(
        transcript: bool, found: int, worst: float, overlaps: set[int], tmp_path: Path) -> None:
    media = ROOT / "examples" / "handover.mp4"
    truth = json.loads(media.with_suffix(".truth.json").read_text())
    if not transcript:
        media = Path(shutil.copy(media, tmp_path / media.name))
    frames, turns = _perceive(media)
    result = score(frames, turns, truth)
    errors = result.boundary_errors
    print(f"handover, transcript {transcript}: boundaries {errors}, turns "
          f"{[(t.start, t.end, t.closed_by) for t in turns]}")
    assert result.turn_accuracy == 1.0, "8 turns, each with its speaker"
    # The figure of docs/perception.md: the frames lost are Light-ASD's lag at handovers
    # (0.2-0.45 s) and the last seconds of a turn spoken with the back turned.
    assert round(result.frame_accuracy, 3) == 0.828
    assert (sum(e <= 0.3 for e in errors), max(errors)) == (found, worst)
    split = [t for t in turns if t.closed_by == "speaker"]
    assert len(split) == 6, "two handovers without a pause, two overlaps, two near-pauses"
    if not transcript:
        # Known sooner after its end than a turn that waits for the 0.4 s hangover.
        assert max(t.known_at - t.end for t in split) < 0.4
    overlapped = [t.index for t in turns if t.overlap]
    assert overlaps <= set(overlapped), "replies that start before the other ends"
    away = turns[6]
    assert away.vote.speaker == "P1" and away.closed_by == "silence", \
        "P1 keeps her turn while her back is turned"


def test_the_varied_scene_meets_the_speaker_goals_with_synchrony() -> None:
    # A listener who moves her lips without a sound looks as much like talking as the
    # speaker to Light-ASD (0.97); her mouth does not move with the sound, which the
    # synchrony tie-break sees. Measured 92.1 % of speech frames on one machine and 92.3 %
    # on another (Light-ASD's float sums flip a frame), so this asserts the goal.
    _, found, result = _varied(sync=True)
    assert (len(found), result.turn_accuracy) == (7, 1.0)
    assert result.frame_accuracy >= 0.90
    assert max(result.boundary_errors) <= 0.3


def test_without_synchrony_the_silent_lips_take_the_varied_scene() -> None:
    # The "before" of the tie-break: measured 12 turns and 41.2 % or 41.4 % of frames
    # (machines differ by a frame), so this asserts what the figure shows: turns split,
    # most frames lost.
    _, found, result = _varied(sync=False)
    assert len(found) > 7, "the silent listener splits the speaker's turns"
    assert result.frame_accuracy < 0.5


def _varied(*, sync: bool) -> tuple[list[PerceivedFrame], list[Turn], SpeakerScore]:
    media = ROOT / "examples" / "varied.mp4"
    frames, found = replay_and_collect(str(media), load_config(None, {
        "perception": {"speaker": {"sync": sync}}, "predictions": {"predictor": "none"}}))
    truth = json.loads(media.with_suffix(".truth.json").read_text())
    return frames, found, score(frames, found, truth)


def test_someone_turning_away_keeps_their_player_id() -> None:
    frames, _ = _perceive(ROOT / "examples" / "quartet.mp4")
    truth = json.loads((ROOT / "examples" / "quartet.truth.json").read_text())
    away = [f for f in frames if 4.0 <= f.pts <= 6.0]
    assert away and all("P4" not in {v.player for v in f.players} for f in away)
    later = [f for f in frames if f.pts > 8.0]
    assert {v.player for f in later for v in f.players} == {"P1", "P2", "P3", "P4"}
    p4_turn = next(t for t in truth["turns"] if t["speaker"] == "P4")
    assert p4_turn["start"] > 6.5, "P4 speaks after turning back"


def test_video_without_audio_still_votes_on_transcript_turns(demo: Path, tmp_path: Path) -> None:
    import av

    silent = tmp_path / "demo.mp4"
    with av.open(str(demo)) as src, av.open(str(silent), "w") as dst:
        video = dst.add_stream_from_template(src.streams.video[0])
        for packet in src.demux(src.streams.video[0]):
            if packet.dts is not None:
                packet.stream = video
                dst.mux(packet)
    (tmp_path / "demo.srt").write_text(demo.with_suffix(".srt").read_text())
    frames, turns = _perceive(silent)  # asks for Light-ASD, which needs audio
    truth = json.loads((ROOT / "examples" / "demo.truth.json").read_text())
    assert all(f.speaker is None for f in frames), "no voice, no per-frame speaker"
    assert [t.origin for t in turns] == ["transcript"] * 12
    voted = [t.vote.speaker for t in turns]
    assert sum(v == t["speaker"] for v, t in zip(voted, truth["turns"], strict=True)) >= 11
