"""Questions leave the conversation untouched; eviction keeps memory bounded; text backend."""

from __future__ import annotations

import itertools

import pytest
import torch

from stream.engine.backends import QwenVLBackend, TextBackend
from stream.engine.cache import GRAIN, GrowingLayer
from stream.engine.config import BiasConfig, EngineConfig
from stream.engine.session import ContextFull, Session
from stream.engine.synthetic import CORPUS, random_qwen, scene
from tests.engine.test_bias import cache_of
from tests.engine.test_qwen_session import converse

QUESTION = "Who is the speaker talking to? Answer:"


def test_ask_scores_all_candidates_in_one_forward_and_restores_the_cache(
        qwen: QwenVLBackend) -> None:
    session = Session(qwen)
    converse(session, turns=3)
    before, length = cache_of(session), session.length
    logits, position = session.last_logits.clone(), session.next_position
    calls: list[int] = []
    hook = qwen.decoder.register_forward_pre_hook(
        lambda _m, _a, kw: calls.append(kw["inputs_embeds"].shape[1]), with_kwargs=True)
    try:
        scores = session.ask(QUESTION, ["P1", "P2", "P3", "Someone"])
    finally:
        hook.remove()
    question = len(qwen.token_ids(QUESTION))
    assert calls == [question + 4]  # one forward: the question and the four candidates
    assert len(scores) == 4 and all(s < 0 for s in scores)
    assert session.length == length and session.next_position == position
    assert torch.equal(session.last_logits, logits)
    for (k0, v0), (k1, v1) in zip(before, cache_of(session), strict=True):
        assert torch.equal(k0, k1) and torch.equal(v0, v1)
    answer = session.generate(QUESTION, max_new_tokens=4)
    assert isinstance(answer, str) and session.length == length
    # The conversation goes on exactly as if no question had been asked.
    fresh = Session(qwen)
    converse(fresh, turns=3)
    for s in (session, fresh):
        frame, views = scene(9.0, "P1", seed=99)
        s.append_frames([frame], [views])
        s.append_utterance("P1", CORPUS[4], bias=False)
    assert torch.equal(session.last_logits, fresh.last_logits)


def test_several_questions_in_one_forward_equal_separate_asks(qwen: QwenVLBackend) -> None:
    session = Session(qwen)
    converse(session, turns=2)
    questions = [(QUESTION, ["P1", "P2", "P3"]), ("Who is mentioned? Answer:", ["P2", "Someone"]),
                 ("Who does you refer to? Answer:", ["P3 P1", "P2"])]
    separate = [session.ask(q, c) for q, c in questions]
    calls: list[int] = []
    hook = qwen.decoder.register_forward_pre_hook(
        lambda _m, _a, kw: calls.append(kw["inputs_embeds"].shape[1]), with_kwargs=True)
    try:
        together = session.ask_many(questions)
    finally:
        hook.remove()
    assert len(calls) == 1
    for a, b in zip(separate, together, strict=True):
        assert a == pytest.approx(b, abs=1e-5)


def test_text_backend_incremental_equals_full_and_scores_match(llama: TextBackend) -> None:
    session = Session(llama)
    session.append_system("Who is the speaker talking to?")
    for turn in range(5):
        frame, views = scene(turn * 2.0, f"P{turn % 3 + 1}", seed=turn)
        span = session.append_frames([frame], [views])[0]
        session.append_utterance(f"P{turn % 3 + 1}", CORPUS[turn], bias=False)
    # A player's "visual tokens" are the words describing them in the frame (P2 spoke last).
    words = llama.tokenizer.convert_ids_to_tokens(span.meta["ids"])
    assert [words[i] for i in span.meta["players"]["P2"]] == \
        ["P2", "sits", "centre", ",", "faces", "the", "camera", ",", "mouth", "moving", "."]
    ids = [i for s in session.ledger.spans for i in s.meta["ids"]]
    with torch.no_grad():
        full = llama.model(input_ids=torch.tensor([ids])).logits[0].float()
    assert (session.last_logits - full[-1]).abs().max() < 1e-4
    scores = session.ask(QUESTION, ["P1", "P3 P2"])
    for candidate, score in zip(["P1", "P3 P2"], scores, strict=True):
        answer = llama.token_ids(" " + candidate)
        every = ids + llama.token_ids(QUESTION) + answer
        with torch.no_grad():
            logp = torch.log_softmax(llama.model(input_ids=torch.tensor([every])).logits[0], -1)
        start = len(every) - len(answer)
        # Per token: a two-token candidate is not penalised for its length.
        expected = sum(float(logp[start + i - 1, t]) for i, t in enumerate(answer)) / len(answer)
        assert score == pytest.approx(expected, abs=1e-4)
    assert [len(llama.token_ids(" " + c)) for c in ("P1", "P3 P2")] == [1, 2]


def test_eviction_keeps_memory_bounded_over_1000_turns(tokenizer) -> None:
    model = random_qwen("tiny", len(tokenizer), layers=2)
    backend = QwenVLBackend(model, tokenizer, pixels=56 * 56)
    budget = 300
    session = Session(backend, EngineConfig(max_tokens=budget, keep_turns=4,
                                            bias=BiasConfig(layers=(0, 2))))
    session.append_system("Who is the speaker talking to?")
    peak, checked = 0, None
    for turn in range(1000):
        speaker = f"P{turn % 3 + 1}"
        frame, views = scene(turn * 1.0, speaker, seed=turn)
        appended = session.append_frames([frame], [views])
        report = session.append_utterance(speaker, CORPUS[turn % 6])
        # Every turn, not only the last: its own frames were still there to bias toward.
        assert [f.position for f in report.frames] == [s.position for s in appended], turn
        assert report.records, turn
        peak = max(peak, session.length)
        assert session.length == session.ledger.length <= budget
        if turn == 500:
            kept = session.ledger.spans[-1]
            kept_keys = session.cache.layers[0].keys[:, :, kept.start:kept.end].clone()
            evictions = session.evictions
        if turn > 500 and checked is None and session.evictions > evictions:
            # The next eviction moved the span down but never recomputed it.
            checked = turn
            moved = next(s for s in session.ledger.spans if s.position == kept.position)
            assert moved.start < kept.start
            assert torch.equal(session.cache.layers[0].keys[:, :, moved.start:moved.end],
                               kept_keys)
    assert session.evictions > 50 and peak <= budget and checked is not None
    spans = session.ledger.spans
    assert spans[0].kind == "system" and spans[0].start == 0
    assert [s.meta["text"] for s in session.ledger.of("utterance")[-4:]] == \
        [CORPUS[t % 6] for t in range(996, 1000)]
    assert all(a.end == b.start for a, b in itertools.pairwise(spans))
    # Original positions are kept: they grow with the conversation, not with the cache.
    assert session.next_position > 10 * budget
    assert all(a.position < b.position for a, b in itertools.pairwise(spans))
    # The memory held, spare room included, stays within twice the budget.
    assert all(layer.key_room.shape[-2] <= 2 * budget + GRAIN for layer in session.cache.layers)
    assert session.ask(QUESTION, ["P1", "P2"])


def test_a_budget_below_what_must_stay_is_a_clear_error(qwen: QwenVLBackend) -> None:
    session = Session(qwen, EngineConfig(max_tokens=20, keep_turns=2))
    session.append_system("Who is the speaker talking to?")
    with pytest.raises(ContextFull, match=r"raise engine\.max_tokens"):
        for turn in range(4):
            session.append_utterance("P1", CORPUS[turn])


def test_the_cache_grows_in_place_and_crops_without_copying() -> None:
    layer = GrowingLayer()
    chunks = [torch.randn(1, 2, n, 4) for n in (3, 5, 200, 7)]
    for i, chunk in enumerate(chunks):
        keys, _ = layer.update(chunk, chunk + 1)
        assert torch.equal(keys, torch.cat(chunks[:i + 1], dim=-2))
    room = layer.key_room.data_ptr()
    layer.crop(-7)
    keys, values = layer.update(chunks[3], chunks[3] + 1)
    assert layer.key_room.data_ptr() == room  # written into the spare room, no reallocation
    assert torch.equal(values, torch.cat(chunks, dim=-2) + 1)
    index = torch.tensor([0, 2, 100, 214])
    expected = keys[..., index, :].clone()
    layer.keep(index)
    assert torch.equal(layer.keys, expected) and layer.get_seq_length() == 4


def test_eviction_order_spares_the_turn_being_built_and_the_kept_turns(llama: TextBackend) -> None:
    session = Session(llama, EngineConfig(keep_turns=2))
    session.append_system("Who is the speaker talking to?")
    for turn in range(4):
        frame, views = scene(turn * 1.0, "P1", seed=turn)
        session.append_frames([frame], [views])
        session.append_utterance("P1", CORPUS[turn], bias=False)
    frame, views = scene(4.0, "P2", seed=4)
    session.append_frames([frame], [views])  # turn 4 is being built
    spans = session.ledger.spans
    frames, utterances = session.ledger.of("frame"), session.ledger.of("utterance")
    order = session._eviction_order()
    # Old turns' frames, then old utterances, then the kept turns' frames; never the system
    # prompt, the two kept utterances or the frame of the turn being built.
    assert order == [frames[0], frames[1], utterances[0], utterances[1], frames[2], frames[3]]
    assert spans[0] not in order and frames[4] not in order


@pytest.mark.parametrize("window", [8, None])
def test_a_sliding_window_model_is_refused_with_a_clear_error(tokenizer, window) -> None:
    from transformers import MistralConfig, MistralForCausalLM

    from stream.errors import ModelError

    torch.manual_seed(0)
    config = MistralConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                           num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                           sliding_window=window, bos_token_id=0, eos_token_id=0)
    backend = TextBackend(MistralForCausalLM(config).eval(), tokenizer)
    if window is not None:
        with pytest.raises(ModelError, match=r"'mistral' keeps only a window .* 2 of 2 layers"):
            Session(backend)
        return
    # The same architecture with full attention runs a biased, evicting session.
    session = Session(backend, EngineConfig(max_tokens=120, keep_turns=1,
                                            bias=BiasConfig(layers=(0, 2))))
    session.append_system("Who is the speaker talking to?")
    for turn in range(6):
        frame, views = scene(turn * 1.0, "P1", seed=turn)
        session.append_frames([frame], [views])
        assert session.append_utterance("P1", CORPUS[turn]).records
    assert session.evictions > 0


def _rebasing_session(backend: TextBackend) -> Session:
    session = Session(backend, EngineConfig(max_tokens=200, max_positions=600, keep_turns=2,
                                            bias=BiasConfig(layers=(0, 4))))
    session.append_system("Who is the speaker talking to?")
    return session


def test_a_rebase_restarts_positions_at_0_with_exactly_what_was_kept(llama: TextBackend) -> None:
    session = Session(llama, EngineConfig(max_tokens=200, keep_turns=2))
    session.append_system("Who is the speaker talking to?")
    for turn in range(30):
        frame, views = scene(turn * 1.0, f"P{turn % 3 + 1}", seed=turn)
        session.append_frames([frame], [views])
        session.append_utterance(f"P{turn % 3 + 1}", CORPUS[turn % 6], bias=False)
    assert session.evictions > 0 and session.rebases == 0

    def plain_forward() -> torch.Tensor:
        ids = [i for s in session.ledger.spans for i in s.meta["ids"]]
        with torch.no_grad():
            return llama.model(input_ids=torch.tensor([ids])).logits[0, -1].float()

    # Evicted spans left gaps in the kept positions: not what a plain forward computes ...
    assert (session.last_logits - plain_forward()).abs().max() > 1e-3
    kept = [(s.kind, s.meta["ids"]) for s in session.ledger.spans]
    session._rebase()
    # ... after the rebase, the same spans from position 0 without gaps: exactly that.
    spans = session.ledger.spans
    assert [(s.kind, s.meta["ids"]) for s in spans] == kept and session.rebases == 1
    assert spans[0].position == 0 and all(
        b.position == a.position + a.meta["chunk"].advance for a, b in itertools.pairwise(spans))
    assert session.next_position == sum(s.meta["chunk"].advance for s in spans)
    assert (session.last_logits - plain_forward()).abs().max() < 1e-6  # 7e-8 measured


def test_positions_stay_inside_the_model_range_and_bias_survives_rebases(
        llama: TextBackend) -> None:
    from stream.engine.session import HEADROOM

    session = _rebasing_session(llama)
    for turn in range(60):
        frame, views = scene(turn * 1.0, f"P{turn % 3 + 1}", seed=turn)
        session.append_frames([frame], [views])
        report = session.append_utterance(f"P{turn % 3 + 1}", CORPUS[turn % 6])
        assert report.records, turn
        assert session.next_position + HEADROOM <= 600, turn
        positions = [s.position for s in session.ledger.spans]
        assert positions == sorted(positions)
    assert session.rebases >= 3 and session.evictions > 0
    assert session.ask(QUESTION, ["P1", "P2"])


def test_a_budget_too_big_for_the_positions_is_a_clear_error(llama: TextBackend) -> None:
    session = Session(llama, EngineConfig(max_tokens=5000, max_positions=600))
    session.append_system("Who is the speaker talking to?")
    with pytest.raises(ContextFull, match=r"600 positions cannot hold .* lower engine\.max_tokens"):
        for turn in range(60):
            session.append_utterance("P1", CORPUS[turn % 6], bias=False)
