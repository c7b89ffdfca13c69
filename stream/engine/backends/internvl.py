"""InternVL3: one 448x448 tile per frame (no sub-tiles), pixel shuffle to 16x16 tokens.

The tower's patch grid is shuffled 2x2 into one token, row-major, wrapped in
`<img>` ... `</img>` when the tokenizer knows them, at plain 1-D positions.
"""

from __future__ import annotations

from transformers import PreTrainedModel, PreTrainedTokenizerBase
from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import GotOcr2ImageProcessorPil

from stream.engine.backends.vision import SquareGridBackend


class InternVLBackend(SquareGridBackend):
    rope_axes = 1
    pixel_key = "pixel_values"
    feature_method = "get_image_features"

    def __init__(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, *,
                 prompting: bool = True) -> None:
        super().__init__(model, tokenizer, prompting=prompting)
        config = model.config
        height, width = config.vision_config.image_size
        patch = config.vision_config.patch_size[0]
        self.side = int(height // patch * config.downsample_ratio)
        self.processor = GotOcr2ImageProcessorPil(size={"height": height, "width": width},
                                                  crop_to_patches=False)
        self.placeholder = config.image_token_id
        vocab = tokenizer.get_vocab()
        if "<img>" in vocab and "</img>" in vocab:
            self.opening, self.closing = [vocab["<img>"]], [vocab["</img>"]]
