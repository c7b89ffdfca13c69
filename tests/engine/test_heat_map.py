"""`--attention`: the heat map a turn's prediction carries, from the session's exported maps."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from stream.engine.attention import HeadRecord
from stream.engine.backends import QwenVLBackend, TextBackend
from stream.engine.backends.base import cells_in_box
from stream.engine.config import BiasConfig, PredictorConfig
from stream.engine.ledger import Span
from stream.engine.predict import Predictor
from stream.engine.session import UtteranceReport
from stream.errors import ModelError
from tests.tiny import scene_turn


def _record(maps: torch.Tensor | None) -> HeadRecord:
    none = torch.zeros(4)
    return HeadRecord(scores=none, active=none.bool(), speaker_mass=none,
                      speaker_mass_biased=none, maps=maps)


def _frame(start: int, grid: tuple[int, ...], t: float) -> Span:
    return Span("frame", start, start + 20, meta={"grid": grid, "t": t})


def test_the_heat_map_averages_heads_and_tokens_over_the_last_frame() -> None:
    first = torch.full((2, 3), 0.01)
    first[0, 0] = 0.5  # the turn's first frame: not what is drawn
    last = torch.full((2, 3), 0.01)
    last[1, 2] = 0.04  # row 1, column 2 of the last frame, for one token of one head
    one_head = torch.stack([torch.cat([first.flatten(), last.flatten()]),
                            torch.cat([first.flatten(), torch.full((6,), 0.02)])])[None]
    two_heads = torch.full((2, 2, 12), 0.03)
    report = UtteranceReport(
        Span("utterance", 40, 45),
        {5: _record(one_head), 6: _record(two_heads),
         7: _record(torch.zeros(0, 2, 12)),  # no active head in this layer
         8: _record(None)},  # nothing exported
        [_frame(0, (2, 3), 1.5), _frame(20, (2, 3), 2.5)])
    heat = report.heat_map()
    assert heat is not None and heat.heads == 3 and heat.frame_pts == 2.5
    # Six rows (1 head x 2 tokens + 2 heads x 2 tokens) of equal weight: a plain cell gets
    # (0.01 + 0.02 + 4 x 0.03) / 6 = 0.025, the hot one 0.03; the frame's mean is 0.155 / 6,
    # so a plain cell holds 30/31 of its fair share and the hot one 36/31.
    expected = np.full((2, 3), 30 / 31)
    expected[1, 2] = 36 / 31
    np.testing.assert_allclose(heat.grid, expected, rtol=1e-6)


def test_a_video_chunk_is_averaged_over_its_time_slices() -> None:
    # 1 head, 1 token; time 2 x rows 1 x cols 4
    maps = torch.tensor([[[0.1, 0.1, 0.1, 0.1, 0.3, 0.1, 0.1, 0.1]]])
    report = UtteranceReport(Span("utterance", 40, 45), {3: _record(maps)},
                             [_frame(0, (2, 1, 4), 0.0)])
    heat = report.heat_map()
    assert heat is not None and heat.grid.shape == (1, 4)
    np.testing.assert_allclose(heat.grid, [[1.6, 0.8, 0.8, 0.8]], rtol=1e-6)
    assert UtteranceReport(Span("utterance", 0, 5)).heat_map() is None
    assert UtteranceReport(Span("utterance", 0, 5), {3: _record(torch.zeros(0, 1, 8))},
                           [_frame(0, (2, 1, 4), 0.0)]).heat_map() is None


def test_the_heat_follows_the_speaker_in_a_real_qwen_session(qwen: QwenVLBackend) -> None:
    """The bias pulls each utterance toward its speaker's patches: with a random model
    (attention otherwise nearly even) the cells above their fair share are the speaker's."""
    predictor = Predictor(qwen, PredictorConfig(model="tiny", bias=BiasConfig(alpha=4.0)),
                          attention=True)
    lines = [("P1", "Ben, did you finish the map?"), ("P2", "He did most of it."),
             ("P3", "Yes he did.")]
    for index, (speaker, text) in enumerate(lines):
        turn = scene_turn(index, speaker, text)
        heat = predictor.turn(turn).attention
        assert heat is not None and heat.frame_pts == turn.keyframes[-1].pts
        frame = turn.keyframes[-1]
        box = next(v.box for v in turn.views[-1] if v.player == speaker)
        expected = cells_in_box(box, (frame.width, frame.height), heat.grid.shape)
        hot = np.flatnonzero(heat.grid > 1).tolist()
        assert hot == expected, f"turn {index}: {np.round(heat.grid, 2)}"
    # Without --attention nothing is exported or carried.
    plain = Predictor(qwen, PredictorConfig(model="tiny")).turn(scene_turn(0, *lines[0]))
    assert plain.attention is None


def test_attention_needs_a_model_that_sees_the_frames(llama: TextBackend) -> None:
    with pytest.raises(ModelError, match="--attention: model 'tiny-llama' reads no pictures"):
        Predictor(llama, PredictorConfig(model="tiny-llama"), attention=True)
