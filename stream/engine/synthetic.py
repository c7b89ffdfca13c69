"""Random models of the real architectures and a word tokenizer trained in code.

No weights can be downloaded here, so tests and the engine benchmark build
models with the real layer layout and random weights: the cost and the
numerics of every operation are those of the real model, only the answers
are meaningless.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers import (
    InternVLConfig,
    InternVLForConditionalGeneration,
    LlamaConfig,
    LlamaForCausalLM,
    LlavaNextVideoConfig,
    LlavaNextVideoForConditionalGeneration,
    PreTrainedTokenizerFast,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
)

from stream.frames import PlayerView, VideoFrame

CORPUS = [
    "Ben, did you finish the map for our trip?", "Almost. Clara helped me with the route.",
    "He did most of it, honestly.", "That is kind of you to say, Clara.",
    "You found the shortcut by the lake.", "Only because you asked me to look.",
    "Who is the speaker talking to? Who does you refer to? Who is mentioned?",
    "Answer: P1 P2 P3 Someone",
    "Frame at 0 1 2 3 4 5 6 7 8 9 . s : sits left right centre faces the camera mouth moving still",
]

Shape = Literal["tiny", "0.5b", "3b"]

# The real Qwen2.5-VL vision tower (the same for every size) and the text decoders of
# Qwen2.5-0.5B and Qwen2.5-VL-3B.
_VISION = dict(depth=32, hidden_size=1280, num_heads=16, intermediate_size=3420, patch_size=14,
               spatial_merge_size=2, temporal_patch_size=2, window_size=112,
               fullatt_block_indexes=[7, 15, 23, 31])
_TEXT = {
    "0.5b": dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                 num_attention_heads=14, num_key_value_heads=2, tie_word_embeddings=True),
    "3b": dict(hidden_size=2048, intermediate_size=11008, num_hidden_layers=36,
               num_attention_heads=16, num_key_value_heads=2, tie_word_embeddings=True),
}
_VOCAB = 151936


def word_tokenizer(corpus: list[str] | None = None) -> PreTrainedTokenizerFast:
    raw = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    raw.train_from_iterator(corpus or CORPUS,
                            trainers.WordLevelTrainer(special_tokens=["[PAD]", "[UNK]"]))
    return PreTrainedTokenizerFast(tokenizer_object=raw, pad_token="[PAD]", unk_token="[UNK]",
                                   eos_token="[PAD]")


def random_qwen(shape: Shape, vocab: int, *, layers: int = 4, seed: int = 0,
                dtype: torch.dtype = torch.float32, device: str = "cpu"
                ) -> Qwen2_5_VLForConditionalGeneration:
    """A random Qwen2.5-VL. `tiny` keeps every part (window attention, 2x2 merge, M-RoPE)."""
    torch.manual_seed(seed)
    if shape == "tiny":
        text = dict(vocab_size=vocab + 4, hidden_size=64, intermediate_size=128,
                    num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                    rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                                     "mrope_section": [2, 3, 3]})
        vision = dict(depth=2, hidden_size=32, num_heads=2, intermediate_size=64,
                      out_hidden_size=64, patch_size=14, spatial_merge_size=2,
                      temporal_patch_size=2, window_size=56, fullatt_block_indexes=[1])
        first_special = vocab
    else:
        text = dict(vocab_size=_VOCAB, **_TEXT[shape],
                    rope_parameters={"rope_type": "default", "rope_theta": 1000000.0,
                                     "mrope_section": _mrope_section(_TEXT[shape])})
        vision = dict(_VISION, out_hidden_size=_TEXT[shape]["hidden_size"])
        first_special = _VOCAB - 4
    text.update(max_position_embeddings=1 << 20, bos_token_id=0, eos_token_id=0)
    config = Qwen2_5_VLConfig(
        text_config=text, vision_config=vision, image_token_id=first_special,
        video_token_id=first_special + 1, vision_start_token_id=first_special + 2,
        vision_end_token_id=first_special + 3, bos_token_id=0, eos_token_id=0)
    with torch.device(device), _default_dtype(dtype):
        model = Qwen2_5_VLForConditionalGeneration(config)
    return model.eval()


def _mrope_section(text: dict) -> list[int]:
    """Qwen2.5-VL's split of the rotary dims over (time, height, width): 1/4, 3/8, 3/8."""
    half = text["hidden_size"] // text["num_attention_heads"] // 2
    return [half // 4, half * 3 // 8, half * 3 // 8]


def _tiny_text(model_type: str, vocab: int) -> dict:
    return dict(model_type=model_type, vocab_size=vocab + 2, hidden_size=64,
                intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
                num_key_value_heads=2, max_position_embeddings=1 << 20, bos_token_id=0,
                eos_token_id=0)


def tiny_llava_next_video(vocab: int, *, seed: int = 0) -> LlavaNextVideoForConditionalGeneration:
    """LLaVA-NeXT-Video with a 2-layer CLIP tower at 112 px: 8x8 patches pooled to 4x4."""
    torch.manual_seed(seed)
    config = LlavaNextVideoConfig(
        text_config=_tiny_text("llama", vocab),
        vision_config=dict(model_type="clip_vision_model", hidden_size=32, intermediate_size=64,
                           num_hidden_layers=2, num_attention_heads=2, image_size=112,
                           patch_size=14, projection_dim=32),
        video_token_index=vocab, image_token_index=vocab + 1, vision_feature_layer=-1,
        spatial_pool_stride=2, image_grid_pinpoints=[[112, 112]])
    return LlavaNextVideoForConditionalGeneration(config).eval()


def tiny_internvl(vocab: int, *, seed: int = 0) -> InternVLForConditionalGeneration:
    """InternVL3 with a 2-layer InternViT at 112 px: 8x8 patches shuffled to 4x4, Qwen2 LM."""
    torch.manual_seed(seed)
    config = InternVLConfig(
        text_config=_tiny_text("qwen2", vocab),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                           num_attention_heads=2, image_size=[112, 112], patch_size=[14, 14]),
        image_token_id=vocab, downsample_ratio=0.5, vision_feature_layer=-1)
    return InternVLForConditionalGeneration(config).eval()


def random_llama(vocab: int, *, seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64,
                         num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=1 << 20, bos_token_id=0, eos_token_id=0)
    return LlamaForCausalLM(config).eval()


class _default_dtype:
    """Build parameters directly in the target dtype (half the memory of casting later)."""

    def __init__(self, dtype: torch.dtype) -> None:
        self.dtype = dtype

    def __enter__(self) -> None:
        self.saved = torch.get_default_dtype()
        torch.set_default_dtype(self.dtype)

    def __exit__(self, *exc: object) -> None:
        torch.set_default_dtype(self.saved)


SEATS = {"P1": (10, 30, 50, 90), "P2": (60, 30, 100, 90), "P3": (110, 30, 150, 90)}
"""Three players in a 160x120 picture."""


def scene(t: float, speaker: str, seed: int, size: tuple[int, int] = (160, 120)
          ) -> tuple[VideoFrame, tuple[PlayerView, ...]]:
    """A random picture with three seated players, `speaker`'s mouth moving."""
    width, height = size
    sx, sy = width / 160, height / 120
    image = np.random.default_rng(seed).integers(0, 255, (height, width, 3), dtype=np.uint8)
    views = tuple(
        PlayerView(player=p, track=i, box=(x0 * sx, y0 * sy, x1 * sx, y1 * sy), detected=True,
                   yaw=0.0, mouth=0.0, share=float(p == speaker), p_speaking=float(p == speaker))
        for i, (p, (x0, y0, x1, y1)) in enumerate(SEATS.items()))
    return VideoFrame(pts=t, image=image), views
