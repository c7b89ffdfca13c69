"""A text-only backend for small causal language models (Llama, Qwen2, SmolLM2...).

A player's "visual tokens" are the tokens of a short description of that player
in the frame (seat, facing, mouth moving), so the same biased attention applies:
the utterance is pulled toward the speaker's description.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from stream.engine.backends.base import Backend, Chunk
from stream.frames import PlayerView, VideoFrame


class TextBackend(Backend):
    rope_axes = 1

    @property
    def decoder(self) -> torch.nn.Module:
        return self.model.model

    def frames(self, frames: Sequence[VideoFrame],
               views: Sequence[Sequence[PlayerView]]) -> list[Chunk]:
        chunks = []
        for frame, seen in zip(frames, views, strict=True):
            text = f"Frame at {frame.pts:.1f} s:"
            ranges: dict[str, tuple[int, int]] = {}
            for view in sorted(seen, key=lambda v: v.box[0]):
                part = f" {view.player} {describe(view, frame.width)}."
                ranges[view.player] = (len(text) + 1, len(text) + len(part))
                text += part
            text += "\n"
            encoded = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
            ids, offsets = list(encoded["input_ids"]), encoded["offset_mapping"]
            players = {p: [i for i, (a, b) in enumerate(offsets) if b > lo and a < hi]
                       for p, (lo, hi) in ranges.items()}
            chunks.append(Chunk(ids, self.embed(ids), self.text_positions(len(ids)),
                                {"t": frame.pts, "grid": (1, len(ids)), "patches": 0,
                                 "players": players}))
        return chunks


def describe(view: PlayerView, width: int) -> str:
    centre = (view.box[0] + view.box[2]) / 2 / max(width, 1)
    seat = "left" if centre < 1 / 3 else "right" if centre > 2 / 3 else "centre"
    facing = "right" if view.yaw > 0.3 else "left" if view.yaw < -0.3 else "the camera"
    mouth = "moving" if view.p_speaking >= 0.5 else "still"
    return f"sits {seat}, faces {facing}, mouth {mouth}"
