"""Model families the session can drive."""

from stream.engine.backends.base import Backend, Chunk
from stream.engine.backends.internvl import InternVLBackend
from stream.engine.backends.llava_next_video import LlavaNextVideoBackend
from stream.engine.backends.qwen2_5_vl import QwenVLBackend
from stream.engine.backends.text import TextBackend
from stream.engine.backends.vision import SquareGridBackend, VisionBackend

__all__ = ["Backend", "Chunk", "InternVLBackend", "LlavaNextVideoBackend", "QwenVLBackend",
           "SquareGridBackend", "TextBackend", "VisionBackend"]
