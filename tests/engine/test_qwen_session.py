"""Qwen2.5-VL session on a tiny random model: incremental prefill equals one full forward."""

from __future__ import annotations

import torch

from stream.engine.backends import QwenVLBackend
from stream.engine.session import Session
from stream.engine.synthetic import CORPUS, scene

SYSTEM = "Who is the speaker talking to?"


def converse(session: Session, turns: int, *, bias: bool = False) -> list[torch.Tensor]:
    """Turns of two key frames then an utterance; the last logits after each turn.

    The pictures the vision tower saw are kept in `session.seen` for the reference pass.
    """
    session.append_system(SYSTEM)
    session.seen = []
    logits = []
    for turn in range(turns):
        speaker = f"P{turn % 3 + 1}"
        shots = [scene(turn * 2.0 + k * 0.5, speaker, seed=10 * turn + k) for k in range(2)]
        session.append_frames([f for f, _ in shots], [v for _, v in shots])
        session.seen += session.backend.images([f for f, _ in shots], [v for _, v in shots])
        session.append_utterance(speaker, CORPUS[turn % 6], bias=bias)
        logits.append(session.last_logits.clone())
    return logits


def full_forward(backend: QwenVLBackend, session: Session, *, text_positions: bool = False):
    """One stock forward over the whole interleaved sequence; the model computes the positions."""
    ids = [i for span in session.ledger.spans for i in span.meta["ids"]]
    positions = torch.arange(len(ids)).view(1, 1, -1).expand(3, 1, -1) if text_positions else None
    return backend.stock_logits(ids, session.seen, positions=positions)


def test_incremental_equals_one_full_forward_over_five_turns(qwen: QwenVLBackend) -> None:
    session = Session(qwen)
    logits = converse(session, turns=5)
    assert session.length == session.ledger.length == sum(len(s) for s in session.ledger.spans)
    full = full_forward(qwen, session)
    assert (logits[-1] - full).abs().max() < 1e-4
    # The check is sensitive: text-style positions for the frames (what stock transformers
    # gives tokens appended to a warm cache) change the logits far beyond the tolerance.
    wrong = full_forward(qwen, session, text_positions=True)
    assert (wrong - full).abs().max() > 5e-4  # 1.1e-3 on this model, vs 1.2e-7 above
    frames = session.ledger.of("frame")
    assert len(frames) == 10 and all(f.meta["grid"] == (3, 5) for f in frames)
    # Each frame takes 1 + max(rows, cols) + 1 positions after its label, as get_rope_index does.
    label = len(qwen.text("Frame at 0.0 s:"))
    assert frames[1].position - frames[0].position == label + 1 + 5 + 1


def test_player_boxes_map_to_the_merged_tokens_they_cover(qwen: QwenVLBackend) -> None:
    session = Session(qwen)
    frame, views = scene(0.0, "P1", seed=1)
    span = session.append_frames([frame], [views])[0]
    rows, cols = span.meta["grid"]
    first = span.meta["patches"]
    # 160x120 frame on a 3x5 grid: a cell is 32 px wide and 40 px tall.
    cells = {p: sorted(o - first for o in offs) for p, offs in span.meta["players"].items()}
    assert (rows, cols) == (3, 5)
    assert cells["P1"] == [0, 1, 5, 6, 10, 11]  # x 10-50 -> cols 0-1, y 30-90 -> rows 0-2
    assert cells["P3"] == [3, 4, 8, 9, 13, 14]
    ids = span.meta["ids"]
    assert all(ids[first + c] == qwen.image_id for p in cells.values() for c in p)
