"""LLaVA-NeXT-Video: each key frame through the video path (CLIP tower, 2x2 pooling).

Every frame is a one-frame video: a (size/patch/stride)^2 grid of tokens in
row-major order, at plain 1-D positions. Frames are resized to the tower's
square input without cropping, so player boxes scale straight onto the grid.
"""

from __future__ import annotations

import torch
from PIL import Image
from transformers import PreTrainedModel, PreTrainedTokenizerBase
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

from stream.engine.backends.vision import SquareGridBackend


class LlavaNextVideoBackend(SquareGridBackend):
    rope_axes = 1
    pixel_key = "pixel_values_videos"
    feature_method = "get_video_features"

    def __init__(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, *,
                 prompting: bool = True) -> None:
        super().__init__(model, tokenizer, prompting=prompting)
        config = model.config
        size = config.vision_config.image_size
        self.side = size // config.vision_config.patch_size // config.spatial_pool_stride
        self.processor = CLIPImageProcessorPil(size={"height": size, "width": size},
                                               do_center_crop=False)
        self.placeholder = config.video_token_id

    def pixels(self, images: list[Image.Image]) -> torch.Tensor:
        return super().pixels(images)[:, None]  # (frames, 1, 3, H, W): one-frame videos
