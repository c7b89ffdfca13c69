"""Turn assembly from hand-made items, fed in media-time order."""

from __future__ import annotations

import numpy as np

from stream.frames import (
    Item,
    PerceivedFrame,
    PlayerView,
    SpeechSegment,
    SpeechStarted,
    Transcribed,
    TranscriptLine,
    Turn,
    VideoFrame,
    Word,
)
from stream.speaker.active import SpeakerConfig
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
    # Half-open: a frame at a turn's end belongs to what comes after it.
    assert [f.pts for f in turns[1].keyframes] == [2.0, 2.5]


def test_speech_the_end_of_the_audio_cuts_short_takes_its_line_once() -> None:
    # Ctrl-C at 3.96 s, 0.16 s into a line that runs to 6.08 s: the audio heard all of the
    # line it could. One turn with its words, not an empty one and the line again.
    items = [*frames(3.9), *speech(1.0, 2.5), line(1.0, 2.5, "before"),
             line(3.82, 6.08, "cut off"), SpeechStarted(pts=3.92, start=3.8),
             SpeechSegment(pts=3.96, start=3.8, end=3.96, cut=True)]
    turns = run(items)
    assert [(t.text, t.origin, t.start, t.end, t.closed_by) for t in turns] == [
        ("before", "speech", 1.0, 2.5, "silence"), ("cut off", "speech", 3.8, 3.96, "end")]


def test_speech_cut_by_audio_that_stops_mid_stream_waits_only_a_hangover() -> None:
    core = TurnAssembler(TurnConfig(), orphan_delay_s=HANGOVER)
    cut = SpeechSegment(pts=3.0, start=2.0, end=3.0, cut=True)
    items = [*frames(3.0), SpeechStarted(pts=2.12, start=2.0), cut, line(2.0, 3.3, "cut off"),
             *frames(4.0)[31:]]
    out = [(item.pts, core.push(item)) for item in sorted(items, key=lambda i: i.pts)]
    (when, turns), = ((pts, turns) for pts, turns in out if turns)
    assert when == 3.4
    assert [(t.text, t.end, t.pts, t.known_at, t.closed_by) for t in turns] == [
        ("cut off", 3.0, 3.4, 3.4, "end")]


def test_a_line_covering_speech_that_voice_activity_cut_short_is_its_turn() -> None:
    # Voice activity heard only 0.16 s of a line that runs on to 6.08 s (a quiet voice):
    # one turn with the words over the line's time, not an empty speech turn and the line
    # as a second turn overlapping it.
    items = [*frames(7), SpeechStarted(pts=3.92, start=3.8),
             SpeechSegment(pts=4.36, start=3.8, end=3.96), line(3.82, 6.08, "later")]
    assert [(t.text, t.origin, t.start, t.end) for t in run(items)] == [
        ("later", "speech", 3.8, 6.08)]


def test_frame_memory_is_bounded() -> None:
    core = TurnAssembler(TurnConfig(frame_memory_s=5.0))
    for frame in frames(100, fps=30):
        core.push(frame)
    assert len(core._keyframes.frames) <= 5 * 2 + 1
    assert len(core._keyframes.fine) <= 2.0 * 10  # recent off-tick frames: 2 s at 10 a second


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


# -- speaker changes inside speech --------------------------------------------------------
FPS = 20


def seen(until: float, speaking: dict[str, list[tuple[float, ...]]],
         away: dict[str, tuple[float, float]] | None = None) -> list[PerceivedFrame]:
    """Perceived frames at 20 fps: each player's p_speaking is 0.9 (or a span's third
    number) inside their spans and 0.02 outside, the frame's speaker the one above 0.5
    (none for two); `away` hides a player's face for a span."""
    out = []
    for n in range(round(until * FPS) + 1):
        t = n / FPS
        views = tuple(
            PlayerView(player=p, track=i, box=(0, 0, 1, 1), detected=True, yaw=0.0, mouth=0.0,
                       share=(share := next(((*span, 0.9)[2] for span in spans
                                             if span[0] <= t < span[1]), 0.02)),
                       p_speaking=share)
            for i, (p, spans) in enumerate(speaking.items())
            if not (away and p in away and away[p][0] <= t < away[p][1]))
        talking = [v.player for v in views if v.p_speaking > 0.5]
        out.append(PerceivedFrame(
            pts=t, frame=VideoFrame(pts=t, image=np.zeros((2, 2, 3), np.uint8)), players=views,
            voiced=True, speaker=talking[0] if len(talking) == 1 else None, confidence=0.9))
    return out


def watch(items: list[Item], **config) -> list[Turn]:
    lines = any(isinstance(item, TranscriptLine) for item in items)
    core = TurnAssembler(TurnConfig(**config), orphan_delay_s=HANGOVER + 0.02,
                         speaker=SpeakerConfig(), text="transcript" if lines else None)
    turns: list[Turn] = []
    for item in sorted(items, key=lambda i: i.pts):
        turns += core.push(item)
    return turns + core.flush()


def test_a_handover_without_a_pause_is_two_turns_the_first_known_at_once() -> None:
    turns = watch(seen(5, {"P1": [(1.0, 2.5)], "P2": [(2.5, 4.0)]}) + speech(1.0, 4.0))
    assert [(t.start, t.end, t.vote.speaker, t.closed_by) for t in turns] == [
        (1.0, 2.5, "P1", "speaker"), (2.5, 4.0, "P2", "silence")]
    # Known once the new speaker held 0.2 s, not when the speech ends 1.5 s later.
    assert turns[0].known_at == 2.7
    assert [(t.start, t.end) for t in watch(
        seen(5, {"P1": [(1.0, 2.5)], "P2": [(2.5, 4.0)]}) + speech(1.0, 4.0),
        split_on_speaker=False)] == [(1.0, 4.0)]


def test_the_split_goes_where_the_new_speakers_share_left_the_floor() -> None:
    # The frame's speaker switches only at 2.8 (a model's reaction), but P2's share rose
    # from 2.6: the turn is split there.
    frames = seen(5, {"P1": [(1.0, 2.8)], "P2": [(2.6, 2.8, 0.2), (2.8, 4.0)]})
    turns = watch(frames + speech(1.0, 4.0))
    assert [(t.start, t.end) for t in turns] == [(1.0, 2.6), (2.6, 4.0)]


def test_a_transcript_line_ending_near_the_change_places_the_split() -> None:
    lines = [line(1.0, 2.3, "Are you done?"), line(2.35, 4.0, "Almost.")]
    turns = watch(seen(5, {"P1": [(1.0, 2.6)], "P2": [(2.6, 4.0)]}) + speech(1.0, 4.0) + lines)
    assert [(t.start, t.end, t.text) for t in turns] == [
        (1.0, 2.3, "Are you done?"), (2.3, 4.0, "Almost.")]


def test_a_short_glimpse_of_another_speaker_does_not_split() -> None:
    frames = seen(5, {"P1": [(1.0, 2.0), (2.12, 4.0)], "P2": [(2.0, 2.12)]})
    assert len(watch(frames + speech(1.0, 4.0))) == 1


def test_a_speaker_who_turns_away_keeps_her_turn() -> None:
    # P1 talks 1-4 s but turns her back at 2.0; the model then rates P2 highest.
    frames = seen(5, {"P1": [(1.0, 4.0)], "P2": [(2.3, 4.0)]}, away={"P1": (2.0, 5.0)})
    turns = watch(frames + speech(1.0, 4.0))
    assert [(t.start, t.end, t.vote.speaker) for t in turns] == [(1.0, 4.0, "P1")]


def test_overlapping_lines_give_overlapping_turns_that_say_so() -> None:
    lines = [line(1.0, 3.0, "Did they say how many?"), line(2.4, 4.0, "Sixty.")]
    turns = watch(seen(5, {"P1": [(1.0, 3.0)], "P2": [(3.0, 4.0)]}) + speech(1.0, 4.0) + lines)
    assert [(t.start, t.end, t.text) for t in turns] == [
        (1.0, 3.0, "Did they say how many?"), (2.4, 4.0, "Sixty.")]
    # The first turn is emitted before the second line has ended (nothing known of it
    # then); the second knows both.
    assert turns[0].overlap == () and turns[1].overlap == ((2.4, 3.0),)


def test_two_faces_speaking_at_once_are_an_overlap() -> None:
    frames = seen(5, {"P1": [(1.0, 3.0)], "P2": [(2.5, 4.0)]})
    turns = watch(frames + speech(1.0, 4.0))
    assert [(t.start, t.end, t.overlap) for t in turns] == [
        (1.0, 3.0, ((2.5, 3.0),)), (2.5, 4.0, ((2.5, 3.0),))]


def test_a_listener_who_wins_the_last_moments_of_speech_gets_no_turn() -> None:
    # P1's line ends at 3.0 and her voice trails off to 3.2; P2's face wins from 2.9 (lips
    # still moving): the split at the line's end leaves 0.2 s without words, no turn.
    tail = seen(5, {"P1": [(1.0, 2.9)], "P2": [(2.9, 3.3)]})
    turns = watch(tail + speech(1.0, 3.2) + [line(1.0, 3.0, "Are you done?")])
    assert [(t.start, t.end, t.vote.speaker, t.text) for t in turns] == [
        (1.0, 3.0, "P1", "Are you done?")]
    # Longer than min_turn_s, the rest is a turn of its own, words or not.
    longer = seen(5, {"P1": [(1.0, 2.9)], "P2": [(2.9, 3.6)]})
    turns = watch(longer + speech(1.0, 3.5) + [line(1.0, 3.0, "Are you done?")])
    assert [(t.start, t.end, t.vote.speaker) for t in turns] == [
        (1.0, 3.0, "P1"), (3.0, 3.5, "P2")]


def test_the_frame_at_a_turn_boundary_belongs_to_the_later_turn_only() -> None:
    """Windows were closed at both ends: the frame at a speaker-change split went to both
    turns, and the engine was shown P2 already talking as one of P1's key frames."""
    from stream.turns.frames import KeyFrames

    frames = KeyFrames(per_s=2.0, memory_s=10.0)
    for k in range(9):
        frames.keep(VideoFrame(pts=k * 0.5, image=np.zeros((4, 4, 3), np.uint8)))
    first = [f.pts for f in frames.within(0.0, 2.0)]
    second = [f.pts for f in frames.within(2.0, 4.0)]
    assert first == [0.0, 0.5, 1.0, 1.5] and second == [2.0, 2.5, 3.0, 3.5]


def words(start: float, end: float, text: str, known: float) -> list[Item]:
    """Recognised words spread over [start, end), decoded at `known`, and the progress."""
    parts = text.split()
    step = (end - start) / len(parts)
    return [Word(pts=known, start=start + i * step, end=start + (i + 1) * step, text=f" {w}")
            for i, w in enumerate(parts)] + [Transcribed(pts=known, until=known)]


def test_a_live_inbox_nobody_publishes_to_costs_the_recognised_words_no_wait() -> None:
    """Live with --mqtt: the recognizer runs beside the transcript inbox. Until a line has
    come, a turn waits for its words only, not `line_wait_s` for a line."""
    turns = run(frames(6) + speech(1.0, 2.6) + words(1.0, 2.6, "hello there", known=3.1),
                text="both", lines_optional=True)
    assert [(t.text, t.words_from, t.pts) for t in turns] == [("hello there", "asr", 3.1)]


def test_once_the_inbox_has_spoken_its_line_wins_over_the_recognised_words() -> None:
    items = frames(9) + speech(1.0, 2.6) + [line(1.0, 2.6, "Hello Ben.", "Alice")] + \
        words(1.0, 2.6, "hollow pen", known=3.1) + speech(4.0, 5.0) + \
        words(4.0, 5.0, "fine thanks", known=5.5)
    turns = run(items, text="both", lines_optional=True)
    assert [(t.text, t.words_from) for t in turns] == [
        ("Hello Ben.", "transcript"), ("fine thanks", "asr")]
    assert turns[1].pts == 5.0 + TurnConfig().line_wait_s, "a line may still come: it waits"
