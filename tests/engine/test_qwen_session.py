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


def full_forward(backend: QwenVLBackend, session: Session, *, text_positions: bool = False,
                 positions: torch.Tensor | None = None):
    """One stock forward over the whole interleaved sequence; the model computes the positions
    unless they are given."""
    ids = [i for span in session.ledger.spans for i in span.meta["ids"]]
    if text_positions:
        positions = torch.arange(len(ids)).view(1, 1, -1).expand(3, 1, -1)
    return backend.stock_logits(ids, session.seen, positions=positions)


FLOAT32 = 1e-6
"""Incremental vs full in float32: 1.2e-7 measured; one order of magnitude of headroom for
another CPU's kernels, and still far below what a wrong position gives (1e-5 and up)."""


def test_incremental_equals_one_full_forward_over_five_turns(qwen: QwenVLBackend,
                                                              monkeypatch) -> None:
    session = Session(qwen)
    used: list[torch.Tensor] = []
    decode = qwen.decode

    def recording(embeds, positions, cache, **kwargs):
        used.append(positions.clone())
        return decode(embeds, positions, cache, **kwargs)

    monkeypatch.setattr(qwen, "decode", recording)
    logits = converse(session, turns=5)
    assert session.length == session.ledger.length == sum(len(s) for s in session.ledger.spans)
    full = full_forward(qwen, session)
    assert (logits[-1] - full).abs().max() < FLOAT32
    # The check is sensitive. Text-style positions for the frames (what stock transformers
    # gives tokens appended to a warm cache) change the logits far beyond the tolerance ...
    wrong = full_forward(qwen, session, text_positions=True)
    assert (wrong - full).abs().max() > 100 * FLOAT32  # 1.1e-3 on this model
    # ... and so do our own positions with rows and columns swapped (9.8e-5 on this model).
    ours = torch.cat(used, dim=-1)
    assert (full_forward(qwen, session, positions=ours) - full).abs().max() < FLOAT32
    swapped = ours[[0, 2, 1]]
    assert not torch.equal(swapped, ours)
    assert (full_forward(qwen, session, positions=swapped) - full).abs().max() > 10 * FLOAT32
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


def test_video_mode_follows_media_seconds_and_equals_one_full_forward(tokenizer) -> None:
    """A turn's frames as one video: the time axis follows media seconds (the model's own
    video rule), and incremental still equals one stock forward with every video."""
    from stream.engine.synthetic import random_qwen

    backend = QwenVLBackend(random_qwen("tiny", len(tokenizer)), tokenizer, pixels=112 * 140,
                            video=True)
    session = Session(backend)
    session.append_system(SYSTEM)
    videos, grids, seconds = [], [], []
    for turn in range(5):
        speaker = f"P{turn % 3 + 1}"
        count = 3 if turn == 2 else 2  # an odd count repeats the last frame
        shots = [scene(turn * 4.0 + k * 1.5, speaker, seed=10 * turn + k) for k in range(count)]
        frames, views = [f for f, _ in shots], [v for _, v in shots]
        span = session.append_frames(frames, views)[0]
        pixels, grid, per_patch = backend.video_pixels(backend.images(frames, views),
                                                       [f.pts for f in frames])
        videos.append(pixels)
        grids.append(grid)
        seconds.append(per_patch)
        session.append_utterance(speaker, CORPUS[turn % 6], bias=False)
    assert span.meta["grid"] == (1, 3, 5) and seconds[0] == 3.0  # 2 frames 1.5 s apart
    assert session.ledger.of("frame")[2].meta["grid"] == (2, 3, 5)
    ids = torch.tensor([[i for s in session.ledger.spans for i in s.meta["ids"]]])
    model = backend.model

    def stock(per_patch: list[float]) -> torch.Tensor:
        with torch.no_grad():
            model.model.rope_deltas = None
            return model(input_ids=ids, pixel_values_videos=torch.cat(videos),
                         video_grid_thw=torch.cat(grids),
                         second_per_grid_ts=torch.tensor(per_patch),
                         mm_token_type_ids=(ids == backend.video_id).int() * 2).logits[0, -1]

    full = stock(seconds)
    assert (session.last_logits - full).abs().max() < FLOAT32
    wrong = stock([1.0] * len(seconds))  # the time axis matters: 1 s instead of 3 per patch
    assert (wrong - full).abs().max() > 2e-4  # 4e-4 on this model, vs 1e-7 above
    # The time axis: the second temporal patch of turn 2 sits tokens_per_second x 3 s later.
    chunk = backend.frames(*zip(*[scene(k * 1.5, "P1", seed=k) for k in range(4)],
                                strict=True))[0]
    first = chunk.meta["patches"]
    times = chunk.positions[0, first:first + 30]
    assert int(times[15] - times[0]) == backend.tokens_per_second * 3
    # Players: a box covers the same cells in both patches of the video.
    cells = sorted(chunk.meta["players"]["P1"])
    assert [c - first for c in cells] == [0, 1, 5, 6, 10, 11, 15, 16, 20, 21, 25, 26]
    # The bias and the attention maps work on video chunks too: maps are (time, rows, cols).
    session.append_frames(*zip(*[scene(30.0 + k, "P2", seed=k) for k in range(2)], strict=True))
    report = session.append_utterance("P2", CORPUS[1], export=True)
    maps = report.attention_maps()
    assert maps and all(m[0].shape[2:] == (1, 3, 5) for m in maps.values())
