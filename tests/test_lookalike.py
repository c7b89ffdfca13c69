"""Speaker scores near a tie (examples/lookalike.mp4) neither split nor double the turns.

Carol (P2) and Dora (P3) have the same face and sit side by side. Carol mouths the words
along without a sound while others speak; Dora sways her head while she listens. While
Dora says her first line, Light-ASD's share of speaking for her and for Carol hovers
around 0.5, Carol ahead about half of that time: `turns.change_margin` keeps the floor
with the holder there, so each line is one turn with its speaker.
"""

from __future__ import annotations

import json

import pytest

from pipelines.config import load_config
from pipelines.run.replay import replay_and_collect
from stream.frames import PerceivedFrame, Turn
from stream.speaker.evaluate import score
from tests.conftest import ROOT, assert_overlaps_declared

MEDIA = ROOT / "examples" / "lookalike.mp4"
TWINS = {"P2": "P3", "P3": "P2"}


@pytest.fixture(scope="module")
def truth() -> dict:
    return json.loads(MEDIA.with_suffix(".truth.json").read_text())


@pytest.fixture(scope="module")
def replayed() -> tuple[list[PerceivedFrame], list[Turn]]:
    """Replayed once, with its transcript (the .srt beside it) and Light-ASD."""
    return replay_and_collect(str(MEDIA), load_config(None, {
        "output": {"progress": False, "metrics": False},
        "predictions": {"predictor": "none"}}))


def test_the_look_alikes_scores_hover_near_a_tie(replayed, truth: dict) -> None:
    # What makes the scene worth replaying. Measured in Dora's first line (95 frames):
    # 21 frames with her share and Carol's within 0.2 of each other, Carol ahead in 14 of
    # them (3.5-5.1 s, both between 0.42 and 0.58 most of that second). A frame either
    # way on another machine is allowed for.
    frames, _ = replayed
    line = truth["turns"][1]
    speaker = line["speaker"]
    twin = TWINS[speaker]
    inside = [{v.player: v.p_speaking for v in f.players} for f in frames
              if line["start"] <= f.pts < line["end"]]
    near = [p for p in inside if abs(p[speaker] - p[twin]) <= 0.2]
    assert len(near) >= 19, "the speaker and her look-alike near a tie for over 0.6 s"
    assert sum(p[twin] > p[speaker] for p in near) >= 12, "the look-alike ahead in most"


def test_each_line_is_one_turn_with_its_words(replayed, truth: dict) -> None:
    _, turns = replayed
    lines = [t["text"] for t in truth["turns"]]
    print([(t.index, round(t.start, 2), round(t.end, 2), t.vote and t.vote.speaker,
            t.closed_by, t.text) for t in turns])
    assert len(turns) == len(lines), "as many turns as spoken lines"
    assert all(t.text.strip() for t in turns), "no empty turn"
    for line in lines:
        assert sum(line in t.text for t in turns) == 1, line


def test_turns_overlap_only_where_they_say_so(replayed) -> None:
    _, turns = replayed
    assert_overlaps_declared(turns)


def test_every_turn_has_its_speaker(replayed, truth: dict) -> None:
    # Measured: every turn's speaker right, and every speech frame right once each frame
    # takes the speaker of the turn holding it. Per frame (the raw decision) 83.8 %: the
    # look-alike's lead in Dora's first line, Light-ASD's lag at handovers, and Nora lost
    # by the face detector for 1.3 s while Carol speaks (not asserted: machines differ by
    # a frame).
    frames, turns = replayed
    result = score(frames, turns, truth)
    print(f"lookalike: per-turn {result.turn_accuracy:.3f}, refined "
          f"{result.refined_accuracy:.3f}, per-frame {result.frame_accuracy:.3f}")
    assert [t.vote and t.vote.speaker for t in turns] == \
        [t["speaker"] for t in truth["turns"]]
    assert result.turn_accuracy == 1.0
    assert result.refined_accuracy == 1.0
