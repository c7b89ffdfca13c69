"""Tiny random models of the real architectures, a tokenizer trained in code, and turns of
a generated scene for them: what the engine's and the service's tests share."""

from __future__ import annotations

from pathlib import Path

import pytest
from transformers import PreTrainedTokenizerFast

from stream.engine.backends import QwenVLBackend, TextBackend
from stream.engine.synthetic import random_llama, random_qwen, scene, word_tokenizer
from stream.frames import SpeakerVote, Turn

LINES = ["Ben, did you finish the map for our trip?", "He did most of it, honestly.",
         "Then show me the shortcut, please.", "She knows the way better than you."]
SPEAKERS = ["P1", "P2", "P3", "P2"]
"""A four-turn conversation (who says each of LINES) for the engine behind a service."""


def saved_model(folder: Path) -> Path:
    """A tiny random Llama and its tokenizer saved as a checkpoint folder, for what loads
    a model from a path (the service, the bridge, the benchmarks)."""
    tokenizer = word_tokenizer()
    random_llama(len(tokenizer)).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def scene_turn(index: int, speaker: str, text: str) -> Turn:
    """Turn `index` of a generated scene: two key frames, 3 s apart from the turn before."""
    shots = [scene(index * 3.0 + k, speaker, seed=index * 10 + k) for k in range(2)]
    vote = SpeakerVote(speaker=speaker, confidence=0.9, scores={speaker: 0.9}, cues={})
    return Turn(pts=index * 3.0 + 2, index=index, start=index * 3.0, end=index * 3.0 + 2,
                text=text, keyframes=tuple(f for f, _ in shots),
                views=tuple(v for _, v in shots), vote=vote)


@pytest.fixture(scope="session")
def tokenizer() -> PreTrainedTokenizerFast:
    return word_tokenizer()


@pytest.fixture
def qwen(tokenizer) -> QwenVLBackend:
    return QwenVLBackend(random_qwen("tiny", len(tokenizer)), tokenizer, pixels=112 * 140)


@pytest.fixture
def llama(tokenizer) -> TextBackend:
    return TextBackend(random_llama(len(tokenizer)), tokenizer)
