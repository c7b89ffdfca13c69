"""The tiny models' fixtures (tests/tiny.py), here only: importing them loads torch and
every backend, which the rest of the suite does not need."""

from tests.tiny import llama, qwen, tokenizer

__all__ = ["llama", "qwen", "tokenizer"]
