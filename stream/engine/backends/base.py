"""What the session needs from a model family: chunks of embeddings with their positions."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from transformers import Cache, PreTrainedModel, PreTrainedTokenizerBase

from stream.frames import PlayerView, VideoFrame

SDPA_BACKENDS = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]
"""Every sdpa kernel but cuDNN's: it builds a plan per new shape, and in a session every
append has a new key length. Measured on an H100 (0.5B, bf16): an utterance prefill took
0.08 s with cuDNN against 0.04 s without, a three-question ask 0.18 s against 0.08 s."""


@dataclass(frozen=True)
class Chunk:
    """Tokens ready to prefill on top of the cache."""

    ids: list[int]
    """Token ids, with the model's placeholder id where visual features go."""
    embeds: torch.Tensor
    """(tokens, hidden): the input embeddings, visual features already in place."""
    positions: torch.Tensor
    """(rope axes, tokens): rotary positions counted from the chunk's first position."""
    meta: dict[str, Any] = field(default_factory=dict)
    span: int | None = None
    """Positions the chunk takes; None: up to its highest position. Qwen2.5-VL's video
    time axis may run past what the text after it goes on from."""

    @property
    def advance(self) -> int:
        """How far the next chunk's first position moves on."""
        return self.span if self.span is not None else int(self.positions.max()) + 1

    def __len__(self) -> int:
        return len(self.ids)

    def __add__(self, other: Chunk) -> Chunk:
        shifted = other.positions + self.advance
        return Chunk(self.ids + other.ids, torch.cat([self.embeds, other.embeds]),
                     torch.cat([self.positions, shifted], dim=1), {**self.meta, **other.meta},
                     None if self.span is None and other.span is None
                     else self.advance + other.advance)


class Backend(ABC):
    """One model family. Subclasses know how frames become tokens and where players sit."""

    rope_axes: int = 1
    """3 for M-RoPE (time, height, width), 1 for plain rotary positions."""

    def __init__(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> None:
        self.model, self.tokenizer = model.eval(), tokenizer

    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    @abstractmethod
    def decoder(self) -> torch.nn.Module:
        """The text decoder: takes inputs_embeds and position_ids, returns hidden states."""

    @property
    def text_config(self) -> Any:
        return self.decoder.config

    @property
    def sees_pictures(self) -> bool:
        """Whether frames reach the model as pixels (a vision tower), not as words."""
        return getattr(self.model.config, "vision_config", None) is not None

    def embed(self, ids: list[int]) -> torch.Tensor:
        with torch.no_grad():
            table = self.decoder.get_input_embeddings()
            return table(torch.tensor(ids, device=self.device))

    def token_ids(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def text(self, text: str) -> Chunk:
        ids = self.token_ids(text)
        if not ids:
            raise ValueError(f"{text!r} has no tokens")
        return Chunk(ids, self.embed(ids), self.text_positions(len(ids)))

    def text_positions(self, count: int) -> torch.Tensor:
        return torch.arange(count, device=self.device).expand(self.rope_axes, -1)

    @abstractmethod
    def frames(self, frames: Sequence[VideoFrame],
               views: Sequence[Sequence[PlayerView]]) -> list[Chunk]:
        """One chunk per frame; `meta` holds `grid`, `patches` and `players` (see Span.meta)."""

    def decode(self, embeds: torch.Tensor, positions: torch.Tensor, cache: Cache,
               **kwargs: Any) -> torch.Tensor:
        """Hidden states of (batch, tokens, hidden) embeddings at (axes, batch, tokens)."""
        if self.rope_axes == 1:
            positions = positions[0]
        with sdpa_kernel(SDPA_BACKENDS):
            out = self.decoder(inputs_embeds=embeds, position_ids=positions,
                               past_key_values=cache, use_cache=True, **kwargs)
        return out.last_hidden_state

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.model.get_output_embeddings()(hidden)


def cells_in_box(box: tuple[float, float, float, float], size: tuple[int, int],
                 grid: tuple[int, int]) -> list[int]:
    """Row-major indices of the grid cells a box overlaps.

    `size` is the frame's (width, height) in pixels and `grid` the (rows, cols) of
    visual tokens covering it; resizing keeps relative coordinates, so the box
    scales by grid/size on each axis.
    """
    (width, height), (rows, cols) = size, grid
    x0, y0, x1, y1 = box
    c0, c1 = _span(x0 * cols / width, x1 * cols / width, cols)
    r0, r1 = _span(y0 * rows / height, y1 * rows / height, rows)
    return [r * cols + c for r in range(r0, r1) for c in range(c0, c1)]


def _span(lo: float, hi: float, cells: int) -> tuple[int, int]:
    first = max(0, min(cells, int(lo)))
    last = max(0, min(cells, -int(-hi // 1)))  # ceil
    return first, max(first, last)
