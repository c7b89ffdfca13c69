"""The overlay: what is drawn over a frame, and when (pure, on hand-made frames)."""

from __future__ import annotations

import numpy as np

from stream.frames import (
    Answer,
    AttentionMap,
    PerceivedFrame,
    PlayerView,
    Prediction,
    SpeakerVote,
    Turn,
    VideoFrame,
)
from stream.view.overlay import (
    ADDRESSEE,
    HEAT_ALPHA,
    HEAT_TAG,
    MENTIONED,
    SPEAKER,
    TEXT,
    Overlay,
    ramp,
)

LEFT, RIGHT = (40.0, 60.0, 140.0, 180.0), (460.0, 60.0, 560.0, 180.0)


def _frame(pts: float, speaker: str | None = "P1", grey: int = 0) -> PerceivedFrame:
    views = (PlayerView("P1", 1, LEFT, True, 0.0, 0.0, 1.0, 0.9),
             PlayerView("P2", 2, RIGHT, True, 0.0, 0.0, 0.0, 0.25))
    image = np.full((360, 640, 3), grey, np.uint8)
    return PerceivedFrame(pts=pts, frame=VideoFrame(pts=pts, image=image),
                          players=views, voiced=True, speaker=speaker, confidence=0.9)


def _turn(known_at: float, index: int = 0) -> Turn:
    vote = SpeakerVote(speaker="P1", confidence=0.9, scores={}, cues={})
    return Turn(pts=known_at, index=index, start=0.0, end=known_at - 0.4, text="Hello Bea",
                vote=vote, known_at=known_at)


def _prediction(addressee: str, mentioned: str,
                attention: AttentionMap | None = None) -> Prediction:
    answers = (Answer("addressee", "?", addressee, {}), Answer("mentioned", "?", mentioned, {}))
    return Prediction(pts=2.0, turn=0, start=0.0, end=1.6, speaker="P1", answers=answers,
                      latency_s=0.001, attention=attention)


def _count(image: np.ndarray, colour: tuple[int, int, int],
           region: tuple[int, int, int, int] | None = None) -> int:
    if region is not None:
        x0, y0, x1, y1 = region
        image = image[y0:y1, x0:x1]
    return int(np.all(image == colour, axis=-1).sum())


def test_the_speaker_is_highlighted_and_others_coloured_by_probability() -> None:
    image = Overlay({"P2": "Bea"}).draw(_frame(1.0))
    # The speaker's box edge is the highlight, the listener's the ramp at 0.25.
    assert tuple(image[120, 40]) == SPEAKER and tuple(image[120, 460]) == ramp(0.25)
    assert _count(image, SPEAKER, (0, 0, 320, 360)) > 400
    assert _count(image, SPEAKER, (320, 0, 640, 360)) == 0
    assert _count(image, ramp(0.25), (320, 0, 640, 360)) > 400
    nobody = Overlay().draw(_frame(1.0, speaker=None))
    assert _count(nobody, SPEAKER) == 0 and tuple(nobody[120, 40]) == ramp(0.9)


def test_a_turn_is_shown_from_when_it_was_known_with_its_predictions() -> None:
    overlay = Overlay({"P1": "Ann", "P2": "Bea"}, subtitle_s=4.0)
    band = (0, 300, 640, 360)
    before = overlay.draw(_frame(1.9))
    overlay.add(_turn(known_at=2.0))
    assert overlay.scene(_frame(1.9)).subtitle is None, "never ahead of when it was known"
    assert overlay.scene(_frame(2.0)).subtitle == "Ann: Hello Bea"
    assert overlay.scene(_frame(6.1)).subtitle is None, "gone after subtitle_s"
    shown = overlay.draw(_frame(2.5))
    assert _count(before, TEXT, band) == 0 and _count(shown, TEXT, band) > 50
    between = (150, 100, 450, 140)
    assert _count(shown, ADDRESSEE, between) == 0 and _count(shown, MENTIONED) == 0
    overlay.add(_prediction("P2", "P2"))
    predicted = overlay.draw(_frame(2.5))
    assert _count(predicted, ADDRESSEE, between) > 200, "an arrow from P1 to P2"
    assert _count(predicted, MENTIONED, (460, 180, 640, 230)) > 100, "P2 marked below the box"
    overlay.add(_prediction("nobody", "nobody"))
    assert _count(overlay.draw(_frame(2.5)), ADDRESSEE) == 0, "no one in view, no arrow"
    overlay.add(_turn(known_at=3.0, index=1))
    assert overlay.prediction is None, "a new turn's predictions are not yet known"
    overlay.add(_prediction("P2", "P2"))
    assert overlay.prediction is None, "a late prediction for the turn before is not drawn"


def test_the_attention_heat_map_lies_under_the_turn_it_belongs_to() -> None:
    def drawn(attention: AttentionMap | None, pts: float = 2.5) -> np.ndarray:
        overlay = Overlay(subtitle_s=4.0)
        overlay.add(_turn(known_at=2.0))
        overlay.add(_prediction("P2", "nobody", attention))
        return overlay.draw(_frame(pts, grey=100))

    plain = drawn(None)
    # Left cell 4x its fair share (full heat), right cell exactly its share (none): the
    # left half is blended toward yellow at HEAT_ALPHA, the right half is untouched.
    heat = drawn(AttentionMap(grid=np.array([[4.0, 1.0]], np.float32), heads=3))
    hot = np.round(100 * (1 - HEAT_ALPHA) + np.array([255, 255, 0]) * HEAT_ALPHA)
    assert tuple(heat[250, 100]) == tuple(hot.astype(int)) == (193, 193, 40)
    assert np.array_equal(heat[:, 480:], plain[:, 480:]), "a cell at its share is not drawn"
    assert _count(heat, HEAT_TAG, (0, 0, 320, 40)) > 200, "the map is labelled"
    assert _count(plain, HEAT_TAG) == 0
    # A model that looks everywhere alike changes nothing under the label.
    even = drawn(AttentionMap(grid=np.ones((3, 5), np.float32), heads=3))
    assert np.array_equal(even[40:], plain[40:])
    # Like the words, the map is shown only while its turn is.
    later = drawn(AttentionMap(grid=np.array([[4.0, 1.0]], np.float32), heads=3), pts=6.5)
    assert np.array_equal(later, drawn(None, pts=6.5))
