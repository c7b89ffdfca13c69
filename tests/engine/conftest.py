"""Tiny random models of the real architectures, and a tokenizer trained in code."""

from __future__ import annotations

import pytest
from transformers import PreTrainedTokenizerFast

from stream.engine.backends import QwenVLBackend, TextBackend
from stream.engine.synthetic import random_llama, random_qwen, word_tokenizer


@pytest.fixture(scope="session")
def tokenizer() -> PreTrainedTokenizerFast:
    return word_tokenizer()


@pytest.fixture
def qwen(tokenizer) -> QwenVLBackend:
    return QwenVLBackend(random_qwen("tiny", len(tokenizer)), tokenizer, pixels=112 * 140)


@pytest.fixture
def llama(tokenizer) -> TextBackend:
    return TextBackend(random_llama(len(tokenizer)), tokenizer)
