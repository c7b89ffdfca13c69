"""Qwen2.5-VL: frames through its PIL image processor, 3-D M-RoPE positions per chunk.

Stock transformers gives tokens appended to a warm cache text-style positions
(it only computes the rope index when the cache is empty), so an appended frame
would silently get wrong positions. Each frame chunk here carries the model's
own M-RoPE layout (`get_vision_position_ids`, the same call `get_rope_index`
makes), counted from 0; the session offsets it by the cache's next position.
A frame therefore gets exactly the positions it would have in one full forward
over the whole conversation.

Two ways to give a turn's key frames (`video=`):
- images (default): each frame its own image and ledger span, evictable alone;
  Qwen's rule for images gives every token of a frame the same time index, so
  media time reaches the model only through the text label `Frame at 12.4 s:`;
- video: the turn's frames as one video, two frames per temporal patch (an odd
  count repeats the last frame, as Qwen's video processor does). The time axis
  then follows media seconds: temporal patch g sits at
  `g * tokens_per_second * seconds_per_patch`, the model's own video rule.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from PIL import Image
from torch.nn.attention import sdpa_kernel
from transformers import PreTrainedModel, PreTrainedTokenizerBase
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

from stream.engine.backends.base import SDPA_BACKENDS, Chunk, cells_in_box
from stream.engine.backends.vision import Encoded, VisionBackend
from stream.frames import PlayerView, VideoFrame

DEFAULT_PIXELS = 448 * 448
"""Frame resolution fed to the vision tower (Qwen2.5-VL resizes to multiples of 28)."""


class QwenVLBackend(VisionBackend):
    rope_axes = 3

    def __init__(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, *,
                 pixels: int = DEFAULT_PIXELS, prompting: bool = True,
                 video: bool = False) -> None:
        super().__init__(model, tokenizer, prompting=prompting)
        self.video = video
        vision = model.config.vision_config
        self.temporal = vision.temporal_patch_size
        self.tokens_per_second = vision.tokens_per_second
        self.merge = vision.spatial_merge_size
        self.processor = Qwen2VLImageProcessorPil(
            min_pixels=min(pixels, 56 * 56), max_pixels=pixels, patch_size=vision.patch_size,
            temporal_patch_size=vision.temporal_patch_size, merge_size=self.merge)
        config = model.config
        self.placeholder = self.image_id = config.image_token_id
        self.video_id = config.video_token_id
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
        `max(rows, cols)`: what `get_rope_index` gives an image (or a video, whose temporal
        patches step by `time_interval`) in a full forward."""
        vision = self.model.model.get_vision_position_ids(
            1, encoded.grid_thw, 1, self.merge, encoded.time_interval, device=self.device)
        start = torch.zeros(3, 1, device=self.device, dtype=vision.dtype)
        end = torch.full((3, 1), 1 + max(encoded.rows, encoded.cols), device=self.device,
                         dtype=vision.dtype)
        return torch.cat([start, vision, end], dim=1)

    @torch.no_grad()
    def frames(self, frames: Sequence[VideoFrame],
               views: Sequence[Sequence[PlayerView]]) -> list[Chunk]:
        if not self.video or not frames:
            return super().frames(frames, views)
        pixels, grid, seconds = self.video_pixels(self.images(frames, views),
                                                  [f.pts for f in frames])
        with sdpa_kernel(SDPA_BACKENDS):
            features = self.model.model.get_video_features(
                pixels.to(self.device), grid.to(self.device)).pooler_output[0]
        groups, rows, cols = int(grid[0, 0]), int(grid[0, 1]) // self.merge, \
            int(grid[0, 2]) // self.merge
        label = self.text(f"Frames at {frames[0].pts:.1f}-{frames[-1].pts:.1f} s:")
        encoded = Encoded(features, rows, cols, grid[0], self.tokens_per_second * seconds)
        patches = len(label) + len(self.opening)
        padded = list(views) + [views[-1]] * (groups * self.temporal - len(views))
        players: dict[str, list[int]] = {}
        for g in range(groups):  # a player's tokens in a patch: the union over its frames
            for seen in padded[g * self.temporal:(g + 1) * self.temporal]:
                for v in seen:
                    cells = cells_in_box(v.box, (frames[0].width, frames[0].height),
                                         (rows, cols))
                    players.setdefault(v.player, []).extend(
                        patches + g * rows * cols + c for c in cells)
        meta = {"t": frames[0].pts, "times": [f.pts for f in frames], "seconds": seconds,
                "grid": (groups, rows, cols), "patches": patches,
                "players": {p: sorted(set(o)) for p, o in players.items()}}
        # Text after a video goes on from max(rows, cols), however far its time axis runs.
        return [label + self.block(encoded, self.video_id, meta, span=2 + max(rows, cols))]

    def video_pixels(self, images: list[Image.Image], times: list[float]
                     ) -> tuple[torch.Tensor, torch.Tensor, float]:
        """Pictures as one video the way Qwen's video processor lays it out: flattened
        patches, (1, 3) grid and seconds per temporal patch."""
        images = images + [images[-1]] * (-len(images) % self.temporal)
        batch = self.processor(images=images, return_tensors="pt")
        per_image = batch["pixel_values"].shape[0] // len(images)
        patches = batch["pixel_values"].view(len(images), per_image, 3, self.temporal, -1)
        # Each image patch holds its picture in every temporal slot: slot k of a video
        # patch takes picture k of its group.
        groups = [torch.stack([patches[g + k, :, :, k] for k in range(self.temporal)], dim=2)
                  for g in range(0, len(images), self.temporal)]
        video = torch.cat(groups).reshape(len(groups) * per_image, -1)
        thw = batch["image_grid_thw"][0].clone()
        thw[0] = len(groups)
        spacing = (times[-1] - times[0]) / (len(times) - 1) if len(times) > 1 else 1.0
        return video, thw[None], self.temporal * spacing

    def stock_inputs(self, images: list[Image.Image], inputs: torch.Tensor) -> dict:
        pixels = self.processor(images=images, return_tensors="pt")
        self.model.model.rope_deltas = None  # computed afresh from the whole sequence
        return {"pixel_values": pixels["pixel_values"].to(self.device),
                "image_grid_thw": pixels["image_grid_thw"].to(self.device),
                "mm_token_type_ids": (inputs == self.image_id).int()}
