"""The KV-cached text session on a tiny random Llama: incremental equals full, ask restores."""

from __future__ import annotations

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from stream.engine.session import TextSession

CORPUS = [
    "Ben, did you finish the map for our trip?", "Almost. Clara helped me with the route.",
    "He did most of it, honestly.", "That is kind of you to say, Clara.",
    "You found the shortcut by the lake.", "Only because you asked me to look.",
    "Who is the speaker talking to? Alice Ben Clara",
]


@pytest.fixture(scope="module")
def session_parts() -> tuple[LlamaForCausalLM, PreTrainedTokenizerFast]:
    raw = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    raw.train_from_iterator(CORPUS, trainers.WordLevelTrainer(special_tokens=["[PAD]", "[UNK]"]))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=raw, pad_token="[PAD]",
                                        unk_token="[UNK]")
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=raw.get_vocab_size(), hidden_size=32, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=256)
    return LlamaForCausalLM(config).eval(), tokenizer


def _full_logits(model: LlamaForCausalLM, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=torch.tensor([ids])).logits[0].float()


def test_incremental_prefill_equals_one_full_forward(session_parts) -> None:
    model, tokenizer = session_parts
    session = TextSession(model, tokenizer)
    session.append("system", "Who is the speaker talking to?")
    all_ids = session.tokens("Who is the speaker talking to?")
    for i, line in enumerate(CORPUS[:6]):
        session.append("utterance", line, player=f"P{i % 3 + 1}")
        all_ids += session.tokens(line)
        full = _full_logits(model, all_ids)[-1]
        assert torch.allclose(session.last_logits, full, atol=1e-4)
    assert session.length == len(all_ids) == session.ledger.length
    assert [s.meta.get("player") for s in session.ledger.of("utterance")] == \
        ["P1", "P2", "P3", "P1", "P2", "P3"]


def test_ask_scores_in_one_batch_and_restores_the_cache(session_parts) -> None:
    model, tokenizer = session_parts
    session = TextSession(model, tokenizer)
    for line in CORPUS[:5]:
        session.append("utterance", line)
    before = [(layer.keys.clone(), layer.values.clone()) for layer in session.cache.layers]
    length, logits = session.length, session.last_logits.clone()
    question, candidates = "Who is the speaker talking to?", ["Alice", "Ben", "Clara Ben"]
    scores = session.ask(question, candidates)
    assert session.length == length and torch.equal(session.last_logits, logits)
    for (k0, v0), layer in zip(before, session.cache.layers, strict=True):
        assert torch.equal(k0, layer.keys) and torch.equal(v0, layer.values)
    history = [t for line in CORPUS[:5] for t in session.tokens(line)]
    for candidate, score in zip(candidates, scores, strict=True):
        ids = history + session.tokens(question) + session.tokens(candidate)
        logp = torch.log_softmax(_full_logits(model, ids), dim=-1)
        answer = session.tokens(candidate)
        start = len(ids) - len(answer)
        expected = sum(float(logp[start + i - 1, t]) for i, t in enumerate(answer))
        assert abs(score - expected) < 1e-4
    session.append("utterance", CORPUS[5])  # the conversation goes on from the same state
    full = _full_logits(model, history + session.tokens(CORPUS[5]))[-1]
    assert torch.allclose(session.last_logits, full, atol=1e-4)
