"""Qwen2.5-VL: frames through its PIL image processor, 3-D M-RoPE positions per chunk.

Stock transformers gives tokens appended to a warm cache text-style positions
(it only computes the rope index when the cache is empty), so an appended frame
would silently get wrong positions. Each frame chunk here carries the model's
own M-RoPE layout (`get_vision_position_ids`, the same call `get_rope_index`
makes), counted from 0; the session offsets it by the cache's next position.
A frame therefore gets exactly the positions it would have in one full forward
over the whole conversation.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.nn.attention import sdpa_kernel
from transformers import PreTrainedModel, PreTrainedTokenizerBase
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

from stream.engine.backends.base import SDPA_BACKENDS, Backend, Chunk, cells_in_box
from stream.engine.prompting import draw_players
from stream.frames import PlayerView, VideoFrame

DEFAULT_PIXELS = 448 * 448
"""Frame resolution fed to the vision tower (Qwen2.5-VL resizes to multiples of 28)."""


class QwenVLBackend(Backend):
    rope_axes = 3

    def __init__(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, *,
                 pixels: int = DEFAULT_PIXELS, prompting: bool = True) -> None:
        super().__init__(model, tokenizer)
        vision = model.config.vision_config
        self.merge = vision.spatial_merge_size
        self.processor = Qwen2VLImageProcessorPil(
            min_pixels=min(pixels, 56 * 56), max_pixels=pixels, patch_size=vision.patch_size,
            temporal_patch_size=vision.temporal_patch_size, merge_size=self.merge)
        self.prompting = prompting
        config = model.config
        self.image_id = config.image_token_id
        self.start_id, self.end_id = config.vision_start_token_id, config.vision_end_token_id

    @property
    def decoder(self) -> torch.nn.Module:
        return self.model.model.language_model

    def images(self, frames: Sequence[VideoFrame], views: Sequence[Sequence[PlayerView]]) -> list:
        """The pictures the vision tower sees: frames with players drawn on when prompting."""
        return [draw_players(f.image, v if self.prompting else ()) for f, v in
                zip(frames, views, strict=True)]

    @torch.no_grad()
    def frames(self, frames: Sequence[VideoFrame],
               views: Sequence[Sequence[PlayerView]]) -> list[Chunk]:
        if not frames:
            return []
        batch = self.processor(images=self.images(frames, views), return_tensors="pt")
        grids = batch["image_grid_thw"].to(self.device)
        with sdpa_kernel(SDPA_BACKENDS):
            features = self.model.model.get_image_features(
                batch["pixel_values"].to(self.device), grids).pooler_output
        chunks = []
        for frame, seen, grid, feats in zip(frames, views, grids, features, strict=True):
            rows, cols = int(grid[1]) // self.merge, int(grid[2]) // self.merge
            label = self.text(f"Frame at {frame.pts:.1f} s:")
            ids = [self.start_id] + [self.image_id] * (rows * cols) + [self.end_id]
            embeds = self.embed(ids)
            embeds[1:-1] = feats.to(embeds.dtype)
            vision = self.model.model.get_vision_position_ids(
                1, grid, 1, self.merge, 1, device=self.device)
            end = torch.full((3, 1), 1 + max(rows, cols), device=self.device)
            positions = torch.cat([torch.zeros(3, 1, device=self.device, dtype=vision.dtype),
                                   vision, end.to(vision.dtype)], dim=1)
            players = {v.player: [1 + i for i in cells_in_box(v.box, (frame.width, frame.height),
                                                               (rows, cols))] for v in seen}
            offset = len(label)
            meta = {"grid": (rows, cols), "patches": offset + 1,
                    "players": {p: [offset + o for o in offs] for p, offs in players.items()}}
            chunks.append(label + Chunk(ids, embeds, positions, meta))
        return chunks

    @torch.no_grad()
    def stock_logits(self, ids: list[int], images: list, *,
                     positions: torch.Tensor | None = None) -> torch.Tensor:
        """Last-token logits of one stock forward over a whole sequence, for checks.

        transformers computes the M-RoPE positions itself here (`get_rope_index`),
        unless `positions` are given.
        """
        model = self.model
        inputs = torch.tensor([ids], device=self.device)
        pixels = self.processor(images=images, return_tensors="pt")
        model.model.rope_deltas = None
        out = model(input_ids=inputs, pixel_values=pixels["pixel_values"].to(self.device),
                    image_grid_thw=pixels["image_grid_thw"].to(self.device),
                    mm_token_type_ids=(inputs == self.image_id).int(), position_ids=positions,
                    logits_to_keep=1)
        return out.logits[0, -1].float()
