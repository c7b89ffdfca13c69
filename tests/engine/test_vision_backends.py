"""LLaVA-NeXT-Video and InternVL3 on tiny random models: the same guarantees as Qwen2.5-VL."""

from __future__ import annotations

import pytest
import torch

from stream.engine.backends import InternVLBackend, LlavaNextVideoBackend, VisionBackend
from stream.engine.config import BiasConfig, EngineConfig
from stream.engine.session import Session
from stream.engine.synthetic import scene, tiny_internvl, tiny_llava_next_video
from tests.engine.test_bias import cache_of
from tests.engine.test_qwen_session import converse


@pytest.fixture(params=["llava_next_video", "internvl"])
def backend(request, tokenizer) -> VisionBackend:
    if request.param == "llava_next_video":
        return LlavaNextVideoBackend(tiny_llava_next_video(len(tokenizer)), tokenizer)
    return InternVLBackend(tiny_internvl(len(tokenizer)), tokenizer)


def test_incremental_equals_one_full_forward_over_five_turns(backend: VisionBackend) -> None:
    session = Session(backend)
    logits = converse(session, turns=5)
    ids = [i for span in session.ledger.spans for i in span.meta["ids"]]
    full = backend.stock_logits(ids, session.seen)
    assert (logits[-1] - full).abs().max() < 1e-4
    assert session.length == session.ledger.length == len(ids)


def test_player_boxes_map_onto_the_token_grid(backend: VisionBackend) -> None:
    session = Session(backend)
    frame, views = scene(0.0, "P1", seed=1)
    span = session.append_frames([frame], [views])[0]
    first = span.meta["patches"]
    assert span.meta["grid"] == (4, 4)  # 112 px / 14 px patches / 2 (pooling or shuffle)
    cells = {p: sorted(o - first for o in offs) for p, offs in span.meta["players"].items()}
    # 160x120 frame on a 4x4 grid: a cell is 40 px wide and 30 px tall.
    assert cells["P1"] == [4, 5, 8, 9]  # x 10-50 -> cols 0-1, y 30-90 -> rows 1-2
    assert all(span.meta["ids"][first + c] == backend.placeholder for c in cells["P3"])


def test_bias_off_is_exact_and_on_moves_only_active_heads(backend: VisionBackend) -> None:
    plain = Session(backend)
    zero = Session(backend, EngineConfig(bias=BiasConfig(alpha=0.0, layers=(0, 4))))
    assert torch.equal(converse(plain, turns=2)[-1], converse(zero, turns=2, bias=True)[-1])
    for (k0, v0), (k1, v1) in zip(cache_of(plain), cache_of(zero), strict=True):
        assert torch.equal(k0, k1) and torch.equal(v0, v1)
    layer = 1

    def turn(alpha: float, threshold: float, captured: list[torch.Tensor]):
        session = Session(backend, EngineConfig(bias=BiasConfig(
            alpha=alpha, threshold=threshold, layers=(layer, layer + 1))))
        session.append_system("Who is the speaker talking to?")
        frame, views = scene(0.0, "P2", seed=3)
        session.append_frames([frame], [views])
        o_proj = backend.decoder.layers[layer].self_attn.o_proj
        hook = o_proj.register_forward_pre_hook(lambda _m, args: captured.append(args[0].clone()))
        try:
            return session.append_utterance("P2", "You found the shortcut by the lake.")
        finally:
            hook.remove()

    before: list[torch.Tensor] = []
    measured = turn(0.0, 0.0, before).records[layer]
    # A threshold between the heads' scores, so that some heads are active and some not
    # (at the default nearly every head of a random model passes).
    after: list[torch.Tensor] = []
    report = turn(1.0, float(measured.scores.median()), after)
    record = report.records[layer]
    active = record.active
    assert 0 < int(active.sum()) < len(active)
    assert (record.speaker_mass_biased[active] > record.speaker_mass[active]).all()
    assert torch.equal(record.speaker_mass_biased[~active], record.speaker_mass[~active])
    heads = len(active)
    plain, biased = (x[0].view(x.shape[1], heads, -1) for x in (before[0], after[0]))
    assert torch.equal(plain[:, ~active], biased[:, ~active])  # the real layer outputs
    rows = len(report.span)
    assert not torch.allclose(plain[-rows:, active], biased[-rows:, active])


def test_each_family_loads_from_a_local_directory(backend: VisionBackend, tmp_path) -> None:
    from stream.engine.loading import load_backend

    backend.model.save_pretrained(tmp_path)
    backend.tokenizer.save_pretrained(tmp_path)
    loaded = load_backend(str(tmp_path), device="cpu", dtype=torch.float32)
    assert type(loaded) is type(backend)
    frame, views = scene(0.0, "P1", seed=1)
    a, b = Session(backend), Session(loaded)
    for s in (a, b):
        s.append_frames([frame], [views])
    assert torch.allclose(a.last_logits, b.last_logits, atol=1e-5)
