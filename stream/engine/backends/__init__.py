"""Model families the session can drive."""

from stream.engine.backends.base import Backend, Chunk
from stream.engine.backends.qwen2_5_vl import QwenVLBackend
from stream.engine.backends.text import TextBackend

__all__ = ["Backend", "Chunk", "QwenVLBackend", "TextBackend"]
