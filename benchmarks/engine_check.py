"""Incremental == full on a real-size random Qwen2.5-VL (the tests use a tiny one).

Run where memory allows (a GPU, or a CPU with patience):
    python benchmarks/engine_check.py --shape 0.5b --turns 5 --device cuda
Prints the max abs difference of the last-token logits between the warm session
and one stock forward over the whole conversation, and between the stock
forward with and without transformers' own M-RoPE positions (the size of the
error the explicit positions avoid).
"""

from __future__ import annotations

import argparse
import json

import torch

from pipelines.bench.engine import FRAME_SIZE, SYSTEM
from stream.engine.backends import QwenVLBackend
from stream.engine.session import Session
from stream.engine.synthetic import CORPUS, random_qwen, scene, word_tokenizer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", choices=["tiny", "0.5b", "3b"], default="0.5b")
    parser.add_argument("--turns", type=int, default=5)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    parser.add_argument("--pixels", type=int, default=448 * 448)
    args = parser.parse_args()
    tokenizer = word_tokenizer()
    model = random_qwen(args.shape, len(tokenizer), dtype=getattr(torch, args.dtype),
                        device=args.device)
    backend = QwenVLBackend(model, tokenizer, pixels=args.pixels)
    session = Session(backend)
    session.append_system(SYSTEM)
    images = []
    for turn in range(args.turns):
        speaker = f"P{turn % 3 + 1}"
        shots = [scene(turn * 3.0 + k, speaker, seed=turn * 100 + k, size=FRAME_SIZE)
                 for k in range(2)]
        frames, views = [f for f, _ in shots], [v for _, v in shots]
        session.append_frames(frames, views)
        images += backend.images(frames, views)
        session.append_utterance(speaker, CORPUS[turn % 6], bias=False)
    ids = [i for span in session.ledger.spans for i in span.meta["ids"]]
    full = backend.stock_logits(ids, images)
    text_style = torch.arange(len(ids), device=backend.device).view(1, 1, -1).expand(3, 1, -1)
    wrong = backend.stock_logits(ids, images, positions=text_style)
    print(json.dumps({
        "device": torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu",
        "shape": args.shape, "dtype": args.dtype, "turns": args.turns, "tokens": len(ids),
        "incremental_vs_full_max_abs": float((session.last_logits - full).abs().max()),
        "text_positions_vs_full_max_abs": float((wrong - full).abs().max()),
        "logit_scale": float(full.abs().max()),
    }))


if __name__ == "__main__":
    main()
