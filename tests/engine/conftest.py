"""Tiny random models of the real architectures, and a tokenizer trained in code."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
)

from stream.engine.backends import QwenVLBackend, TextBackend
from stream.frames import PlayerView, VideoFrame

CORPUS = [
    "Ben, did you finish the map for our trip?", "Almost. Clara helped me with the route.",
    "He did most of it, honestly.", "That is kind of you to say, Clara.",
    "You found the shortcut by the lake.", "Only because you asked me to look.",
    "Who is the speaker talking to? Answer: P1 P2 P3 Someone",
    "Frame at 0 1 2 3 4 5 6 7 8 9 . s : sits left right centre faces the camera mouth moving still",
]


def word_tokenizer() -> PreTrainedTokenizerFast:
    raw = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    raw.train_from_iterator(CORPUS, trainers.WordLevelTrainer(special_tokens=["[PAD]", "[UNK]"]))
    return PreTrainedTokenizerFast(tokenizer_object=raw, pad_token="[PAD]", unk_token="[UNK]")


def tiny_qwen(vocab: int, *, layers: int = 4) -> Qwen2_5_VLForConditionalGeneration:
    """Qwen2.5-VL with every part of the real one (window attention, 2x2 merge, M-RoPE), tiny."""
    torch.manual_seed(0)
    config = Qwen2_5_VLConfig(
        text_config=dict(vocab_size=vocab + 4, hidden_size=64, intermediate_size=128,
                         num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=1 << 20, bos_token_id=0, eos_token_id=0,
                         rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                                          "mrope_section": [2, 3, 3]}),
        vision_config=dict(depth=2, hidden_size=32, num_heads=2, intermediate_size=64,
                           out_hidden_size=64, patch_size=14, spatial_merge_size=2,
                           temporal_patch_size=2, window_size=56, fullatt_block_indexes=[1]),
        image_token_id=vocab, video_token_id=vocab + 1, vision_start_token_id=vocab + 2,
        vision_end_token_id=vocab + 3, bos_token_id=0, eos_token_id=0)
    return Qwen2_5_VLForConditionalGeneration(config).float().eval()


def tiny_llama(vocab: int) -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64,
                         num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=1 << 20, bos_token_id=0, eos_token_id=0)
    return LlamaForCausalLM(config).eval()


@pytest.fixture(scope="session")
def tokenizer() -> PreTrainedTokenizerFast:
    return word_tokenizer()


@pytest.fixture
def qwen(tokenizer) -> QwenVLBackend:
    return QwenVLBackend(tiny_qwen(len(tokenizer)), tokenizer, pixels=112 * 140)


@pytest.fixture
def llama(tokenizer) -> TextBackend:
    return TextBackend(tiny_llama(len(tokenizer)), tokenizer)


SEATS = {"P1": (10, 30, 50, 90), "P2": (60, 30, 100, 90), "P3": (110, 30, 150, 90)}


def scene(t: float, speaker: str, seed: int) -> tuple[VideoFrame, tuple[PlayerView, ...]]:
    """A 160x120 random picture with three seated players, `speaker`'s mouth moving."""
    image = np.random.default_rng(seed).integers(0, 255, (120, 160, 3), dtype=np.uint8)
    views = tuple(PlayerView(player=p, track=i, box=box, detected=True, yaw=0.0, mouth=0.0,
                             share=1.0 if p == speaker else 0.0,
                             p_speaking=1.0 if p == speaker else 0.0)
                  for i, (p, box) in enumerate(SEATS.items()))
    return VideoFrame(pts=t, image=image), views
