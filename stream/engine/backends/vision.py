"""What every vision-language backend shares: frames in, one token block per frame.

A subclass says how pictures become features (`encode`), which ids wrap the
placeholder tokens, and how the block is positioned; the player boxes are mapped
here onto the block's grid of visual tokens.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image
from torch.nn.attention import sdpa_kernel
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from stream.engine.backends.base import SDPA_BACKENDS, Backend, Chunk, cells_in_box
from stream.engine.prompting import draw_players
from stream.frames import PlayerView, VideoFrame


@dataclass(frozen=True)
class Encoded:
    """One frame's visual features, (rows * cols, hidden) in row-major order."""

    features: torch.Tensor
    rows: int
    cols: int
    grid_thw: torch.Tensor | None = None
    """Qwen2.5-VL's patch grid, for its positions."""
    time_interval: float = 1.0
    """Qwen2.5-VL video: position steps between temporal patches."""


class VisionBackend(Backend):
    placeholder: int
    """The token id the model replaces with visual features."""

    def __init__(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, *,
                 prompting: bool = True) -> None:
        super().__init__(model, tokenizer)
        self.prompting = prompting
        self.opening: list[int] = []
        self.closing: list[int] = []
        """Ids around the placeholders (e.g. Qwen's vision_start / vision_end)."""

    @property
    def decoder(self) -> torch.nn.Module:
        return self.model.model.language_model

    def images(self, frames: Sequence[VideoFrame],
               views: Sequence[Sequence[PlayerView]]) -> list[Image.Image]:
        """The pictures the vision tower sees: frames with players drawn on when prompting."""
        return [draw_players(f.image, v if self.prompting else ())
                for f, v in zip(frames, views, strict=True)]

    @abstractmethod
    def encode(self, images: list[Image.Image]) -> list[Encoded]:
        """Features of each picture, computed in one batch."""

    def block_positions(self, encoded: Encoded) -> torch.Tensor:
        """Positions of opening + placeholders + closing, from 0 (plain: one per token)."""
        return self.text_positions(len(self.opening) + len(encoded.features) + len(self.closing))

    def block(self, encoded: Encoded, placeholder: int, meta: dict[str, Any],
              span: int | None = None) -> Chunk:
        """Opening + one placeholder per feature + closing, the features in place."""
        count = len(encoded.features)
        ids = self.opening + [placeholder] * count + self.closing
        embeds = self.embed(ids)
        first = len(self.opening)
        embeds[first:first + count] = encoded.features.to(embeds.dtype)
        return Chunk(ids, embeds, self.block_positions(encoded), meta, span)

    @torch.no_grad()
    def frames(self, frames: Sequence[VideoFrame],
               views: Sequence[Sequence[PlayerView]]) -> list[Chunk]:
        if not frames:
            return []
        with sdpa_kernel(SDPA_BACKENDS):
            encoded = self.encode(self.images(frames, views))
        chunks = []
        for frame, seen, enc in zip(frames, views, encoded, strict=True):
            label = self.text(f"Frame at {frame.pts:.1f} s:")
            patches = len(label) + len(self.opening)
            players = {v.player: [patches + i for i in cells_in_box(
                v.box, (frame.width, frame.height), (enc.rows, enc.cols))] for v in seen}
            chunks.append(label + self.block(enc, self.placeholder, {
                "t": frame.pts, "grid": (enc.rows, enc.cols), "patches": patches,
                "players": players}))
        return chunks

    @torch.no_grad()
    def stock_logits(self, ids: list[int], images: list[Image.Image], *,
                     positions: torch.Tensor | None = None) -> torch.Tensor:
        """Last-token logits of one stock forward of the model over a whole sequence."""
        inputs = torch.tensor([ids], device=self.device)
        out = self.model(input_ids=inputs, position_ids=positions, logits_to_keep=1,
                         **self.stock_inputs(images, inputs))
        return out.logits[0, -1].float()

    @abstractmethod
    def stock_inputs(self, images: list[Image.Image], inputs: torch.Tensor) -> dict:
        """The model's own keyword arguments for these pictures, as its processor would give."""


class SquareGridBackend(VisionBackend):
    """Frames resized to the tower's square input, `side` x `side` tokens each; the model
    takes them under `pixel_key` and turns them into features with `feature_method`."""

    side: int
    processor: Any
    pixel_key: str
    feature_method: str

    def pixels(self, images: list[Image.Image]) -> torch.Tensor:
        pixels = self.processor(images=images, return_tensors="pt")["pixel_values"]
        return pixels.to(self.device, self.model.dtype)

    def encode(self, images: list[Image.Image]) -> list[Encoded]:
        config = self.model.config
        features = getattr(self.model.model, self.feature_method)(
            self.pixels(images), vision_feature_layer=config.vision_feature_layer,
            vision_feature_select_strategy=config.vision_feature_select_strategy).pooler_output
        return [Encoded(f, self.side, self.side) for f in features]

    def stock_inputs(self, images: list[Image.Image], inputs: torch.Tensor) -> dict:
        return {self.pixel_key: self.pixels(images)}
