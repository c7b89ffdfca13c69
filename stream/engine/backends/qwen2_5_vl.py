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

import torch
from PIL import Image
from transformers import PreTrainedModel, PreTrainedTokenizerBase
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

from stream.engine.backends.vision import Encoded, VisionBackend

DEFAULT_PIXELS = 448 * 448
"""Frame resolution fed to the vision tower (Qwen2.5-VL resizes to multiples of 28)."""


class QwenVLBackend(VisionBackend):
    rope_axes = 3

    def __init__(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, *,
                 pixels: int = DEFAULT_PIXELS, prompting: bool = True) -> None:
        super().__init__(model, tokenizer, prompting=prompting)
        vision = model.config.vision_config
        self.merge = vision.spatial_merge_size
        self.processor = Qwen2VLImageProcessorPil(
            min_pixels=min(pixels, 56 * 56), max_pixels=pixels, patch_size=vision.patch_size,
            temporal_patch_size=vision.temporal_patch_size, merge_size=self.merge)
        config = model.config
        self.placeholder = self.image_id = config.image_token_id
        self.opening, self.closing = [config.vision_start_token_id], [config.vision_end_token_id]

    def encode(self, images: list[Image.Image]) -> list[Encoded]:
        batch = self.processor(images=images, return_tensors="pt")
        grids = batch["image_grid_thw"].to(self.device)
        features = self.model.model.get_image_features(
            batch["pixel_values"].to(self.device), grids).pooler_output
        return [Encoded(f, int(g[1]) // self.merge, int(g[2]) // self.merge, g)
                for f, g in zip(features, grids, strict=True)]

    def block_positions(self, encoded: Encoded) -> torch.Tensor:
        """vision_start at 0, the patches on the M-RoPE grid from 1, vision_end after
        `max(rows, cols)`: what `get_rope_index` gives an image in a full forward."""
        vision = self.model.model.get_vision_position_ids(
            1, encoded.grid_thw, 1, self.merge, 1, device=self.device)
        start = torch.zeros(3, 1, device=self.device, dtype=vision.dtype)
        end = torch.full((3, 1), 1 + max(encoded.rows, encoded.cols), device=self.device,
                         dtype=vision.dtype)
        return torch.cat([start, vision, end], dim=1)

    def stock_inputs(self, images: list[Image.Image], inputs: torch.Tensor) -> dict:
        pixels = self.processor(images=images, return_tensors="pt")
        self.model.model.rope_deltas = None  # computed afresh from the whole sequence
        return {"pixel_values": pixels["pixel_values"].to(self.device),
                "image_grid_thw": pixels["image_grid_thw"].to(self.device),
                "mm_token_type_ids": (inputs == self.image_id).int()}
