"""Speaker-aware biased attention: exact when off, selective and toward the speaker when on."""

from __future__ import annotations

import numpy as np
import torch

from stream.engine.attention import BiasPlan, social_attention
from stream.engine.backends import QwenVLBackend
from stream.engine.config import BiasConfig, EngineConfig
from stream.engine.session import Session
from stream.engine.synthetic import scene
from tests.engine.test_qwen_session import converse


def cache_of(session: Session) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(layer.keys.clone(), layer.values.clone()) for layer in session.cache.layers]


def test_alpha_zero_is_stock_sdpa_bit_for_bit(qwen: QwenVLBackend) -> None:
    plain = Session(qwen)
    logits_plain = converse(plain, turns=3, bias=False)
    zero = Session(qwen, EngineConfig(bias=BiasConfig(alpha=0.0, layers=(0, 4))))
    logits_zero = converse(zero, turns=3, bias=True)
    for a, b in zip(logits_plain, logits_zero, strict=True):
        assert torch.equal(a, b)
    for (k0, v0), (k1, v1) in zip(cache_of(plain), cache_of(zero), strict=True):
        assert torch.equal(k0, k1) and torch.equal(v0, v1)
    # Heads were still measured on the way, in every layer of the range, and nothing moved.
    for session in (plain, zero):
        frame, views = scene(9.0, "P2", seed=9)
        session.append_frames([frame], [views])
    report = zero.append_utterance("P2", "You found the shortcut by the lake.", bias=True)
    plain.append_utterance("P2", "You found the shortcut by the lake.", bias=False)
    assert torch.equal(plain.last_logits, zero.last_logits)
    assert sorted(report.records) == [0, 1, 2, 3]
    for record in report.records.values():
        heads = qwen.text_config.num_attention_heads
        assert record.scores.shape == (heads,) and (record.scores > 0).all()
        assert (record.speaker_mass > 0).all()
        assert torch.equal(record.speaker_mass_biased, record.speaker_mass)


def test_bias_raises_speaker_attention_in_selected_heads_only(qwen: QwenVLBackend) -> None:
    layer = 1

    def turn(alpha: float, threshold: float, captured: list[torch.Tensor]):
        session = Session(qwen, EngineConfig(bias=BiasConfig(alpha=alpha, threshold=threshold,
                                                               layers=(layer, layer + 1))))
        session.append_system("Who is the speaker talking to?")
        shots = [scene(0.5 * k, "P2", seed=k) for k in range(2)]
        session.append_frames([f for f, _ in shots], [v for _, v in shots])
        o_proj = qwen.decoder.layers[layer].self_attn.o_proj
        hook = o_proj.register_forward_pre_hook(lambda _m, args: captured.append(args[0].clone()))
        try:
            report = session.append_utterance("P2", "Ben, did you finish the map?", export=True)
        finally:
            hook.remove()
        return report

    before: list[torch.Tensor] = []
    measured = turn(0.0, 0.0, before).records[layer]
    # Pick a threshold between the heads' scores so that some heads are active and some not.
    threshold = float(measured.scores.median())
    after: list[torch.Tensor] = []
    report = turn(1.0, threshold, after)
    record = report.records[layer]
    active = record.active
    assert 0 < int(active.sum()) < len(active)
    assert torch.equal(record.scores, measured.scores)  # measured before the bias, same input
    assert (record.speaker_mass_biased[active] > record.speaker_mass[active] + 1e-3).all()
    assert torch.equal(record.speaker_mass_biased[~active], record.speaker_mass[~active])
    # The real outputs of the layer: unselected heads are bit-identical, selected ones moved.
    heads = len(active)
    plain, biased = (x[0].view(x.shape[1], heads, -1) for x in (before[0], after[0]))
    assert torch.equal(plain[:, ~active], biased[:, ~active])
    rows = report.span.end - report.span.start
    assert not torch.allclose(plain[-rows:, active], biased[-rows:, active])
    # Attention maps: per frame, (active heads, utterance tokens, rows, cols) summing to < 1.
    maps = report.attention_maps()[layer]
    assert len(maps) == 2 and maps[0].shape[0] == int(active.sum()) and maps[0].shape[2:] == (3, 5)
    assert np.all(maps[0] >= 0) and np.all(sum(m.sum(axis=(2, 3)) for m in maps) <= 1 + 1e-5)


class _Head(torch.nn.Module):
    layer_idx = 0
    num_key_value_groups = 1


def test_a_negative_strongest_visual_logit_adds_no_bias() -> None:
    """With every query-to-visual logit negative, the clamped bias is zero: nothing changes."""
    torch.manual_seed(0)
    key = torch.randn(1, 2, 6, 8)
    query = -key[:, :, 1:2].expand(-1, -1, 3, -1).clone()  # anti-aligned with key 1
    query[:, :, :, :] += 0.01 * torch.randn_like(query)
    key[:, :, 2] = key[:, :, 1]
    value = torch.randn(1, 2, 6, 8)
    mask = torch.ones(1, 1, 3, 6, dtype=torch.bool).tril(diagonal=3)
    stock, _ = social_attention(_Head(), query, key, value, mask, scaling=1.0)
    plan = BiasPlan(alpha=5.0, layers=range(1), threshold=0.0, queries=torch.arange(3),
                    visual=torch.tensor([1, 2]), speaker=torch.tensor([1]))
    biased, _ = social_attention(_Head(), query, key, value, mask, scaling=1.0, social_bias=plan)
    assert torch.equal(stock, biased) and plan.records[0].active.all()
    plan = BiasPlan(alpha=5.0, layers=range(1), threshold=0.0, queries=torch.arange(3),
                    visual=torch.tensor([1, 2]), speaker=torch.tensor([1]))
    flipped, _ = social_attention(_Head(), -query, key, value, mask, scaling=1.0,
                                  social_bias=plan)
    stock_flipped, _ = social_attention(_Head(), -query, key, value, mask, scaling=1.0)
    assert not torch.allclose(flipped, stock_flipped)
