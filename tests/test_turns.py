"""Turn assembly from hand-made items, fed in media-time order."""

from __future__ import annotations

import numpy as np

from stream.frames import (
    Item,
    SpeechSegment,
    SpeechStarted,
    TranscriptLine,
    Turn,
    VideoFrame,
)
from stream.turns.assembler import TurnAssembler, TurnConfig

HANGOVER = 0.4


def frames(until: float, fps: int = 10) -> list[VideoFrame]:
    return [VideoFrame(pts=n / fps, image=np.zeros((2, 2, 3), np.uint8))
            for n in range(int(until * fps) + 1)]


def line(start: float, end: float, text: str, speaker: str | None = None) -> TranscriptLine:
    return TranscriptLine(pts=end, start=start, end=end, text=text, speaker=speaker)


def speech(start: float, end: float) -> list[Item]:
    return [SpeechStarted(pts=start + 0.12, start=start),
            SpeechSegment(pts=end + HANGOVER, start=start, end=end)]


def run(items: list[Item], **kwargs) -> list[Turn]:
    core = TurnAssembler(TurnConfig(), orphan_delay_s=HANGOVER + 0.02, **kwargs)
    turns: list[Turn] = []
    for item in sorted(items, key=lambda i: i.pts):
        turns += core.push(item)
    return turns + core.flush()


def test_a_segment_takes_the_line_it_overlaps_and_its_key_frames() -> None:
    turns = run(frames(5) + speech(1.0, 2.6) + [line(1.02, 2.55, "Hello Ben.", "Alice")])
    assert len(turns) == 1
    turn = turns[0]
    assert (turn.start, turn.end, turn.text, turn.speaker_name) == (1.0, 2.6, "Hello Ben.", "Alice")
    assert turn.origin == "speech" and turn.pts == 2.6 + HANGOVER
    assert [f.pts for f in turn.keyframes] == [1.0, 1.5, 2.0, 2.5]


def test_nothing_after_the_turn_end_is_used() -> None:
    turns = run(frames(5) + speech(1.0, 2.6) + [line(1.0, 2.6, "a"), line(2.9, 3.2, "later")])
    first = turns[0]
    assert first.text == "a"
    assert max(f.pts for f in first.keyframes) <= first.end


def test_back_to_back_speakers_are_split_at_line_boundaries() -> None:
    turns = run(frames(6) + speech(1.0, 4.0) + [line(1.0, 2.4, "Are you done?", "Alice"),
                                               line(2.6, 4.0, "Almost.", "Ben")])
    assert [(t.text, t.speaker_name) for t in turns] == [("Are you done?", "Alice"),
                                                         ("Almost.", "Ben")]
    assert (turns[0].start, turns[0].end, turns[1].start, turns[1].end) == (1.0, 2.5, 2.5, 4.0)
    assert [t.index for t in turns] == [0, 1]


def test_speech_without_transcript_still_makes_a_turn() -> None:
    turns = run(frames(3) + speech(0.5, 1.5))
    assert len(turns) == 1 and turns[0].text == "" and turns[0].speaker_name is None


def test_a_line_no_segment_claims_becomes_a_transcript_turn() -> None:
    turns = run(frames(8) + speech(1.0, 2.0) + [line(1.0, 2.0, "heard"),
                                               line(4.0, 5.0, "missed by VAD")])
    assert [(t.text, t.origin) for t in turns] == [("heard", "speech"),
                                                   ("missed by VAD", "transcript")]
    missed = turns[1]
    assert 5.0 + HANGOVER <= missed.pts <= 5.0 + HANGOVER + 0.2
    assert missed.segments == ()


def test_a_line_inside_open_speech_waits_for_the_segment() -> None:
    # A long utterance: the line ends at 3.0 but speech goes on until 6.0.
    items = frames(8) + speech(1.0, 6.0) + [line(1.0, 3.0, "first part"),
                                           line(3.2, 6.0, "second part")]
    turns = run(items)
    assert [t.origin for t in turns] == ["speech", "speech"]


def test_without_audio_lines_are_the_turns() -> None:
    turns = run([*frames(4), line(0.5, 1.5, "one"), line(2.0, 3.0, "two")], has_audio=False)
    assert [(t.text, t.pts, t.origin) for t in turns] == [("one", 1.5, "transcript"),
                                                          ("two", 3.0, "transcript")]
    assert [f.pts for f in turns[1].keyframes] == [2.0, 2.5, 3.0]


def test_frame_memory_is_bounded() -> None:
    core = TurnAssembler(TurnConfig(frame_memory_s=5.0))
    for frame in frames(100, fps=30):
        core.push(frame)
    assert len(core._frames) <= 5 * 2 + 1
    assert len(core._fine) <= 2.0 * 10  # recent off-tick frames: 2 s at 10 a second


def test_lines_beyond_the_media_are_counted_not_turned() -> None:
    # Ctrl-C at 3 s: the transcript had already delivered lines up to 9 s.
    core = TurnAssembler(TurnConfig(), orphan_delay_s=HANGOVER)
    items = [*frames(3), line(1.0, 2.0, "said"), line(2.8, 4.0, "cut off"),
             line(6.0, 9.0, "never reached")]
    turns = []
    for item in sorted(items, key=lambda i: i.pts):
        turns += core.push(item)
    turns += core.flush()
    assert [t.text for t in turns] == ["said", "cut off"]
    assert core.unused_lines == 1


def test_a_turn_between_two_key_frames_gets_a_frame_from_inside_it() -> None:
    # Key frames every 0.5 s (at 1.0 and 1.5); the turn lasts from 1.05 to 1.32 s.
    turns = run([*frames(3.0, fps=30), *speech(1.05, 1.32)])
    assert [round(f.pts, 3) for f in turns[0].keyframes] == [1.2]
    # Without video inside the turn there is no key frame, not one from before it.
    sparse = [f for f in frames(3.0, fps=30) if not 0.9 < f.pts < 1.45]
    assert run([*sparse, *speech(1.05, 1.32)])[0].keyframes == ()
